"""engine/roi_align.py (engine/native/roi_align.c): the native RoIAlign against
torchvision.ops.roi_align, the reference for every number it pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from engine import roi_align

pytestmark = pytest.mark.skipif(not roi_align.available(), reason="the native RoIAlign is not built (no C compiler)")


def nhwc(feature: np.ndarray) -> np.ndarray:
    """(1, C, H, W) -> (1, H, W, C), as OpenVINO's dense graph writes it for the native path."""
    return np.ascontiguousarray(feature.transpose(0, 2, 3, 1))


def reference(feature, rois, scale, output_size, sampling_ratio, aligned=False) -> np.ndarray:
    return torchvision_roi_align(torch.from_numpy(feature), [torch.from_numpy(rois)], output_size, scale,
                                 sampling_ratio, aligned).numpy()


def awkward_rois(rng, count: int, height: int, width: int, scale: float) -> np.ndarray:
    """RoIs in image pixels: random ones, and the cases torchvision treats specially."""
    h, w = height / scale, width / scale
    xy = rng.uniform(-0.2 * w, w, size=(count, 2)) * [1, h / w]
    size = rng.uniform(0, 0.6 * w, size=(count, 2))
    rois = np.concatenate([xy, xy + size], 1)
    special = [
        [0, 0, 1, 1],                        # smaller than a feature pixel
        [10, 10, 10, 10],                    # zero size: torchvision forces 1x1 (aligned=False)
        [30, 20, 5, 2],                      # x2 < x1, y2 < y1
        [-50, -50, -10, -10],                # wholly outside, above-left
        [w - 5, h - 5, w + 80, h + 80],      # over the bottom-right edge
        [w + 20, h + 20, w + 90, h + 90],    # wholly outside, below-right
        [-3, -3, w + 3, h + 3],              # the whole map and a little more
        [0, 0, w, h],
    ]
    return np.concatenate([np.asarray(special, np.float64), rois]).astype(np.float32)


@pytest.mark.parametrize("channels", [256, 70, 3])  # 64-channel register blocks, a remainder, only the remainder
@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (0, False), (2, True), (0, True), (1, False)])
def test_matches_torchvision(channels, sampling_ratio, aligned):
    rng = np.random.default_rng(channels * 10 + sampling_ratio)
    height, width, scale = 23, 37, 0.125
    feature = rng.standard_normal((1, channels, height, width)).astype(np.float32)
    rois = awkward_rois(rng, 60, height, width, scale)
    out = roi_align.RoIAligner(2).pool_levels([nhwc(feature)], [rois], [scale], (7, 7), sampling_ratio, aligned)
    expected = reference(feature, rois, scale, (7, 7), sampling_ratio, aligned)
    assert out.shape == expected.shape == (len(rois), channels, 7, 7) and out.dtype == np.float32
    # only the order of the float sums differs
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("output_size", [(14, 14), (3, 5), (1, 1)])
def test_other_output_sizes(output_size):
    rng = np.random.default_rng(7)
    feature = rng.standard_normal((1, 64, 40, 30)).astype(np.float32)
    rois = awkward_rois(rng, 40, 40, 30, 0.25)
    out = roi_align.RoIAligner(1).pool_levels([nhwc(feature)], [rois], [0.25], output_size, 2)
    np.testing.assert_allclose(out, reference(feature, rois, 0.25, output_size, 2), rtol=1e-5, atol=2e-6)


def test_levels_come_back_in_level_order_and_empty_levels_are_skipped():
    """MultiScaleRoIAlign once the RoIs are split by level: torch.cat of each level's roi_align."""
    rng = np.random.default_rng(3)
    scales = [0.25, 0.125, 0.0625, 0.03125]
    features = [rng.standard_normal((1, 128, 64 >> i, 96 >> i)).astype(np.float32) for i in range(4)]
    rois = [awkward_rois(rng, n, f.shape[2], f.shape[3], s)[:n] for n, f, s in zip((30, 0, 17, 5), features, scales)]
    out = roi_align.RoIAligner(2).pool_levels([nhwc(f) for f in features], rois, scales, (7, 7), 2)
    expected = np.concatenate([reference(f, r, s, (7, 7), 2) for f, r, s in zip(features, rois, scales) if len(r)])
    assert out.shape == (52, 128, 7, 7)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6)


def test_thread_count_does_not_change_the_result():
    rng = np.random.default_rng(5)
    feature = nhwc(rng.standard_normal((1, 256, 50, 68)).astype(np.float32))
    rois = awkward_rois(rng, 301, 50, 68, 0.25)
    one = roi_align.RoIAligner(1).pool_levels([feature], [rois], [0.25], (7, 7), 2)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(roi_align.RoIAligner(threads).pool_levels([feature], [rois], [0.25], (7, 7), 2), one)


