"""`python -m engine predict PHOTO` as a user runs it, from outside the repository.

Without --model-dir it picks the model as `serve` does ($SM_MODEL_DIR, /opt/ml/model, the
demo model) and says which on stderr; a requested directory that is missing is one error
line saying how to build one, never a fallback to the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_defaults import DEFAULT_MODEL_DIR, bundled_model_dir
from server_process import REPO


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
