"""`python -m engine predict PHOTO` as a user runs it, from outside the repository.

Without --model-dir it picks the model as `serve` does ($SM_MODEL_DIR, /opt/ml/model, the
demo model) and says which on stderr; a requested directory that is missing is one error
line saying how to build one, never a fallback to the demo model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_directory.defaults import DEFAULT_MODEL_DIR, bundled_model_dir
from harness.server import REPO


@pytest.fixture(scope="module")
def photo_path(tmp_path_factory) -> Path:
    import cv2

    from helpers import photo

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    cv2.imwrite(str(path), photo("coffee")[..., ::-1])
    return path


def predict(photo: Path, cwd: Path, *args, sm_model_dir: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SM_MODEL_DIR"}
    env["PYTHONPATH"] = str(REPO)
    if sm_model_dir is not None:
        env["SM_MODEL_DIR"] = sm_model_dir
    return subprocess.run([sys.executable, "-m", "engine", "predict", str(photo), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_without_a_model_dir_predict_uses_the_demo_model_and_says_so(photo_path, tmp_path, demo_model_dir):
    if Path(DEFAULT_MODEL_DIR).exists():
        pytest.skip(f"{DEFAULT_MODEL_DIR} exists on this machine, so predict rightly uses it")
    result = predict(photo_path, tmp_path)
    assert result.returncode == 0, result.stderr
    demo = bundled_model_dir()
    assert demo is not None and demo.resolve() == demo_model_dir.resolve()
    lines = result.stderr.splitlines()
    assert f"model: demo model at {demo} (no --model-dir, $SM_MODEL_DIR or {DEFAULT_MODEL_DIR})" in lines
    (notice,) = [line for line in lines if "the demo model knows only" in line]
    assert "circle, square and triangle" in notice  # from the model's class names
    assert "./serve.sh --coco" in notice
    out = json.loads(result.stdout)
    assert set(out) >= {"labels", "boxes"} and len(out["labels"]) == len(out["boxes"])


def test_sm_model_dir_is_used_without_the_demo_notice(photo_path, tmp_path, small_model_dir):
    result = predict(photo_path, tmp_path, sm_model_dir=str(small_model_dir))
    assert result.returncode == 0, result.stderr
    assert f"model: {small_model_dir} ($SM_MODEL_DIR)" in result.stderr.splitlines()
    assert "demo model" not in result.stderr
    assert set(json.loads(result.stdout)) >= {"labels", "boxes"}


@pytest.mark.parametrize("where", ["--model-dir", "$SM_MODEL_DIR"])
def test_a_missing_model_dir_is_one_line_saying_how_to_build_one(photo_path, tmp_path, where):
    missing = tmp_path / "no-such-model"
    if where == "--model-dir":
        result = predict(photo_path, tmp_path, "--model-dir", missing)
    else:
        result = predict(photo_path, tmp_path, sm_model_dir=str(missing))
    assert result.returncode == 1 and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]  # never the demo model's lines
    assert line.startswith(f"error: model directory not found: {missing}")
    assert f"python build_engine.py --output {missing} --weights coco" in line


def info(model_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m engine info DIR [args]`, from outside the repository; it also reports whether
    torch or an inference runtime was imported (it must read model.json alone)."""
    code = ("import sys; from engine.__main__ import main; code = main(sys.argv[1:]); "
            "loaded = [m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'onnx') if m in sys.modules]; "
            "print('loaded:', loaded, file=sys.stderr); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, "info", str(model_dir), *args], cwd=REPO.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)


def info_json(model_dir: Path) -> dict:
    result = info(model_dir, "--json")
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stderr.splitlines()
    return json.loads(result.stdout)


def test_info_on_the_demo_model(demo_model_dir):
    result = info(demo_model_dir)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stderr.splitlines()  # no torch, no runtime, no graph
    lines = result.stdout.splitlines()
    assert f"model          shapes-demo ({demo_model_dir.resolve()})" in lines
    assert "architecture   maskrcnn-shapes-small-fpn" in lines
    assert "classes        4, background first:" in lines
    assert "               __background__, circle, square, triangle" in lines
    assert "resize         short side to 240 px, long side at most 320 px, padded to a multiple of 32" in lines
    assert "rpn anchors    level 0: sizes 16; aspect ratios 0.5, 1, 2" in lines
    assert "               level 4: sizes 256; aspect ratios 0.5, 1, 2" in lines
    assert "precision      FP32 graphs" in lines and "weights        trained" in lines
    assert "box head       score threshold 0.05, NMS IoU 0.5, at most 100 detections per image" in lines
    assert "mask head      28x28 masks, threshold 0.5, paste aligned" in lines

    out = info_json(demo_model_dir)
    assert set(out) == {"name", "path", "arch", "backbone", "model_kwargs", "num_classes", "classes", "resize", "rpn",
                        "box_head", "mask_head", "graphs", "precision", "quantization", "tensorrt", "provenance"}
    assert out["name"] == "shapes-demo" and out["path"] == str(demo_model_dir.resolve())
    assert out["classes"] == ["__background__", "circle", "square", "triangle"] and out["num_classes"] == 4
    assert out["resize"]["min_size"] == 240 and out["resize"]["max_size"] == 320
    assert out["rpn"]["anchor_sizes"] == [[16], [32], [64], [128], [256]]
    assert out["box_head"]["output_size"] == [7, 7] and out["mask_head"]["mask_size"] == 28
    assert out["precision"] == "fp32" and out["quantization"] is None and out["tensorrt"] is None
    assert out["backbone"] is None and out["model_kwargs"] is None  # the demo's model.json predates them
    assert out["provenance"]["trained"] is True and out["provenance"]["format"] == "maskrcnn-serve/1"


def test_info_on_an_untrained_model(small_model_dir):
    from helpers import SMALL_CLASSES

    result = info(small_model_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "model          small-test" in result.stdout
    assert "               " + ", ".join(SMALL_CLASSES) in lines
    assert "weights        UNTRAINED: random weights (seed 0), so its detections mean nothing" in lines
    assert "backbone       unknown (model.json's weights record names none)" in lines

    out = info_json(small_model_dir)
    config = json.loads((small_model_dir / "model.json").read_text())
    assert out["classes"] == SMALL_CLASSES and out["num_classes"] == len(SMALL_CLASSES)
    assert out["resize"] == config["transform"] and out["rpn"] == config["rpn"]  # model.json's own sections
    assert out["precision"] == "fp32"
    assert out["provenance"]["trained"] is False and out["provenance"]["weights"]["seed"] == 0


def test_info_on_an_int8_directory_with_plans_and_a_named_backbone(demo_model_dir, tmp_path):
    # model.json alone says INT8 and lists plans: ModelDir.open checks that the files are there, not what they hold
    copy = tmp_path / "int8"
    shutil.copytree(demo_model_dir, copy)
    config = json.loads((copy / "model.json").read_text())
    config["quantization"] = {"precision": "int8", "format": "QDQ", "ops": ["Conv", "Gemm"], "weight_bits": 7,
                              "fp32_layers": {"dense": [], "box_head": ["cls_logits", "bbox_pred"]},
                              "calibration": {"method": "MinMax", "images": 4}}
    plans = {graph: {"file": f"{graph}.int8.plan"} for graph in ("dense", "box_head", "mask_head")}
    config["tensorrt"] = {"precision": "int8", "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA A10G",
                          "compute_capability": "8.6", "plans": plans}
    config["weights"] |= {"backbone": "mobilenet_v3_large", "model_kwargs": {"min_size": 320, "box_score_thresh": 0.3}}
    (copy / "model.json").write_text(json.dumps(config))
    for plan in plans.values():
        (copy / plan["file"]).write_bytes(b"")

    lines = info(copy).stdout.splitlines()
    assert "backbone       mobilenet_v3_large" in lines
    assert "model kwargs   min_size=320, box_score_thresh=0.3" in lines
    assert "precision      INT8 graphs (QDQ, 7-bit weights), ops Conv, Gemm" in lines
    assert "               layers left in FP32: box_head 2" in lines
    assert any(line.startswith("tensorrt       INT8 plans for NVIDIA A10G") and "TensorRT 10.8.0.43" in line
               for line in lines)

    out = info_json(copy)
    assert out["precision"] == "int8" and out["quantization"]["weight_bits"] == 7
    assert out["tensorrt"]["gpu_name"] == "NVIDIA A10G" and out["tensorrt"]["precision"] == "int8"
    assert out["backbone"] == "mobilenet_v3_large" and out["model_kwargs"] == {"min_size": 320, "box_score_thresh": 0.3}


@pytest.mark.parametrize("problem", ["missing dir", "not JSON", "missing key"])
@pytest.mark.parametrize("form", [(), ("--json",)])
def test_info_on_a_bad_model_dir_is_one_error_line(demo_model_dir, tmp_path, problem, form):
    model_dir = tmp_path / "model"
    if problem != "missing dir":
        shutil.copytree(demo_model_dir, model_dir)
        config = json.loads((model_dir / "model.json").read_text())
        del config["rpn"]["nms_thresh"]
        (model_dir / "model.json").write_text("{not json" if problem == "not JSON" else json.dumps(config))
    result = info(model_dir, *form)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("loaded:")]
    assert line.startswith("error: ") and "Traceback" not in result.stderr
    expected = {"missing dir": f"model directory not found: {model_dir}",
                "not JSON": "model.json is not valid JSON", "missing key": "model.json: rpn.nms_thresh is missing"}
    assert expected[problem] in line


@pytest.mark.parametrize("flag, value", [("--backend", "bogus"), ("--precision", "fp16")])
def test_predict_enum_flags_list_their_choices(flag, value, capsys):
    """The same choices as `serve` (engine.backends.BACKEND_CHOICES, PRECISIONS), refused by
    argparse before any model is looked for."""
    from engine.__main__ import main
    from engine.backends import BACKEND_CHOICES, PRECISIONS

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "photo.jpg", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: invalid choice: '{value}'" in error
    assert all(f"'{choice}'" in error for choice in (BACKEND_CHOICES if flag == "--backend" else PRECISIONS)), error
