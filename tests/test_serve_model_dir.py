"""Which model directory `serve` picks: --model-dir, $SM_MODEL_DIR, /opt/ml/model, the demo model.

The choice lives in engine.model_directory.defaults (`python -m engine predict` makes the same one);
server.__main__ re-exports `bundled_model_dir` and `resolve_model_dir`.

The explicit choices are strict (a missing directory is an error, never a silent fallback);
the demo model shipped in the `demo` package is served only when nothing was asked for and
SageMaker's /opt/ml/model is absent. The last test installs the project the way the
Dockerfile does (`pip install .` of the files it copies, not editable) and checks that the
demo model and the web page come with it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine.model_directory.defaults as defaults
from harness.server import REPO
import server.__main__ as serve_main
from engine.errors import ModelDirError


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A fake bundled demo model, and a DEFAULT_MODEL_DIR (/opt/ml/model) that does not exist."""
    demo = tmp_path / "site-packages" / "demo" / "model"
    demo.mkdir(parents=True)
    (demo / "model.json").write_text(json.dumps({"class_names": ["__background__", "circle", "square"]}))
    monkeypatch.setattr(defaults, "bundled_model_dir", lambda: demo)
    monkeypatch.setattr(defaults, "DEFAULT_MODEL_DIR", str(tmp_path / "opt-ml-model"))
    return demo


def test_serve_uses_the_engines_choice():
    assert serve_main.resolve_model_dir is defaults.resolve_model_dir
    assert serve_main.bundled_model_dir is defaults.bundled_model_dir
    assert serve_main.DEFAULT_MODEL_DIR == defaults.DEFAULT_MODEL_DIR == "/opt/ml/model"


def test_model_dir_argument_wins(bundled, tmp_path):
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    assert serve_main.resolve_model_dir(str(given), {"SM_MODEL_DIR": str(env)}) == given
    assert serve_main.resolve_model_dir(None, {"SM_MODEL_DIR": str(env)}) == env


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_a_missing_requested_dir_is_an_error_not_a_fallback(bundled, tmp_path, where):
    missing = tmp_path / "typo"
    arg, environ = (str(missing), {}) if where == "argument" else (None, {"SM_MODEL_DIR": str(missing)})
    with pytest.raises(ModelDirError, match=re.escape(str(missing))) as info:
        serve_main.resolve_model_dir(arg, environ)
    assert f"python build_engine.py --output {missing} --weights coco" in str(info.value)
    # where the demo model is, and that it takes leaving both out, not that it was used
    assert f"no --model-dir and no $SM_MODEL_DIR to use the demo model at {bundled}" in str(info.value)


def test_opt_ml_model_comes_before_the_demo_model(bundled, tmp_path):
    opt = tmp_path / "opt-ml-model"
    opt.mkdir()
    assert serve_main.resolve_model_dir(None, {}) == opt
    assert serve_main.resolve_model_dir("", {"SM_MODEL_DIR": ""}) == opt  # empty means not given


def test_nothing_given_serves_the_demo_model_and_says_how_to_build_coco(bundled, caplog):
    with caplog.at_level(logging.WARNING, logger=defaults.logger.name):
        assert serve_main.resolve_model_dir(None, {}) == bundled
    (record,) = caplog.records
    message = record.getMessage()
    assert f"demo model at {bundled}" in message and "no --model-dir, $SM_MODEL_DIR or" in message
    assert "knows only circle and square" in message  # the model's own class names
    assert "./serve.sh --coco" in message and "serve --model coco-v1" in message
    assert record.fields == {"model_dir": str(bundled), "demo": True}
    assert defaults.is_demo_model(bundled) and not defaults.is_demo_model(bundled.parent)


def test_nothing_anywhere_is_an_error_naming_every_place(bundled, monkeypatch):
    monkeypatch.setattr(defaults, "bundled_model_dir", lambda: None)
    with pytest.raises(ModelDirError, match="demo model .* not installed") as info:
        serve_main.resolve_model_dir(None, {})
    assert f"--output {defaults.DEFAULT_MODEL_DIR}" in str(info.value)


def test_bundled_model_dir_is_demo_model_in_the_demo_package(tmp_path, monkeypatch):
    import demo

    # The real one: demo/model next to demo/__init__.py, when its model.json is there.
    expected = Path(demo.__file__).resolve().parent / "model"
    found = defaults.bundled_model_dir()
    assert found == (expected if (expected / "model.json").is_file() else None)
    # A `demo` package without the model (e.g. installed without its package data): None.
    monkeypatch.setattr(defaults.importlib.resources, "files", lambda name: tmp_path)
    assert defaults.bundled_model_dir() is None

    def no_demo(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(defaults.importlib.resources, "files", no_demo)
    assert defaults.bundled_model_dir() is None


def test_the_dockerfiles_install_carries_the_demo_model_and_the_web_page(demo_model_dir, tmp_path):
    """`pip install .` (not editable) of exactly what the Dockerfile copies, then look from
    outside the source tree: the demo model and server/static must be package data."""
    context = tmp_path / "context"
    context.mkdir()
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)  # not the stage copy
    sources = [name for line in copies for name in line.split()]
    assert {"demo/", "server/", "engine/", "provision/"} <= set(sources), copies  # server.__main__ imports provision
    for name in sources:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / name).write_bytes(src.read_bytes())
    site = tmp_path / "site"
    # Offline with this environment's setuptools when it is recent enough for pyproject.toml;
    # else pip fetches one into an isolated build environment, as the Docker build does.
    offline = ["--no-build-isolation", "--no-index"] if _setuptools_major() >= 68 else []
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *offline,
                    "--target", str(site), str(context)], check=True, timeout=300)
    probe = ("from server.__main__ import bundled_model_dir; from server.app import STATIC_DIR; "
             "print(bundled_model_dir()); print(STATIC_DIR)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    model_dir, static_dir = Path(out[0]), Path(out[1])
    assert model_dir == site / "demo" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in demo_model_dir.iterdir())
    assert static_dir == site / "server" / "static"
    assert {"index.html", "app.js", "style.css"} <= {p.name for p in static_dir.iterdir()}


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0
