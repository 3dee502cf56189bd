"""The engine's contract: bad model directories, bad images, no torch at serving time,
graphs without data-dependent control flow, and the command line."""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import photo
from engine import Engine, ImageDecodeError, ModelDirError, decode_image
from engine.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from engine.model_directory.directory import ModelDir

ROOT = Path(__file__).resolve().parent.parent


def copy_model(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("victim", ["model.json", "dense.onnx", "box_head.onnx", "mask_head.onnx"])
def test_missing_file_is_named(victim, small_model_dir, tmp_path):
    model = copy_model(small_model_dir, tmp_path)
    (model / victim).unlink()
    with pytest.raises(ModelDirError, match=victim.replace(".", r"\.")):
        Engine.load(model)


@pytest.mark.parametrize("victim", ["dense.onnx", "mask_head.onnx"])
def test_corrupt_graph_is_named(victim, small_model_dir, tmp_path):
    model = copy_model(small_model_dir, tmp_path)
    data = (model / victim).read_bytes()
    (model / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match=victim.replace(".", r"\.")):
        Engine.load(model)


def test_corrupt_graph_without_checksum_is_named_by_the_runtime(small_model_dir, tmp_path):
    model = copy_model(small_model_dir, tmp_path)
    config = json.loads((model / "model.json").read_text())
    del config["graphs"]["box_head"]["sha256"]
    (model / "model.json").write_text(json.dumps(config))
    (model / "box_head.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelDirError, match=r"box_head\.onnx"):
        Engine.load(model)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "other"}'])
def test_corrupt_model_json_is_named(text, small_model_dir, tmp_path):
    model = copy_model(small_model_dir, tmp_path)
    (model / "model.json").write_text(text)
    with pytest.raises(ModelDirError, match=r"model\.json"):
        Engine.load(model)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not found"):
        Engine.load(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((0, 32, 3), np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float32", "2d", "rgba", "empty", "list"],
)
def test_bad_image_is_a_value_error(image, small_model_dir):
    engine = Engine.load(small_model_dir)
    with pytest.raises(ValueError):
        engine.predict(image)


@pytest.mark.parametrize("kwargs", [{"score_threshold": -0.1}, {"score_threshold": 1.5}, {"max_detections": 0}])
def test_bad_thresholds_are_value_errors(kwargs, small_model_dir):
    with pytest.raises(ValueError):
        Engine.load(small_model_dir).predict(np.zeros((64, 64, 3), np.uint8), **kwargs)


@pytest.mark.parametrize("data", [b"", b"hello world", b"\xff\xd8\xff\xe0 truncated jpeg", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_undecodable_bytes_raise_the_typed_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_untrained_model_logs_a_warning(small_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="engine"):
        engine = Engine.load(small_model_dir)
    assert engine.untrained
    assert any("untrained" in r.getMessage() for r in caplog.records)


def test_exported_graphs_hold_no_data_dependent_control_flow(small_model_dir):
    import onnx

    from exporter import FORBIDDEN_OPS

    for graph in ("dense", "box_head", "mask_head"):
        ops = {node.op_type for node in onnx.load(str(small_model_dir / f"{graph}.onnx")).graph.node}
        assert not ops & FORBIDDEN_OPS, (graph, ops & FORBIDDEN_OPS)
        assert not ops & {"NonMaxSuppression", "NonZero", "Loop", "If", "TopK"}
    config = json.loads((small_model_dir / "model.json").read_text())
    assert config["box_head"]["featmap_names"] == ["0", "1"]
    assert config["box_head"]["scales"] == [0.125, 0.0625]
    assert config["weights"]["trained"] is False


def test_no_engine_or_server_module_imports_torch():
    offenders = []
    for package in ("engine", "server", "provision"):  # provision installs torch; only its child export imports it
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("torch", "torchvision")]
    assert not offenders
    # and at run time: loading the engine and predicting pulls no torch in
    code = "import sys, engine, server.app, server.__main__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_predict_command_line(small_model_dir, tmp_path):
    import cv2

    photo_path = tmp_path / "coffee.jpg"
    cv2.imwrite(str(photo_path), photo("coffee")[..., ::-1])
    out = tmp_path / "segmented.png"
    run = subprocess.run(
        [sys.executable, "-m", "engine", "predict", "--model-dir", str(small_model_dir), str(photo_path),
         "--json", "--out", str(out), "--score-threshold", "0.3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    result = json.loads(run.stdout)
    assert len(result["labels"]) == len(result["boxes"]) > 0
    assert all(label.endswith("%") for label in result["labels"])
    segmented = cv2.imread(str(out))
    assert segmented.shape == photo("coffee").shape
    bad = subprocess.run([sys.executable, "-m", "engine", "predict", "--model-dir", str(tmp_path / "none"), str(photo_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    listing = subprocess.run([sys.executable, "-m", "engine", "backends"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "onnxruntime-cpu" in listing.stdout and "available" in listing.stdout


def test_unknown_mask_paste_mode_is_named(small_model_dir, tmp_path):
    model = copy_model(small_model_dir, tmp_path)
    config = json.loads((model / "model.json").read_text())
    config["mask_head"]["paste"] = "sideways"
    (model / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match=r"model\.json.*mask_head\.paste.*sideways"):
        Engine.load(model)


def test_engine_releases_the_dense_outputs_once_on_every_path(small_model_dir):
    directory = ModelDir.open(small_model_dir)

    class Spy(OnnxRuntimeCpuBackend):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.released, self.fail = [], False

        def release(self, dense):
            self.released.append(dense)

        def run_mask_head(self, *a):
            if self.fail:
                raise RuntimeError("simulated mask head failure")
            return super().run_mask_head(*a)

    spy = Spy(directory)
    engine = Engine(directory, spy)
    engine.predict(photo("astronaut"), score_threshold=0.05)
    assert len(spy.released) == 1
    engine.predict(photo("astronaut"), score_threshold=1.0)  # no detections: early return
    assert len(spy.released) == 2
    spy.fail = True
    with pytest.raises(RuntimeError, match="simulated"):
        engine.predict(photo("astronaut"), score_threshold=0.05)
    assert len(spy.released) == 3
