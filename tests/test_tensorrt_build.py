"""exporter/tensorrt_build.py without a GPU: the writable copy of a read-only model directory, and
`build_engine.py --tensorrt` failing with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from engine.model_directory.directory import ModelDir, sha256_of
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


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_tensorrt_int8_calibration_without_gpu_fails_with_one_line_and_the_old_spelling_warns(tmp_path, capsys):
    """--tensorrt-int8-calibration is TensorRT's INT8 calibration (--int8 alone is QDQ graphs);
    `--int8 --tensorrt`, its old spelling, still gets there with one warning naming it."""
    import build_engine
    from exporter.tensorrt_build import environment_reason

    if environment_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the failure path is not reachable")
    output, photos = tmp_path / "t", str(tmp_path)
    assert build_engine.main(["--tensorrt", "--tensorrt-int8-calibration", "--calib-images", photos,
                              "--output", str(output)]) == 2
    (line,) = stderr_lines(capsys)
    assert line.startswith("error: --tensorrt needs TensorRT and an NVIDIA GPU: ")
    assert build_engine.main(["--tensorrt", "--int8", "--calib-images", photos, "--output", str(output)]) == 2
    warning, error = stderr_lines(capsys)
    assert warning == f"warning: {build_engine.OLD_TENSORRT_INT8}" and "--tensorrt-int8-calibration" in warning
    assert error == line
    assert not output.exists()


def test_tensorrt_precision_flags_reach_the_builder(tmp_path, capsys, monkeypatch):
    """What build_plans is asked for, with the GPU steps stubbed: --tensorrt-int8-calibration and
    its old spelling give int8 with the photos; no precision flag gives fp16. Without photos, or
    without --tensorrt, the flag is one line of refusal."""
    import build_engine
    import exporter.tensorrt_build as tensorrt_build

    asked = []
    monkeypatch.setattr(tensorrt_build, "environment_reason", lambda: None)
    monkeypatch.setattr(tensorrt_build, "writable_copy", lambda source, output: output)
    monkeypatch.setattr(tensorrt_build, "build_plans", lambda output, precision, calib_images=None, **kw:
                        asked.append((precision, calib_images)))
    common = ["--tensorrt", "--from-model-dir", str(DEMO), "--output", str(tmp_path / "t")]
    photos = tmp_path / "photos"
    for flags, precision in [(["--tensorrt-int8-calibration", "--calib-images", str(photos)], "int8"),
                             (["--int8", "--calib-images", str(photos)], "int8"),
                             (["--fp32"], "fp32"), ([], "fp16")]:
        asked.clear()
        assert build_engine.main(common + flags) == 0
        assert asked == [(precision, photos if precision == "int8" else None)], flags
        warned = stderr_lines(capsys)
        assert warned == ([f"warning: {build_engine.OLD_TENSORRT_INT8}"] if "--int8" in flags else [])
    asked.clear()
    assert build_engine.main(common + ["--tensorrt-int8-calibration"]) == 2
    assert stderr_lines(capsys) == ["error: --tensorrt-int8-calibration needs --calib-images DIR "
                                    "(photos like the ones you will serve)"]
    assert build_engine.main(["--tensorrt-int8-calibration", "--calib-images", str(photos),
                              "--output", str(tmp_path / "t")]) == 2
    assert "go with --tensorrt" in stderr_lines(capsys)[0]
    with pytest.raises(SystemExit):  # one precision: argparse refuses two
        build_engine.parse_args(["--tensorrt", "--fp16", "--tensorrt-int8-calibration", "--output", "x"])
    assert asked == []
