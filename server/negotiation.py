"""Content negotiation and request options, from headers only (no body, no engine calls).

* `request_image_type(content_type)`: which bodies are accepted (415 otherwise).
* `choose_response_type(accept, response_type, default)`: the seed's rule, Accept first.
* `parse_custom_attributes(header, class_names)`: X-Amzn-SageMaker-Custom-Attributes ->
  a typed `RequestOptions` (400 naming the key, and the expected type, on a bad value).
* `selectable_classes(class_names)`: the names a `classes` filter is meant to use (/ping
  lists them for clients such as the web page).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from engine.media_types import IMAGE_FORMATS, JPEG, JSON, PNG, RESPONSE_TYPES

from .config import MAX_CUSTOM_ATTRIBUTES_CHARS, MAX_DETECTIONS_LIMIT
from .errors import BadRequest, NotAcceptable, UnsupportedMediaType

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

# Request Content-Type -> the image format it promises; None: sniffed from the bytes.
# (The bytes are always sniffed when decoding; this table only decides what is accepted.)
REQUEST_TYPES = {
    **IMAGE_FORMATS,
    "image/jpg": "jpeg",  # not registered, but common in the wild
    "application/x-image": None,
}
# response_type values in the custom attributes -> response media type.
RESPONSE_TYPE_NAMES = {"json": JSON, "jpeg": JPEG, "jpg": JPEG, "png": PNG}
OFFERED = RESPONSE_TYPES
INCLUDABLE = ("scores", "class_ids", "masks")
MASK_FORMATS = {"rle": "rle", "polygon": "polygon", "polygons": "polygon"}
_PLACEHOLDER_CLASSES = ("__background__", "N/A")  # torchvision's COCO list has these


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks for, validated.

    class_ids: indices into the engine's class names to keep, or None for all classes.
    include: extra JSON fields among INCLUDABLE.
    """

    response_type: str | None = None  # a media type from OFFERED, or None: not given
    score_threshold: float = 0.5
    max_detections: int = 100
    class_ids: tuple[int, ...] | None = None
    include: frozenset[str] = frozenset()
    mask_format: str = "rle"


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'; '' when absent."""
    return (header or "").split(";", 1)[0].strip().lower()


def request_image_type(content_type: str | None) -> str | None:
    """The image format a Content-Type promises ('jpeg'/'png'), None to sniff; else 415."""
    mt = media_type(content_type)
    if mt not in REQUEST_TYPES:
        shown = f"Content-Type {content_type!r}" if content_type else "a missing Content-Type"
        raise UnsupportedMediaType(
            f"unsupported {shown}; send image/jpeg, image/png or application/x-image")
    return REQUEST_TYPES[mt]


def parse_accept(header: str) -> list[tuple[str, float, int]]:
    """Accept header -> [(media range, q, position)], skipping malformed entries."""
    ranges = []
    for position, item in enumerate(header.split(",")):
        parts = [p.strip() for p in item.split(";")]
        mrange = parts[0].lower()
        if mrange.count("/") != 1:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
        if 0.0 <= q <= 1.0:
            ranges.append((mrange, q, position))
    return ranges


def _match(offer: str, ranges) -> tuple[float, int, int] | None:
    """(q, specificity, -position) of the most specific range matching offer, as RFC 9110."""
    kind = offer.split("/")[0]
    best = None
    for mrange, q, position in ranges:
        if mrange == offer:
            spec = 2
        elif mrange == f"{kind}/*":
            spec = 1
        elif mrange == "*/*":
            spec = 0
        else:
            continue
        if best is None or spec > best[1]:
            best = (q, spec, -position)
    return best


def choose_response_type(accept: str | None, response_type: str | None, default: str) -> str:
    """The response media type: Accept first, then custom attributes, then the default.

    Accept absent, empty or only */*: `response_type` (already a media type) if given,
    else `default`. Otherwise the offer with the highest q wins; ties go to the more
    specific range, then to `response_type`, then to the earlier range in the header, then
    to `default`. No offer with q > 0: 406.
    """
    ranges = parse_accept(accept) if accept and accept.strip() else []
    if not ranges and not (accept and accept.strip()):
        return response_type or default
    if ranges and all(r[0] == "*/*" for r in ranges) and ranges[0][1] > 0:
        return response_type or default
    scored = []
    for index, offer in enumerate(OFFERED):
        m = _match(offer, ranges)
        if m is not None and m[0] > 0:
            q, spec, neg_position = m
            scored.append(((q, spec, offer == response_type, neg_position, offer == default, -index), offer))
    if not scored:
        raise NotAcceptable(f"cannot produce any type allowed by Accept {accept!r}; "
                            f"available: {', '.join(OFFERED)}")
    return max(scored)[1]


