"""Shared fixtures: real photos, seeded torchvision models and their exported model directories.

Models are built once per session; the exports go to a session temporary directory.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from benchmarks.inputs import skimage_photo

PHOTOS = ("astronaut", "coffee", "chelsea")


# photo(name): a real photograph shipped with scikit-image, HxWx3 uint8 RGB; the benchmarks
# load theirs the same way (the project root is on pytest's path: pyproject pythonpath)
photo = skimage_photo


@pytest.fixture(scope="session")
def torch_cpu():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


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


@pytest.fixture(scope="session")
def small_model(torch_cpu):
    return build_small_maskrcnn(seed=0)


@pytest.fixture(scope="session")
def small_model_dir(small_model, tmp_path_factory):
    """An exported small custom Mask R-CNN (random weights): a real model directory."""
    from exporter import export

    path = tmp_path_factory.mktemp("models") / "small"
    export(
        small_model,
        path,
        SMALL_CLASSES,
        name="small-test",
        weights_info={"source": "random", "seed": 0, "trained": False},
        quiet=True,
    )
    return path


@pytest.fixture(scope="session")
def demo_model_dir():
    """The trained demo model committed at demo/model (served when no model dir is given)."""
    path = Path(__file__).resolve().parents[1] / "demo" / "model"
    if not (path / "model.json").is_file():
        pytest.fail(f"{path} is missing: the trained demo model is committed there "
                    "(train and export it with `python demo/train_shapes.py --export demo/model`)")
    return path


@pytest.fixture(scope="session")
def r50_models(torch_cpu):
    """Seeded random torchvision R50-FPN v1 and v2 models, built lazily, once."""
    from exporter.weights import random_model

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = random_model(arch, seed=0)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def r50_model_dirs(r50_models, tmp_path_factory):
    from exporter import export

    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = tmp_path_factory.mktemp("models") / arch
            export(r50_models(arch), path, [f"class{i}" for i in range(91)], arch=arch, quiet=True,
                   weights_info={"source": "random", "seed": 0, "trained": False})
            cache[arch] = path
        return cache[arch]

    return get


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
