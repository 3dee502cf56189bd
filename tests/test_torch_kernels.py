"""engine.torch_kernels against torch itself: the order of torch.topk and torch.sort among
equal values and torch.sigmoid's float32 results, bit for bit, and the RPN's proposals in
torchvision's exact order when the scores tie."""

from __future__ import annotations

import numpy as np
import pytest

from engine import torch_kernels

torch = pytest.importorskip("torch")


def tie_heavy(rng, n: int) -> np.ndarray:
    """n float32 values drawn from a few distinct levels, so most values tie."""
    levels = int(rng.integers(1, 40))
    return (rng.integers(0, levels, n) * 0.1).astype(np.float32)


def test_the_native_library_is_built():
    # the suite runs on an install with a C++ compiler: its absence is a broken build here
    assert torch_kernels.available(), "engine/_torch_kernels was not built (no C++ compiler at install?)"


@pytest.mark.parametrize("seed", range(4))
def test_topk_order_is_torchs_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(1, 12000))
        k = int(rng.integers(1, n + 1)) if rng.random() < 0.5 else min(n, int(rng.integers(1, 200)))
        values = tie_heavy(rng, n)
        expected = torch.from_numpy(values).topk(k).indices.numpy()
        np.testing.assert_array_equal(torch_kernels.topk_indices(values, k), expected)


@pytest.mark.parametrize("seed", range(4))
def test_descending_sort_order_is_torchs_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        values = tie_heavy(rng, int(rng.integers(1, 6000)))
        expected = torch.from_numpy(values).sort(descending=True).indices.numpy()
        np.testing.assert_array_equal(torch_kernels.sort_descending(values), expected)


@pytest.mark.parametrize("n", [1, 17, 1000, 3007, 4096])
def test_sigmoid_is_torchs_to_the_bit(n):
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.normal(0, 6, n), [16.63, 16.64, -90.0, 120.0, 0.0]])[:n].astype(np.float32)
    expected = torch.sigmoid(torch.from_numpy(values)).numpy()
    got = torch_kernels.sigmoid(values)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} of {n} differ"


def test_empty_and_k_zero():
    empty = np.zeros(0, np.float32)
    assert torch_kernels.topk_indices(empty, 0).shape == (0,)
    assert torch_kernels.sort_descending(empty).shape == (0,)
    assert torch_kernels.sigmoid(empty).shape == (0,)


def test_rpn_proposals_in_torchvisions_order_when_scores_tie(small_model):
    """Saturated objectness (probability exactly 1.0 for many anchors, as trained models
    give): fed torchvision's own RPN outputs, the engine's proposals are torchvision's, in
    torchvision's order."""
    from helpers import photo
    from exporter.export import rpn_settings
    from engine.preprocess import preprocess
    from engine.proposals import select_proposals

    model = small_model
    rpn = model.rpn
    image = photo("coffee")
    t = model.transform
    prepared = preprocess(image, t.image_mean, t.image_std, t.min_size[-1], t.max_size, t.size_divisible)
    images = t([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    with torch.no_grad():
        features = model.backbone(images.tensors)
        logits, deltas = rpn.head(list(features.values()))
        spread = float(torch.cat([level.flatten() for level in logits]).std())
        logits = [level * (20 / spread) for level in logits]  # saturate: many probabilities round to 1.0
        anchors = rpn.anchor_generator(images, list(features.values()))
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        flat_logits, flat_deltas = concat_box_prediction_layers(logits, deltas)
        proposals = rpn.box_coder.decode(flat_deltas, anchors).view(1, -1, 4)
        counts = [level[0].numel() for level in logits]
        expected, _ = rpn.filter_proposals(proposals, flat_logits, images.image_sizes, counts)
    assert int((torch.sigmoid(flat_logits) == 1).sum()) > 100, "the test needs tied scores"
    config = rpn_settings(rpn)
    boxes, _ = select_proposals([x.numpy() for x in logits], [x.numpy() for x in deltas], prepared.padded_size,
                                prepared.resized_size, config)
    np.testing.assert_allclose(boxes, expected[0].numpy(), atol=1e-3)


def test_without_the_library_numpy_gives_the_same_values_in_index_order(monkeypatch):
    """An install without a C++ compiler: the same top-k and sort by value, equal values in
    index order, and sigmoid within a float32 ulp of torch's."""
    rng = np.random.default_rng(5)
    values = tie_heavy(rng, 3000)
    logits = rng.normal(0, 6, 1000).astype(np.float32)
    monkeypatch.setattr(torch_kernels, "_library", lambda: None)
    assert not torch_kernels.available()
    for k in (1, 50, 3000):
        top = torch_kernels.topk_indices(values, k)
        np.testing.assert_array_equal(top, np.argsort(-values, kind="stable")[:k])
    np.testing.assert_array_equal(torch_kernels.sort_descending(values), np.argsort(-values, kind="stable"))
    np.testing.assert_allclose(torch_kernels.sigmoid(logits), torch.sigmoid(torch.from_numpy(logits)).numpy(),
                               rtol=0, atol=1.2e-7)
