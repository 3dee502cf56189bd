"""What the benchmarks feed the engine and the server: one photo, a free local port, and a
wait for a started server to answer /ping."""

from __future__ import annotations

import socket

import numpy as np


def benchmark_photo() -> np.ndarray:
    """skimage's coffee photo (400x600) resized to 640x480 RGB, the size the targets are set at."""
    import cv2
    import skimage.data

    return np.ascontiguousarray(cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_LINEAR))


def skimage_photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, as HxWx3 uint8 RGB (grey ones repeated)."""
    import skimage.data

    if name == "motorcycle":
        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[0])
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def benchmark_photo_jpeg(quality: int = 90) -> bytes:
    """`benchmark_photo()` as a client would upload it."""
    import cv2

    return cv2.imencode(".jpg", benchmark_photo()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ping(proc, port: int, log_path, deadline_s: float = 300.0) -> None:
    """Poll http://127.0.0.1:port/ping until 200; RuntimeError if `proc` (a Popen) exits or
    the deadline passes first."""
    import http.client
    import time

    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready within {deadline_s:g} s; see {log_path}")
        time.sleep(0.1)
