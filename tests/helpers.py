"""Plain helpers the tests share (fixtures live in conftest.py).

* photo(name): a real photograph shipped with scikit-image, HxWx3 uint8 RGB, the one photo
  loader of the tests and the benchmarks (harness.photos.skimage_photo);
  resized_photo(name, (h, w)): the same at another size and aspect ratio.
* run_build_engine(*argv): build_engine.py in a child process, as a user runs it.
* build_small_maskrcnn(seed): a small custom torchvision MaskRCNN with seeded random weights.
* torchvision_predict, match_detections, box_iou_matrix, mask_iou: the parity tests' reference
  run and how detections are matched to it.
* model_dir_with_plans(tmp_path, ...): a model directory with fake TensorRT plans and their section.
* published_state_dict(model), save_published_layout(model, path): a state_dict as torchvision
  publishes its weights, in memory or as a file.
* DEAD_PROXY: environment under which no download can succeed, even on a machine with network.
* wait_until(predicate): poll until it holds, failing after a deadline;
  read_until_closed(sock): everything a socket receives until the peer closes it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from engine.model_directory.directory import sha256_of
from harness.photos import skimage_photo

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"  # the trained demo model, committed
PHOTOS = ("astronaut", "coffee", "chelsea")
DEAD_PROXY = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
photo = skimage_photo  # the project root is on pytest's path (pyproject pythonpath)


def resized_photo(name: str, shape) -> np.ndarray:
    """photo(name) resized (area interpolation) to `shape` (h, w): odd sizes and aspect ratios."""
    import cv2

    return np.ascontiguousarray(cv2.resize(photo(name), (shape[1], shape[0]), interpolation=cv2.INTER_AREA))


def run_build_engine(*argv, timeout: float = 600) -> subprocess.CompletedProcess:
    """build_engine.py with `argv` (str()-ed) in a child process from the project root; output captured."""
    return subprocess.run([sys.executable, str(ROOT / "build_engine.py"), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


SMALL_CLASSES = ["__background__", "disc", "block", "wedge", "ring"]


def build_small_maskrcnn(seed: int = 0):
    """A small custom MaskRCNN: a 4-stage conv backbone + FPN on 3 maps, RoI pooling on only
    two of them, 5 classes, 320 px images. Seeded random weights with spread class scores."""
    import torch
    from torch import nn
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from exporter.weights import spread_class_scores

    class TinyBackbone(nn.Module):
        def __init__(self):
            super().__init__()

            def stage(cin, cout):
                return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

            self.stem = nn.Sequential(stage(3, 16), stage(16, 24))  # stride 4
            self.c3, self.c4, self.c5 = stage(24, 32), stage(32, 48), stage(48, 64)
            self.fpn = FeaturePyramidNetwork([32, 48, 64], 32, extra_blocks=LastLevelMaxPool())
            self.out_channels = 32

        def forward(self, x):
            c3 = self.c3(self.stem(x))
            c4 = self.c4(c3)
            c5 = self.c5(c4)
            return self.fpn(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator(sizes=((16, 24), (32, 48), (64, 96), (128, 192)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    model = MaskRCNN(
        TinyBackbone(),
        num_classes=len(SMALL_CLASSES),
        min_size=320,
        max_size=480,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1"], output_size=14, sampling_ratio=2),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        model.rpn.head.cls_logits.weight.normal_(0.0, 0.1, generator=generator)
        spread_class_scores(model.eval(), generator)
    return model.eval()



def torchvision_predict(model, image: np.ndarray, score_threshold: float, max_detections: int = 100):
    """Eager torchvision output for an RGB uint8 image, with the engine's thresholds."""
    import torch

    model.roi_heads.score_thresh = score_threshold
    model.roi_heads.detections_per_img = max_detections
    with torch.no_grad():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
    return {
        "boxes": out["boxes"].numpy(),
        "scores": out["scores"].numpy(),
        "labels": out["labels"].numpy(),
        "masks": (out["masks"][:, 0] > 0.5).numpy(),
    }


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_detections(ref: dict, det, iou_min: float = 0.99):
    """Greedy one-to-one matching, best reference score first: same class and box IoU >= iou_min.

    Returns (pairs, fraction) where fraction = matched / max(len(ref), len(det)), so unmatched
    detections on either side count against it (matching "both ways").
    """
    n_ref, n_det = len(ref["scores"]), len(det.scores)
    if n_ref == 0 and n_det == 0:
        return [], 1.0
    if n_ref == 0 or n_det == 0:
        return [], 0.0
    ious = box_iou_matrix(ref["boxes"], det.boxes)
    same = ref["labels"][:, None] == det.class_ids[None, :]
    ious = np.where(same, ious, -1.0)
    used = np.zeros(n_det, bool)
    pairs = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        candidates = np.where(used, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_min:
            used[j] = True
            pairs.append((int(i), j))
    return pairs, len(pairs) / max(n_ref, n_det)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def model_dir_with_plans(tmp_path, source=DEMO, **overrides) -> Path:
    """A copy of `source` with fake plan files and a well-formed "tensorrt" section."""
    target = tmp_path / "with-plans"
    shutil.copytree(source, target)
    plans = {}
    for graph in ("dense", "box_head", "mask_head"):
        (target / f"{graph}.fp16.plan").write_bytes(b"not really a plan " + graph.encode())
        plans[graph] = {"file": f"{graph}.fp16.plan", "sha256": sha256_of(target / f"{graph}.fp16.plan")}
    section = {"precision": "fp16", "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA A10G",
               "compute_capability": "8.6", "profiles_per_plan": 2, "plans": plans, "profiles": {}}
    section.update(overrides)
    config = json.loads((target / "model.json").read_text())
    config["tensorrt"] = section
    (target / "model.json").write_text(json.dumps(config))
    return target


def published_state_dict(model) -> dict:
    """`model`'s state_dict as torchvision publishes its weights (FrozenBatchNorm2d: no
    num_batches_tracked buffers)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def save_published_layout(model, path: Path) -> Path:
    """published_state_dict(model) saved to `path` (parents created)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(published_state_dict(model), path)
    return path


def box_head_variants(model_dir, monkeypatch, variants: dict[str, tuple[str, ...]], precision: str = "fp32") -> dict:
    """The box head's outputs (class_probs, box_deltas) on one photo's proposals, for each
    variant of the openvino backend: name -> the graph rewrites of engine.backends.openvino_graphs
    it goes without ("channels_last_head": pooled features NCHW as the graph's RoiAlign gives
    them; "quantized_input_head": an INT8 directory's float input quantized by its graph).
    All variants run on the same dense outputs, so only those rewrites differ. Each variant's
    backend is returned too, under (name, "backend")."""
    import engine.backends.openvino_graphs as openvino_graphs
    from engine import Engine

    engines = {}
    for name, without in variants.items():
        with monkeypatch.context() as patch:
            for rewrite in without:
                patch.setattr(openvino_graphs, rewrite, lambda model: None)
            engines[name] = Engine.load(model_dir, backend="openvino", precision=precision)
    first = next(iter(engines.values()))
    prepared = first.transform(photo("coffee"))
    dense = first.backend.run_dense(prepared.tensor)
    proposals = first.rpn(dense, prepared)
    assert len(proposals) > 100
    outputs = {name: engine.box_head(dense, proposals) for name, engine in engines.items()}
    outputs.update({(name, "backend"): engine.backend for name, engine in engines.items()})
    first.backend.release(dense)
    return outputs


def assert_same_box_head(outputs, reference):
    """Two box heads' (class_probs, box_deltas) that compute the same products summed in
    another order (fc6's weight columns permuted): FP32 rounding only (1.4e-5 seen in a
    probability), and the same top class nearly everywhere."""
    (probs, deltas), (reference_probs, reference_deltas) = outputs, reference
    np.testing.assert_allclose(probs, reference_probs, atol=1e-4)
    np.testing.assert_allclose(deltas, reference_deltas, rtol=1e-4, atol=1e-3)
    assert (probs.argmax(1) == reference_probs.argmax(1)).mean() >= 0.99


def wait_until(predicate, timeout: float = 10.0) -> None:
    """Poll `predicate()` until it is true; an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not true within {timeout:g} s"
        time.sleep(0.005)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything `sock` receives until its peer closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@contextlib.contextmanager
def counted_decoder_calls():
    """OpenCV's decoder (cv2.imdecode, which engine.image_io calls) counted while the block
    runs: yields the mock, whose call_count says how often it decoded; it still decodes."""
    import cv2
    from unittest import mock

    with mock.patch.object(cv2, "imdecode", side_effect=cv2.imdecode) as imdecode:
        yield imdecode
