"""The demo model: a small torchvision Mask R-CNN for the synthetic shapes of `demo.shapes`.

`build_shapes_model()` rebuilds the exact architecture, so a saved `state_dict` (from
`demo/train_shapes.py`) can be loaded for export or tests:

    model = build_shapes_model()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()

The structure is torchvision's own (`BackboneWithFPN` feeding `MaskRCNN` with feature maps
"0".."3" at strides 4..32 plus "pool"), only narrower: about 1.9 M parameters, so the
exported model stays well under 10 MB and a CPU trains it (the run: demo/RESULTS.md).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

# The generator is the single source of the scene frame the model is sized for.
from demo.shapes import CLASS_NAMES, REFERENCE_MAX_SIZE, REFERENCE_MIN_SIZE

STAGE_CHANNELS = (32, 64, 128, 160)  # strides 4, 8, 16, 32
FPN_CHANNELS = 64
# Objects are 20-200 px in the model's frame; one anchor size per FPN level (P2..P6).
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and an identity shortcut)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)  # start as identity: stable training from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ShapesBody(nn.Module):
    """A narrow ResNet-like body: stem (stride 2), then layer1..layer4 at strides 4..32."""

    def __init__(self, channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 24, stride=2)
        c_in = 24
        for i, c in enumerate(channels, start=1):
            self.add_module(f"layer{i}", nn.Sequential(_conv_bn_relu(c_in, c, stride=2), _BasicBlock(c)))
            c_in = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":  # pragma: no cover
        # BackboneWithFPN wraps the children with IntermediateLayerGetter; this is for direct use.
        out = OrderedDict()
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out[str(i - 1)] = x
        return out


def build_shapes_model(num_classes: int = len(CLASS_NAMES)) -> MaskRCNN:
    """Untrained demo Mask R-CNN (torchvision `MaskRCNN`), ready for `load_state_dict`.

    Inputs are resized by the model's transform with min_size 240 / max_size 320 (a
    640x480 photo runs at 320x240). Thresholds are torchvision's defaults except where noted.
    """
    backbone = BackboneWithFPN(
        ShapesBody(),
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=list(STAGE_CHANNELS),
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    return MaskRCNN(
        backbone,
        num_classes=None,  # given to the predictors below
        min_size=REFERENCE_MIN_SIZE,
        max_size=REFERENCE_MAX_SIZE,
        rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
        # Scenes hold at most six objects: far fewer proposals than COCO's 2000/1000 suffice.
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
        box_positive_fraction=0.25,
        box_detections_per_img=100,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, num_classes),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, (64, 64, 64, 64), 1),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
    )