def _is_number(value) -> bool:
    """A finite JSON number. bool is an int subclass in Python but not a number in JSON; an
    int is checked without float() (an int of 400 digits overflows it)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_integer(value) -> bool:
    """A JSON integer as JSON Schema defines it: a number with no fractional part, so 7.0
    (what some JSON writers emit for 7) counts and 2.5 does not."""
    return _is_number(value) and (isinstance(value, int) or value.is_integer())


def _is_string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# key -> (accepts its JSON type, the type as the 400's message names it). The values are then
# checked (ranges, names) by parse_custom_attributes.
ATTRIBUTE_TYPES = {
    "response_type": (lambda v: isinstance(v, str), f"a string, one of {', '.join(RESPONSE_TYPE_NAMES)}"),
    "score_threshold": (_is_number, "a number from 0 to 1"),
    "max_detections": (_is_integer, f"an integer from 1 to {MAX_DETECTIONS_LIMIT}"),
    "classes": (_is_string_list, 'a list of strings (class names), e.g. ["person"]'),
    "include": (_is_string_list, f"a list of strings among {', '.join(INCLUDABLE)}"),
    "mask_format": (lambda v: isinstance(v, str), f"a string, one of {', '.join(sorted(set(MASK_FORMATS)))}"),
}


def parse_custom_attributes(header: str | None, class_names: list[str]) -> RequestOptions:
    """X-Amzn-SageMaker-Custom-Attributes (a JSON object) -> RequestOptions.

    The type rule (server/openapi.json's CustomAttributes schema says the same): each key has
    one JSON type, listed in ATTRIBUTE_TYPES; a value of another type is a 400 naming the key
    and the type, and nothing is coerced (no "0.5" for 0.5, no true for 1, no "cat" for
    ["cat"]). A `null` value is the same as leaving the key out, and so is "" for
    response_type (the seed's default). Unknown keys are ignored, for forward compatibility.
    """
    if header is None or not header.strip():
        return RequestOptions()
    if len(header) > MAX_CUSTOM_ATTRIBUTES_CHARS:
        raise BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} is {len(header)} characters long; "
                         f"the limit is {MAX_CUSTOM_ATTRIBUTES_CHARS}")
    try:
        attrs = json.loads(header)
    except RecursionError:  # ~1000 nested arrays fit in the 1024 characters (found by fuzzing)
        raise BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} is not valid JSON: {exc}") from None
    if not isinstance(attrs, dict):
        raise BadRequest(f"{CUSTOM_ATTRIBUTES_HEADER} must be a JSON object, e.g. "
                         '{"response_type": "json"}')
    for key, (accepts, expected) in ATTRIBUTE_TYPES.items():
        if attrs.get(key) is not None and not accepts(attrs[key]):
            raise BadRequest(f"{key} must be {expected}, got {_as_json(attrs[key])}")
    kw = {}
    if attrs.get("response_type") not in (None, ""):
        kw["response_type"] = _choice(attrs, "response_type", RESPONSE_TYPE_NAMES)
    if attrs.get("score_threshold") is not None:
        value = attrs["score_threshold"]
        if not 0.0 <= value <= 1.0:
            raise BadRequest(f"score_threshold must be a number from 0 to 1, got {_as_json(value)}")
        kw["score_threshold"] = float(value)
    if attrs.get("max_detections") is not None:
        value = int(attrs["max_detections"])  # 7.0 is the integer 7 in JSON (see _is_integer)
        if not 1 <= value <= MAX_DETECTIONS_LIMIT:
            raise BadRequest(f"max_detections must be an integer from 1 to {MAX_DETECTIONS_LIMIT}, "
                             f"got {_as_json(attrs['max_detections'])}")
        kw["max_detections"] = value
    if attrs.get("classes") is not None:
        kw["class_ids"] = _class_ids(attrs["classes"], class_names)
    if attrs.get("include") is not None:
        unknown = [i for i in attrs["include"] if i not in INCLUDABLE]
        if unknown:
            raise BadRequest(f"include: unknown field {unknown[0]!r}; choose from {', '.join(INCLUDABLE)}")
        kw["include"] = frozenset(attrs["include"])
    if attrs.get("mask_format") is not None:
        kw["mask_format"] = _choice(attrs, "mask_format", MASK_FORMATS)
    return RequestOptions(**kw)


def selectable_classes(class_names) -> list[str]:
    """The model's class names a client can filter on, in the model's order, each once:
    index 0 is the background (torchvision's rule) and "N/A" entries are gaps in
    torchvision's COCO numbering, never detected, so neither is worth offering."""
    return list(dict.fromkeys(n for n in list(class_names)[1:] if n not in _PLACEHOLDER_CLASSES))


def _as_json(value, limit: int = 80) -> str:
    """A value as the client wrote it (JSON: true, "cat"), cut short if long."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _choice(attrs: dict, key: str, table: dict[str, str]) -> str:
    """A string value named in `table` (case and surrounding spaces ignored) -> its meaning."""
    value = attrs[key]
    if value.strip().lower() not in table:
        raise BadRequest(f"{key} must be one of {', '.join(sorted(set(table)))}, got {_as_json(value)}")
    return table[value.strip().lower()]


def _class_ids(names: list[str], class_names: list[str]) -> tuple[int, ...]:
    """Class names -> sorted indices into class_names (a name may occur more than once)."""
    if not names:
        raise BadRequest("classes must name at least one class; omit it to keep every class")
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for index, name in enumerate(class_names):
        exact.setdefault(name, []).append(index)
        folded.setdefault(name.casefold(), []).append(index)
    found = [exact.get(name) or folded.get(name.casefold()) for name in names]
    unknown = [name for name, ids in zip(names, found) if not ids]
    if unknown:
        # every unknown name at once, and the full list to pick from (as /ping gives it)
        raise BadRequest(f"classes: unknown class names {json.dumps(unknown)}; this model's classes "
                         f"are {json.dumps(selectable_classes(class_names))}")
    return tuple(sorted({i for ids in found for i in ids}))
