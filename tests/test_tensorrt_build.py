"""exporter/tensorrt_build.py without a GPU: the writable copy of a read-only model directory, and
`build_engine.py --tensorrt` failing with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from engine.model_dir import ModelDir, sha256_of
from helpers import DEMO, ROOT


def test_writable_copy_links_the_graphs_and_follows_a_new_model(tmp_path):
    from exporter.tensorrt_build import writable_copy

    source = tmp_path / "ro"
    shutil.copytree(DEMO, source)
    copy = writable_copy(source, tmp_path / "cache")
    assert (copy / "dense.onnx").is_symlink() and not (copy / "model.json").is_symlink()
    assert ModelDir.open(copy).config.graphs == ModelDir.open(source).config.graphs
    (copy / "marker").write_text("plans would be here")
    assert (writable_copy(source, copy) / "marker").exists()  # same graphs: kept
    config = json.loads((source / "model.json").read_text())
    config["graphs"]["dense"]["sha256"] = sha256_of(source / "box_head.onnx")
    shutil.copyfile(source / "box_head.onnx", source / "dense.onnx")
    (source / "model.json").write_text(json.dumps(config))
    assert not (writable_copy(source, copy) / "marker").exists()  # another model: rebuilt


def test_build_engine_tensorrt_without_gpu_fails_with_one_line(tmp_path):
    from exporter.tensorrt_build import environment_reason

    if environment_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the failure path is not reachable")
    for extra in ([], ["--from-model-dir", str(DEMO)], ["--fp32"]):
        result = subprocess.run([sys.executable, "build_engine.py", "--tensorrt", *extra, "--output", str(tmp_path / "t")],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --tensorrt needs TensorRT and an NVIDIA GPU: "), result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "t").exists()
    result = subprocess.run([sys.executable, "build_engine.py", "--fp16", "--output", str(tmp_path / "t")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "go with --tensorrt" in result.stderr
