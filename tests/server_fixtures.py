"""Shared helpers and fixtures for the image, render, mask-encoding and HTTP-layer tests.

`FakeEngine` has the surface of `engine.Engine` (predict, warmup, class_names, model_name,
backend_name, untrained) and answers with a deterministic rule, so the HTTP layer can be
tested without a model, as Falcon's own examples do.
"""

from __future__ import annotations

import io
import json
import threading

import falcon.testing
import numpy as np
import pytest

from engine.detections import Detections
from engine.media_types import JPEG, JSON, PNG  # noqa: F401  (re-exported for the HTTP tests)
from server import ServerConfig, create_app

FAKE_CLASSES = ["__background__", "person", "cat", "dog", "N/A", "traffic light"]


def disc_mask(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """(h, w) bool disc of radius r around (cx, cy), pixel centres at integer coordinates."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def fake_detections(h: int, w: int) -> Detections:
    """Three instances in a fixed layout, highest score first.

    0: person 0.953, box = middle half of the image, disc mask inside it.
    1: cat    0.61,  box = top-left quarter, rectangular mask.
    2: dog    0.3,   box = bottom-right eighth, mask = its box.
    """
    boxes = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4],
                      [0, 0, w / 2, h / 2],
                      [3 * w / 4, 3 * h / 4, w, h]], np.float32)
    masks = np.zeros((3, h, w), bool)
    masks[0] = disc_mask(h, w, w / 2, h / 2, min(h, w) / 4)
    masks[1, : h // 2 - 1, : w // 2 - 1] = True
    masks[2, 3 * h // 4:, 3 * w // 4:] = True
    return Detections(boxes=boxes, scores=np.array([0.953, 0.61, 0.3], np.float32),
                      class_ids=np.array([1, 2, 3], np.int64), labels=["person", "cat", "dog"],
                      masks=masks, image_size=(h, w))


def select(det: Detections, keep: np.ndarray) -> Detections:
    return Detections(boxes=det.boxes[keep], scores=det.scores[keep], class_ids=det.class_ids[keep],
                      labels=[det.labels[i] for i in np.flatnonzero(keep)], masks=det.masks[keep],
                      image_size=det.image_size, timings=dict(det.timings))


class FakeEngine:
    """Deterministic stand-in for `engine.Engine`.

    Set `gate` (a threading.Event) to make predict block until it is set, and `started`
    is set when a predict begins; set `fail` to an exception to make predict raise it.
    """

    def __init__(self, class_names=FAKE_CLASSES):
        self.class_names = list(class_names)
        self.model_name = "fake-maskrcnn"
        self.backend_name = "fake"
        self.precision = "fp32"
        self.untrained = False
        self.demo = False
        self.calls: list[dict] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail: BaseException | None = None

    def warmup(self) -> None:
        self.predict(np.zeros((64, 64, 3), np.uint8))

    def predict(self, image, score_threshold=0.5, max_detections=100, class_ids=None) -> Detections:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.flags.c_contiguous
        self.calls.append(dict(shape=image.shape, score_threshold=score_threshold,
                               max_detections=max_detections,
                               class_ids=None if class_ids is None else sorted(class_ids)))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        h, w = image.shape[:2]
        det = fake_detections(h, w)
        keep = det.scores >= score_threshold
        if class_ids is not None:
            keep &= np.isin(det.class_ids, list(class_ids))
        keep[np.cumsum(keep) > max_detections] = False
        out = select(det, keep)
        out.timings = {"total": 1.0}
        return out


def encode_pil(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    """Encode with Pillow (an independent encoder from the OpenCV the code under test uses)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def drawn_image(h: int = 120, w: int = 160) -> np.ndarray:
    """A drawn RGB test image: gradient background, red square, green disc, blue bar."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                    np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    img[h // 8: h // 3, w // 8: w // 3] = (220, 20, 20)
    img[disc_mask(h, w, 2 * w / 3, h / 2, min(h, w) / 5)] = (20, 200, 40)
    img[7 * h // 8:, :] = (30, 40, 210)
    return img


# ---- the HTTP app with a fake engine (tests of server/*.py) ------------------------------------

CA = "X-Amzn-SageMaker-Custom-Attributes"


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(engine):
    return falcon.testing.TestClient(create_app(engine, ServerConfig()))


@pytest.fixture(scope="module")
def jpeg_body():
    return encode_pil(drawn_image(120, 160), "JPEG", quality=90)


@pytest.fixture(scope="module")
def png_body():
    return encode_pil(drawn_image(120, 160), "PNG")


def post(client, body, content_type=JPEG, accept=None, attrs=None, path="/invocations", **headers):
    h = {"Content-Type": content_type} if content_type else {}
    if accept is not None:
        h["Accept"] = accept
    if attrs is not None:
        h[CA] = attrs if isinstance(attrs, str) else json.dumps(attrs)
    h.update(headers)
    return client.simulate_post(path, body=body, headers=h)


def assert_error(resp, status, *words):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    assert set(resp.json) == {"error", "status"} and resp.json["status"] == status
    for word in words:
        assert word in resp.json["error"]
    assert "Traceback" not in resp.text
