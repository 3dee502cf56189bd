"""The media types of the API, named once (the server, the deploy tool and the tests use these).

/invocations takes a JPEG or PNG body and answers with JSON or a segmented JPEG or PNG.
"""

JSON = "application/json"
JPEG = "image/jpeg"
PNG = "image/png"

IMAGE_TYPES = (JPEG, PNG)  # request bodies (the server also accepts image/jpg and application/x-image)
RESPONSE_TYPES = (JSON, JPEG, PNG)  # answers, in the server's order of preference for equal q-values
IMAGE_FORMATS = {JPEG: "jpeg", PNG: "png"}  # engine.render.encode_image's name for each image type
SUFFIXES = {JPEG: ".jpg", PNG: ".png"}
SIGNATURES = {b"\xff\xd8\xff": JPEG, b"\x89PNG\r\n\x1a\n": PNG}  # magic bytes at the start of the file