def test_writes_into_a_given_array_and_checks_it():
    rng = np.random.default_rng(9)
    feature = nhwc(rng.standard_normal((1, 32, 20, 20)).astype(np.float32))
    rois = awkward_rois(rng, 12, 20, 20, 0.5)
    aligner = roi_align.RoIAligner(2)
    target = np.full((len(rois), 32, 7, 7), np.nan, np.float32)
    assert aligner.pool_levels([feature], [rois], [0.5], (7, 7), 2, out=target) is target
    np.testing.assert_array_equal(target, aligner.pool_levels([feature], [rois], [0.5], (7, 7), 2))
    with pytest.raises(ValueError, match="out must be"):
        aligner.pool_levels([feature], [rois], [0.5], (7, 7), 2, out=np.empty((len(rois), 32, 14, 14), np.float32))
    with pytest.raises(ValueError, match="features must be"):
        aligner.pool_levels([feature[0]], [rois], [0.5], (7, 7), 2)


@pytest.mark.parametrize("channels", [256, 70])
def test_channels_last_output_is_the_same_numbers_transposed(channels):
    """(R, PH, PW, C), for a head whose first layer's weights were permuted to take it."""
    rng = np.random.default_rng(11)
    feature = rng.standard_normal((1, channels, 30, 44)).astype(np.float32)
    rois = awkward_rois(rng, 50, 30, 44, 0.25)
    aligner = roi_align.RoIAligner(2)
    out = aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2, channels_last=True)
    assert out.shape == (len(rois), 7, 7, channels)
    np.testing.assert_array_equal(out, aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2).transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), reference(feature, rois, 0.25, (7, 7), 2), rtol=1e-5, atol=2e-6)


def test_quantized_output_is_what_openvinos_fake_quantize_gives():
    """uint8 straight from the pooling, for an INT8 head whose first step is a FakeQuantize to
    256 levels: the values OpenVINO's CPU FakeQuantize gives for the floats, but for one in
    about a million on a rounding boundary (1 LSB)."""
    ov = pytest.importorskip("openvino")
    rng = np.random.default_rng(13)
    feature = rng.standard_normal((1, 64, 30, 44)).astype(np.float32) * 2
    rois = awkward_rois(rng, 200, 30, 44, 0.25)
    aligner = roi_align.RoIAligner(2)
    low, high = -3.1, 2.7  # values beyond both ends clamp to 0 and 255
    floats = aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2, channels_last=True)
    quantized = aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2, channels_last=True, quantize=(low, high))
    assert quantized.dtype == np.uint8 and quantized.shape == floats.shape
    param = ov.opset13.parameter([-1, 7, 7, 64], ov.Type.f32)
    bound = lambda v: ov.opset13.constant(np.float32(v))  # noqa: E731
    graph = ov.Model([ov.opset13.convert(ov.opset13.fake_quantize(param, bound(low), bound(high), bound(0), bound(255), 256),
                                         "u8")], [param])
    expected = ov.Core().compile_model(graph, "CPU")({0: floats})[0]
    assert {0, 255} <= set(np.unique(expected).tolist())
    differ = quantized.astype(int) - expected.astype(int)
    assert np.abs(differ).max() <= 1 and np.count_nonzero(differ) <= quantized.size // 100_000, np.count_nonzero(differ)
    with pytest.raises(ValueError, match="quantize needs channels_last"):
        aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2, quantize=(low, high))
    with pytest.raises(ValueError, match="high > low"):
        aligner.pool_levels([nhwc(feature)], [rois], [0.25], (7, 7), 2, channels_last=True, quantize=(1.0, 1.0))


def test_channels_last_copy_of_an_nchw_map():
    """For maps a runtime writes NCHW (OpenVINO's INT8 dense graph): the same numbers in
    (1, H, W, C), written into the start of a reused buffer."""
    rng = np.random.default_rng(17)
    aligner = roi_align.RoIAligner(2)
    buffer = np.empty(256 * 50 * 70 + 5, np.float32)
    for shape in [(1, 256, 50, 70), (1, 70, 13, 9), (1, 3, 1, 1)]:
        feature = rng.standard_normal(shape).astype(np.float32)
        view = aligner.channels_last(feature, buffer)
        assert view.shape == (1, shape[2], shape[3], shape[1]) and np.shares_memory(view, buffer)
        np.testing.assert_array_equal(view, nhwc(feature))
    with pytest.raises(ValueError, match="at least"):
        aligner.channels_last(rng.standard_normal((1, 8, 4, 4)).astype(np.float32), np.empty(127, np.float32))
