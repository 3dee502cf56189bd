"""`./serve.sh --coco` / `serve --model coco-v1|coco-v2`: torchvision's COCO model, built on first use.

Offline throughout: the torch-hub cache is seeded with a seeded random state_dict under
torchvision's file name (the published layout), which torchvision's weights API then uses
without a download. The first-use test runs the README's command on a copy of the project
with no virtual environment yet, so it also installs torch into the new venv as a user's
first run does; the served answers are compared with torchvision on the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import engine.model_directory.named as named
import provision
from provision import install
from harness.server import REPO, ServerProcess, http_call, serve_command
from helpers import DEAD_PROXY, match_detections, photo, save_published_layout, torchvision_predict
from engine.errors import ModelDirError
from server_fixtures import encode_pil



@pytest.mark.parametrize("name", [n for n, m in named.NAMED_MODELS.items() if m.framework == "torchvision"])
def test_named_models_are_torchvisions_coco_weights(name, torch_cpu):
    import torchvision.models.detection as detection

    from exporter.weights import coco_weights, hub_checkpoint

    model = named.NAMED_MODELS[name]
    enum_name, member = model.weights_enum.split(".")
    weights = getattr(getattr(detection, enum_name), member)
    assert weights is coco_weights(model.arch)
    assert model.weights_url == weights.url
    assert named.hub_checkpoint(model.weights_url) == hub_checkpoint(weights.url)
    assert model.weights_file == Path(weights.url).name


@pytest.mark.parametrize("env", [{"TORCH_HOME": "/t/home"}, {"XDG_CACHE_HOME": "/x/cache"}, {"HOME": "/h/user"},
                                 {"TORCH_HOME": "/t/home", "XDG_CACHE_HOME": "/x/cache"}])
def test_the_hub_directory_is_torchs(env, monkeypatch, torch_cpu):
    import torch.hub

    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert named.torch_hub_dir(os.environ) == Path(torch.hub.get_dir())


def test_the_cache_folder_follows_the_environment(tmp_path):
    assert named.cache_dir({"MASKRCNN_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert named.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/maskrcnn-serve")
    assert named.cache_dir({"HOME": "/h"}) == Path("/h/.cache/maskrcnn-serve")


def test_export_requirements_are_the_verified_pins_and_the_export_extra():
    requirements = install.export_requirements()
    assert requirements[:2] == list(install.VERIFIED_TORCH)
    assert any(r.startswith("onnx") for r in requirements), requirements
    assert not any(r.startswith(("torch>", "torchvision>")) for r in requirements), "pins replace the extra's ranges"
    for pin in install.VERIFIED_TORCH:  # test.sh installs the same versions the first use does
        assert pin in (REPO / "test.sh").read_text()


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelDirError, match="coco-v1, coco-v2"):
        named.named_model("coco-v3")


def test_reuse_needs_the_same_weights_file_and_model_format(tmp_path):
    target, stamp, weights = tmp_path / "coco-v1", tmp_path / "coco-v1.source", tmp_path / "w.pth"
    weights.write_bytes(b"one")
    target.mkdir()
    assert not named.reusable(target, stamp, weights)  # no model.json
    (target / "model.json").write_text("{}")
    assert not named.reusable(target, stamp, weights)  # no record of what it was built from
    stamp.write_text(named.WeightsSource.of(weights).to_json())
    assert named.reusable(target, stamp, weights)
    os.utime(weights, ns=(1, 1))  # replaced weights (another seed, a newer download)
    assert not named.reusable(target, stamp, weights)
    stamp.write_text(named.WeightsSource.of(weights).to_json())
    other = tmp_path / "other.pth"
    other.write_bytes(b"one")
    os.utime(other, ns=(1, 1))
    assert not named.reusable(target, stamp, other)  # same size and time, another file
    weights.unlink()
    assert named.reusable(target, stamp, weights)  # the hub cache was cleared: still a good directory
    older = json.loads(stamp.read_text()) | {"model_format": "maskrcnn-serve/0"}
    stamp.write_text(json.dumps(older))
    assert not named.reusable(target, stamp, weights)


def test_no_install_into_a_python_that_is_not_a_virtual_environment(monkeypatch):
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    with pytest.raises(ModelDirError, match=r"not a virtual environment; install them yourself \(pip install 'torch==") as info:
        install.install_export_requirements("coco-v1", ["torch"], say=print)
    assert "\n" not in str(info.value)


def run_serve(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(serve_command() + list(args) + ["--port", "0"], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("flag", [["--coco"], ["--model", "coco-v2"]])
def test_offline_without_cached_weights_is_one_line_naming_the_weights_option(tmp_path, flag):
    env = {"TORCH_HOME": str(tmp_path / "torch"), "MASKRCNN_CACHE_DIR": str(tmp_path / "cache"), **DEAD_PROXY}
    result = run_serve(*flag, env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serve: error: cannot download torchvision's COCO weights")
    assert "--weights PATH" in lines[0] and "https://download.pytorch.org/models/maskrcnn_resnet50_fpn" in lines[0]
    assert not (tmp_path / "cache" / "models" / flag[-1].replace("--coco", "coco-v1")).exists()


def test_offline_detectron2_zoo_model_is_one_line_naming_the_weights_option(tmp_path):
    env = {"MASKRCNN_CACHE_DIR": str(tmp_path / "cache"), **DEAD_PROXY}
    result = run_serve("--model", "detectron2-r50-fpn-3x", env=env)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serve: error: cannot download detectron2's COCO weights")
    assert "--weights PATH" in lines[0] and named.DETECTRON2_ZOO + "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/" in lines[0]
    assert not (tmp_path / "cache" / "models" / "detectron2-r50-fpn-3x").exists()


def test_a_missing_weights_file_is_one_line(tmp_path):
    result = run_serve("--model", "coco-v1", "--weights", str(tmp_path / "nope.pth"),
                       env={"MASKRCNN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"serve: error: weights file not found: {tmp_path / 'nope.pth'}"]


def test_weights_need_a_model_name(tmp_path):
    result = run_serve("--weights", str(tmp_path / "w.pth"), env={})
    assert result.returncode == 2 and "--weights goes with --model" in result.stderr


def test_weights_file_builds_the_named_model_and_replacing_it_rebuilds(tmp_path, r50_models):
    """`--weights PATH` (the offline way): built from the file, reused while it is unchanged."""
    model = named.named_model("coco-v2")
    weights = save_published_layout(r50_models(model.arch), tmp_path / "downloaded-elsewhere.pth")
    env = {**os.environ, "MASKRCNN_CACHE_DIR": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch"),
           "PYTHONPATH": str(REPO), **DEAD_PROXY}
    said = []
    target = provision.ensure_named_model("coco-v2", weights, env, say=said.append)
    assert target == tmp_path / "cache" / "models" / "coco-v2"
    config = json.loads((target / "model.json").read_text())
    assert config["name"] == "coco-v2" and config["arch"] == model.arch and len(config["class_names"]) == 91
    assert config["weights"]["source"] == "file" and config["weights"]["path"] == str(weights)
    assert [line.split()[0] for line in said] == ["coco-v2:", "[install]", "[weights]", "[export]", "coco-v2:"]
    assert not (tmp_path / "torch").exists()  # nothing went near the hub cache

    said.clear()
    assert provision.ensure_named_model("coco-v2", weights, env, say=said.append) == target
    assert said == [f"coco-v2: using {target} (built earlier)"]

    created = config["created"]
    os.utime(weights)  # the file was replaced: build again from the new one
    said.clear()
    provision.ensure_named_model("coco-v2", weights, env, say=said.append)
    assert "first use" in said[0]
    assert json.loads((target / "model.json").read_text())["graphs"] == config["graphs"]  # same weights, same graphs
    assert created <= json.loads((target / "model.json").read_text())["created"]


def project_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them: no .venv, no caches, no test output."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, timeout=60)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:  # not a git checkout (a source archive)
        shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "test-artifacts", ".pytest_cache"))
    return dest


def served_detections(url: str, image: np.ndarray):
    """/invocations JSON for a lossless PNG of `image`, as Detections-like arrays (scores from the labels)."""
    reply = http_call(f"{url}/invocations", body=encode_pil(image, "PNG"),
                      headers={"Content-Type": "image/png", "Accept": "application/json"})
    assert reply.status_code == 200, reply.content[:300]
    body = reply.json()
    assert set(body) == {"labels", "boxes"}  # the seed's shape, exactly
    names = [label.rsplit(" ", 1)[0] for label in body["labels"]]
    percents = [int(label.rsplit(" ", 1)[1].rstrip("%")) for label in body["labels"]]
    return names, np.asarray(percents), np.asarray(body["boxes"], np.float64).reshape(-1, 4)


def test_serve_sh_coco_installs_builds_serves_and_then_reuses(tmp_path, r50_models):
    """The README's `./serve.sh --coco` on a fresh copy: venv, torch, export, serve; then reuse."""
    from exporter.weights import coco_class_names

    model = named.named_model("coco-v1")
    project = project_copy(tmp_path / "project")
    home = tmp_path / "home"
    checkpoint = save_published_layout(r50_models(model.arch), home / ".cache" / "torch" / "hub" / "checkpoints"
                                       / model.weights_file)
    seeded = checkpoint.stat().st_mtime_ns
    # A user's environment: their own HOME (so both caches default under it), no PYTHONPATH,
    # no venv of ours on PATH; pip keeps this machine's wheel cache (torch is 550 MB).
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip")
    env = {"HOME": str(home), "PYTHONPATH": None, "PATH": path, "VIRTUAL_ENV": None, "TORCH_HOME": None,
           "XDG_CACHE_HOME": None, "MASKRCNN_CACHE_DIR": None, "PIP_CACHE_DIR": pip_cache,
           # compared with torchvision at the FP32 parity tolerances below; on a CPU with BF16
           # the default is BF16 in the dense graph (its accuracy: tests/test_openvino.py)
           "MASKRCNN_PRECISION": "fp32"}
    target = home / ".cache" / "maskrcnn-serve" / "models" / "coco-v1"
    try:
        first = ServerProcess(None, tmp_path / "first.log", extra_env=env, cwd=project,
                              command=[str(project / "serve.sh")], args=["--coco"], stderr_path=tmp_path / "first.err")
        try:
            first.wait_ready(deadline_s=900)  # a venv, torch from the package index, the export, the warm-up
            progress = first.stderr()
            for step in ("coco-v1: first use: building", "[install] installing torch==", "[weights] torchvision's COCO "
                         "weights from the torch-hub cache", "[export]", "coco-v1: ready in"):
                assert step in progress, progress
            # torch.hub's 'Downloading: "URL" to PATH' line (pip's own "Downloading torch-..." is fine)
            assert 'Downloading: "https://download.pytorch.org' not in progress
            assert checkpoint.stat().st_mtime_ns == seeded
            ping = http_call(f"{first.url}/ping", method="GET").json()
            assert ping["model"] == "coco-v1" and ping["demo"] is False and "notice" not in ping

            image = photo("astronaut")
            names, percents, boxes = served_detections(first.url, image)
            ref = torchvision_predict(r50_models(model.arch), image, 0.5)
            assert len(ref["scores"]) >= 5, "the seeded model should detect things to compare"
            classes = coco_class_names()
            vocabulary = sorted(set(classes))  # COCO repeats "N/A": compare names, not ids
            ref_ids = np.asarray([vocabulary.index(classes[i]) for i in ref["labels"]])
            served = types.SimpleNamespace(boxes=boxes, scores=percents / 100.0,
                                           class_ids=np.asarray([vocabulary.index(n) for n in names]))
            pairs, fraction = match_detections({**ref, "labels": ref_ids}, served)
            assert fraction >= 0.98, f"{fraction:.3f} of {len(ref['scores'])} torchvision / {len(names)} served matched"
            assert all(abs(round(float(ref["scores"][i]) * 100) - percents[j]) <= 1 for i, j in pairs)
        finally:
            assert first.stop() == 0
        built = (target / "model.json").stat().st_mtime_ns
        assert json.loads((target / "model.json").read_text())["weights"] == {"source": "torchvision-coco",
                                                                             "trained": True}

        second = ServerProcess(None, tmp_path / "second.log", extra_env=env, cwd=project,
                               command=[str(project / "serve.sh")], args=["--coco"], stderr_path=tmp_path / "second.err")
        try:
            second.wait_ready(deadline_s=300)
            assert second.stderr().splitlines() == [f"coco-v1: using {target} (built earlier)"]
            assert http_call(f"{second.url}/ping", method="GET").json()["model"] == "coco-v1"
        finally:
            assert second.stop() == 0
        assert (target / "model.json").stat().st_mtime_ns == built
    finally:
        # 6 GB of venv with torch, and the caches: never left in pytest's kept tmp folders
        shutil.rmtree(project / ".venv", ignore_errors=True)
        shutil.rmtree(home / ".cache", ignore_errors=True)
