"""model.json as typed dataclasses (engine.model_directory.config): every section checked at load.

A bad or missing key is a ModelDirError naming model.json and the dotted key, raised by
ModelDir.open (so by Engine.load, before any request); what the exporter writes is what is
read back, field for field.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from engine import Engine, ModelDirError
from engine.model_directory.config import MODEL_FORMAT, GraphFile, ModelConfig, RpnConfig, TransformConfig
from engine.model_directory.directory import ModelDir

DEMO = Path(__file__).resolve().parents[1] / "demo" / "model"


def _plans_section() -> dict:
    plans = {g: {"file": f"{g}.fp16.plan"} for g in ("dense", "box_head", "mask_head")}
    return {"precision": "fp16", "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA A10G",
            "compute_capability": "8.6", "profiles_per_plan": 2, "plans": plans}


def _quantization_section() -> dict:
    return {"precision": "int8", "format": "QDQ", "ops": ["Conv"], "fp32_layers": {"dense": []},
            "calibration": {"method": "MinMax", "images": 4}}


def _set(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def _delete(config: dict, key: str) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    del config[last]


MISSING = [
    "class_names", "transform", "rpn", "box_head", "mask_head", "features", "graphs",
    "transform.min_size", "transform.image_std", "rpn.nms_thresh", "rpn.post_nms_top_n", "rpn.bbox_xform_clip",
    "box_head.scales", "box_head.detections_per_img", "box_head.canonical_level", "mask_head.mask_size",
    "mask_head.feature_indices", "graphs.dense", "graphs.mask_head.file",
]

BAD_VALUES = [  # (key, value, what the message says about it)
    ("transform.min_size", "800", "must be an integer, got a string"),
    ("transform.max_size", 1333.5, "must be an integer"),
    ("transform.image_std", [0.2, 0.0, 0.2], "[1] must be positive"),
    ("transform.image_mean", [0.4, 0.4], "must have 3 entries, got 2"),
    ("rpn.nms_thresh", 1.5, "must be in [0, 1], got 1.5"),
    ("rpn.pre_nms_top_n", 0, "must be positive"),
    ("rpn.aspect_ratios", [[0.5, 1.0, 2.0]], "must have one entry per level (5), got 1"),
    ("rpn.anchor_sizes", [[16], [32], [], [128], [256]], "[2] must not be empty"),
    ("rpn.min_size", -1, "must be >= 0"),
    ("rpn.box_coder_weights", [1.0, 1.0, 1.0], "must have 4 entries"),
    ("box_head.scales", [0.25, "a", 0.0625, 0.03125], "[1] must be a finite number, got a string"),
    ("box_head.feature_indices", [0, 1, 2, 9], "[3] must index features (0..3), got 9"),
    ("box_head.featmap_names", ["0", "1"], "must have one entry per scale (4), got 2"),
    ("box_head.score_thresh", True, "must be a finite number, got a boolean"),
    ("mask_head.paste", "sideways", "must be one of ('torchvision', 'aligned', 'grid_sample'), got 'sideways'"),
    ("transform.resize", "bicubic", "must be one of ['torchvision', 'shortest_edge'], got 'bicubic'"),
    ("transform.channel_order", "GBR", "must be one of ['RGB', 'BGR'], got 'GBR'"),
    ("transform.pixel_range", 0, "must be positive"),
    ("rpn.anchor_order", "random", "must be one of ['ratios_outer', 'sizes_outer'], got 'random'"),
    ("rpn.anchor_strides", [4, 8, 16], "must have one entry per level (5), got 3"),
    ("rpn.objectness", "softmax", "must be one of ['sigmoid', 'logits'], got 'softmax'"),
    ("rpn.min_size_rule", "<", "must be one of ['>=', '>'], got '<'"),
    ("box_head.background", "middle", "must be one of ['first', 'last'], got 'middle'"),
    ("box_head.min_size", -1, "must be >= 0"),
    ("box_head.aligned", "yes", "must be true or false, got a string"),
    ("mask_head.background_channel", 0, "must be true or false"),
    ("mask_head.mask_threshold", 2, "must be in [0, 1]"),
    ("mask_head.output_size", [14], "must have 2 entries, got 1"),
    ("features", [], "must name at least one feature map"),
    ("class_names", ["__background__"], "must list the background and at least one class"),
    ("graphs.box_head.file", "/etc/passwd", "must be a file name inside the model directory"),
    ("graphs.dense.file", "../elsewhere.onnx", "must be a file name inside the model directory"),
    ("graphs.dense.sha256", 12, "must be a string, got int 12"),
    ("weights.trained", "yes", "must be true or false, got a string"),
    ("rpn.nms_threshold", 0.7, "is not a known key"),  # a typo is named, not ignored
    ("quantization", _quantization_section() | {"ops": "Conv"}, "must be a list, got a string"),
    ("quantization", {k: v for k, v in _quantization_section().items() if k != "calibration"}, "is missing"),
    ("tensorrt", _plans_section() | {"precision": "fp8"}, "must be one of ('fp32', 'fp16', 'int8'), got 'fp8'"),
    ("tensorrt", _plans_section() | {"gpu_name": ""}, "must not be empty"),
    ("tensorrt", _plans_section() | {"profiles_per_plan": 0}, "must be positive"),
    ("tensorrt", _plans_section() | {"plans": {"dense": {"file": "dense.fp16.plan"}}}, "is missing"),
]
WHERE = {  # the key a section-level mutation is reported under
    ("quantization", "must be a list, got a string"): "quantization.ops",
    ("quantization", "is missing"): "quantization.calibration",
    ("tensorrt", "must be one of ('fp32', 'fp16', 'int8'), got 'fp8'"): "tensorrt.precision",
    ("tensorrt", "must not be empty"): "tensorrt.gpu_name",
    ("tensorrt", "must be positive"): "tensorrt.profiles_per_plan",
    ("tensorrt", "is missing"): "tensorrt.plans.box_head",
}


@pytest.fixture
def demo_copy(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(DEMO, target)
    return target


def _write(model: Path, change) -> Path:
    config = json.loads((model / "model.json").read_text())
    change(config)
    (model / "model.json").write_text(json.dumps(config))
    return model / "model.json"


@pytest.mark.parametrize("key", MISSING)
def test_a_missing_key_is_named_with_the_file(demo_copy, key):
    meta = _write(demo_copy, lambda config: _delete(config, key))
    with pytest.raises(ModelDirError) as info:
        ModelDir.open(demo_copy)
    assert str(info.value) == f"{meta}: {key} is missing"


@pytest.mark.parametrize(("key", "value", "problem"), BAD_VALUES, ids=[f"{k}:{p[:20]}" for k, _, p in BAD_VALUES])
def test_a_bad_value_is_named_with_the_file_and_key(demo_copy, key, value, problem):
    meta = _write(demo_copy, lambda config: _set(config, key, value))
    with pytest.raises(ModelDirError) as info:
        Engine.load(demo_copy)  # at load: no request ever sees it
    where = WHERE.get((key, problem), key)
    assert str(info.value).startswith(f"{meta}: {where}"), str(info.value)
    assert problem in str(info.value)


def test_a_model_directory_of_another_format_says_so(demo_copy):
    meta = _write(demo_copy, lambda config: _set(config, "format", "maskrcnn-serve/0"))
    with pytest.raises(ModelDirError, match=f"{meta} is not a {MODEL_FORMAT} model description"):
        ModelDir.open(demo_copy)


def test_the_demo_model_written_by_an_earlier_main_loads_typed():
    config = ModelDir.open(DEMO).config
    assert isinstance(config.rpn, RpnConfig) and isinstance(config.transform, TransformConfig)
    assert config.class_names == ("__background__", "circle", "square", "triangle")
    assert config.mask_head.paste == "aligned" and config.box_head.scales == (0.25, 0.125, 0.0625, 0.03125)
    assert config.graphs["dense"] == GraphFile(file="dense.onnx", sha256=config.graphs.dense.sha256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rpn.nms_thresh = 0.5  # type: ignore[misc]


def test_optional_keys_of_the_first_exports_default(demo_copy):
    def drop(config):
        del config["mask_head"]["paste"], config["mask_head"]["mask_threshold"], config["name"]

    _write(demo_copy, drop)
    config = ModelDir.open(demo_copy).config
    assert config.mask_head.paste == "torchvision" and config.mask_head.mask_threshold == 0.5
    assert ModelDir.open(demo_copy).name == "model"  # the directory's name


@pytest.mark.parametrize("source", ["demo", "small", "int8"])
def test_what_is_written_is_what_is_read(source, small_model_dir, tmp_path):
    """The exporter writes model.json from the dataclasses: parsing and writing back is the identity."""
    if source == "int8":
        from exporter.quantize import quantize_graphs
        from helpers import photo

        directory = tmp_path / "int8"
        shutil.copytree(small_model_dir, directory)
        quantize_graphs(small_model_dir, directory, [photo("coffee")], quiet=True)
    else:
        directory = DEMO if source == "demo" else small_model_dir
    data = json.loads((directory / "model.json").read_text())
    config = ModelDir.open(directory).config
    assert json.loads(json.dumps(config.to_json())) == data
    assert ModelConfig.from_json(config.to_json(), "x") == config
    if source == "int8":
        assert config.quantization.precision == "int8" and set(config.quantization.fp32_layers) == {
            "dense", "box_head", "mask_head"}


def test_configs_built_in_code_are_checked_too():
    transform = ModelDir.open(DEMO).config.transform
    with pytest.raises(ValueError, match=r"min_size must be positive, got 0"):
        dataclasses.replace(transform, min_size=0)
