"""The three dense ONNX graphs cut out of a torchvision MaskRCNN.

Everything data-dependent (anchor decoding, top-k, NMS, score filtering, level assignment,
mask pasting) is left to numpy in `engine/`, so these graphs hold no NonMaxSuppression,
NonZero, Loop or If node and build as-is in TensorRT.

    dense     images (1, 3, H, W) float32, normalised and padded to the size divisor
              -> feature_<name> (1, C, H/s, W/s) for each map the RoI heads pool from,
                 rpn_logits_<i> (1, A, Hi, Wi) and rpn_deltas_<i> (1, 4A, Hi, Wi) per RPN level
    box_head  feature_<name>..., rois_<j> (Rj, 4) per pooled level, padded-image pixels
              -> class_probs (R, C) softmax, box_deltas (R, 4C), R = sum Rj in level order
    mask_head feature_<name>..., rois_<j> (Rj, 4), class_ids (R,) int64
              -> mask_probs (R, M, M) sigmoid of the mask logits of each RoI's class
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


def _pool_levels(features, rois_per_level, scales, output_size, sampling_ratio, aligned=False):
    """RoIAlign each level's boxes on its own feature map, concatenated in level order.

    Matches torchvision's MultiScaleRoIAlign (aligned=False, i.e. ONNX RoiAlign with
    coordinate_transformation_mode="output_half_pixel"), or detectron2's ROIPooler with
    ROIAlignV2 (aligned=True, "half_pixel"), once the caller has assigned the levels with
    the same rule.
    """
    pooled = []
    for feature, rois, scale in zip(features, rois_per_level, scales):
        batch_index = torch.zeros_like(rois[:, :1])
        pooled.append(
            roi_align(
                feature,
                torch.cat([batch_index, rois], dim=1),
                output_size=output_size,
                spatial_scale=scale,
                sampling_ratio=sampling_ratio,
                aligned=aligned,
            )
        )
    return torch.cat(pooled, dim=0)


class DenseGraph(nn.Module):
    """Backbone + FPN + RPN head: the bulk of the arithmetic."""

    def __init__(self, model, feature_names: list[str]):
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.feature_names = feature_names

    def forward(self, images):
        features = self.backbone(images)
        logits, deltas = self.rpn_head(list(features.values()))
        return (*[features[name] for name in self.feature_names], *logits, *deltas)


class _RoIHeadGraph(nn.Module):
    """Common part of the head graphs: which feature inputs each pooled level reads, and
    the RoIAlign settings."""

    def __init__(self, num_features: int, levels: list[int], scales, output_size, sampling_ratio, aligned=False):
        super().__init__()
        self.num_features = num_features
        self.levels = levels  # index into the feature inputs of each pooled level
        self.scales = scales
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def pool(self, features, rois):
        return _pool_levels([features[i] for i in self.levels], rois, self.scales, self.output_size, self.sampling_ratio,
                            self.aligned)


class BoxHeadGraph(_RoIHeadGraph):
    """Multi-level RoIAlign + box head + predictor, softmax over classes."""

    def __init__(self, model, *pool_settings):
        super().__init__(*pool_settings)
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor

    def forward(self, *inputs):
        pooled = self.pool(inputs[: self.num_features], inputs[self.num_features :])
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        return torch.softmax(class_logits, dim=-1), box_deltas


class MaskHeadGraph(_RoIHeadGraph):
    """Multi-level RoIAlign + mask head + predictor, keeping only each RoI's own class."""

    def __init__(self, model, *pool_settings):
        super().__init__(*pool_settings)
        self.mask_head = model.roi_heads.mask_head
        self.mask_predictor = model.roi_heads.mask_predictor

    def forward(self, *inputs):
        class_ids = inputs[-1]
        pooled = self.pool(inputs[: self.num_features], inputs[self.num_features : -1])
        logits = self.mask_predictor(self.mask_head(pooled))  # (R, C, M, M)
        m = logits.shape[-1]
        index = class_ids.reshape(-1, 1, 1, 1).expand(-1, 1, m, m)
        # reshape, not squeeze: squeeze of a dynamic dim exports an If node
        return torch.sigmoid(torch.gather(logits, 1, index)).reshape(-1, m, m)
