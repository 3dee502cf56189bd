"""engine/model_directory/tensorrt_plans.py (pure Python, runs anywhere): model.json's tensorrt section as loaded,
why plans cannot run here, and the optimization-profile shapes from the resize rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine import ModelDirError
from engine.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from engine.model_directory.directory import ModelDir
from engine.model_directory.tensorrt_plans import (dense_range, feature_strides, incompatibility, merge_shape,
                                                  profile_shapes)
from helpers import DEMO, model_dir_with_plans


def _r50_config():
    """The demo model's config with R50's resize rule and RPN top-n (the same four pooled levels)."""
    demo = ModelDir.open(DEMO, verify_checksums=False).config
    assert demo.features == ("feature_0", "feature_1", "feature_2", "feature_3")
    assert demo.box_head.scales == demo.mask_head.scales == (0.25, 0.125, 0.0625, 0.03125)
    return demo.replace(transform=dataclasses.replace(demo.transform, min_size=800, max_size=1333, size_divisible=32),
                        rpn=dataclasses.replace(demo.rpn, post_nms_top_n=1000))


R50_CONFIG = _r50_config()


def test_tensorrt_section_is_validated(tmp_path):
    assert ModelDir.open(model_dir_with_plans(tmp_path / "ok")).tensorrt.precision == "fp16"
    with pytest.raises(ModelDirError, match="tensorrt.precision"):
        ModelDir.open(model_dir_with_plans(tmp_path / "p", precision="fp8"))
    with pytest.raises(ModelDirError, match="tensorrt.gpu_name"):
        ModelDir.open(model_dir_with_plans(tmp_path / "g", gpu_name=""))
    with pytest.raises(ModelDirError, match=r"tensorrt\.plans\.box_head is missing"):
        ModelDir.open(model_dir_with_plans(tmp_path / "m", plans={"dense": {"file": "dense.fp16.plan"}}))
    broken = model_dir_with_plans(tmp_path / "corrupt")
    (broken / "box_head.fp16.plan").write_bytes(b"changed")
    with pytest.raises(ModelDirError, match="box_head.fp16.plan is corrupt"):
        ModelDir.open(broken)
    (broken / "box_head.fp16.plan").unlink()
    with pytest.raises(ModelDirError, match="box_head.fp16.plan is missing"):
        ModelDir.open(broken)


def test_incompatibility_names_what_differs(tmp_path):
    section = dataclasses.replace(ModelDir.open(model_dir_with_plans(tmp_path)).tensorrt, tensorrt_version="10.8.0.43",
                                  gpu_name="Tesla T4", compute_capability="7.5")
    assert incompatibility(section, "10.8.0.43", {"name": "Tesla T4", "compute_capability": "7.5"}) is None
    assert "TensorRT 10.8.0.43" in incompatibility(section, "10.3.0.26", {"name": "Tesla T4", "compute_capability": "7.5"})
    reason = incompatibility(section, "10.8.0.43", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert "NVIDIA L4" in reason and "Tesla T4" in reason


def test_dense_profile_covers_every_photo_of_the_resize_rule():
    low, opt, high = dense_range(R50_CONFIG.transform)
    assert low == (1, 3, 32, 32) and opt == (1, 3, 800, 1088) and high == (1, 3, 1344, 1344)
    from engine.preprocess import resized_size

    for h, w in [(480, 640), (640, 480), (1, 4000), (4000, 1), (1333, 1333), (10000, 7000), (17, 23)]:
        rh, rw = resized_size(h, w, 800, 1333)
        ph, pw = -(-max(rh, 1) // 32) * 32, -(-max(rw, 1) // 32) * 32
        assert low[2] <= ph <= high[2] and low[3] <= pw <= high[3], (h, w)


def test_head_profiles_follow_the_dense_profile_and_the_rpn():
    shapes = profile_shapes(R50_CONFIG)
    assert feature_strides(R50_CONFIG) == {"feature_0": 4, "feature_1": 8, "feature_2": 16, "feature_3": 32}
    assert shapes["box_head"]["feature_0"] == [[1, -1, 8, 8], [1, -1, 200, 272], [1, -1, 336, 336]]
    assert shapes["box_head"]["feature_3"][2] == [1, -1, 42, 42]
    assert shapes["box_head"]["rois_2"] == [[1, 4], [250, 4], [1000, 4]]
    assert shapes["mask_head"]["rois_0"][2] == [100, 4] and shapes["mask_head"]["class_ids"] == [[4], [32], [400]]
    assert merge_shape([1, -1, 8, 8], (1, 256, -1, -1)) == (1, 256, 8, 8)
    with pytest.raises(ValueError):
        merge_shape([1, -1, 8, 8], (1, -1, -1, -1))


@pytest.mark.parametrize("size", [(240, 320), (37, 53), (900, 200), (320, 320)])
def test_profiles_contain_the_feature_shapes_the_graphs_really_make(size):
    """Run the real dense graph (CPU) and check each feature map's shape against the profile."""
    directory = ModelDir.open(DEMO)
    backend = OnnxRuntimeCpuBackend(directory, threads=1)
    config = directory.config
    from engine.preprocess import preprocess

    t = config.transform
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    tensor = preprocess(image, t.image_mean, t.image_std, t.min_size, t.max_size, t.size_divisible).tensor
    low, _, high = dense_range(t)
    assert all(lo <= s <= hi for s, lo, hi in zip(tensor.shape, low, high))
    dense = backend.run_dense(tensor)
    shapes = profile_shapes(config)["box_head"]
    strides = feature_strides(config)
    for name, value in zip(config.features, dense.features):
        shape = value.shape()
        mn, _, mx = shapes[name]
        assert all(a <= s <= b for s, a, b in zip(shape[2:], mn[2:], mx[2:])), (name, shape)
        assert shape[2:] == [tensor.shape[2] // strides[name], tensor.shape[3] // strides[name]]
