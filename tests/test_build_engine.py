"""build_engine.py as a user runs it: --help, the three weight sources, atomic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "build_engine.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env)


def test_help_lists_the_options():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--arch", "--weights", "--seed", "--output", "--class-names", "maskrcnn_resnet50_fpn_v2"):
        assert flag in result.stdout


def test_coco_weights_without_network_fail_with_one_clear_line(tmp_path):
    # an empty torch-hub cache, so torchvision must download (and cannot, offline)
    result = run_cli("--weights", "coco", "--output", tmp_path / "coco", env_extra={"TORCH_HOME": str(tmp_path / "hub")})
    if result.returncode == 0:
        pytest.skip("this machine could download the COCO weights; the offline failure path is not reachable")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # not torch.hub's "Downloading:" line nor a progress bar
    assert result.stdout == ""
    assert "--weights PATH" in lines[0] and "download.pytorch.org" in lines[0]
    assert not (tmp_path / "coco").exists()


def test_unreachable_reason_is_bounded_when_the_network_hangs(monkeypatch):
    import io
    import threading
    import urllib.request

    from exporter.weights import unreachable_reason

    release = threading.Event()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: release.wait(30) and io.BytesIO())  # DNS that never answers
    try:
        assert unreachable_reason("https://example.invalid/w.pth", timeout_s=0.2) == "no answer within 0.2 s"
    finally:
        release.set()


def test_coco_weights_in_the_torch_hub_cache_are_used_without_a_download(tmp_path, r50_models):
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    from helpers import DEAD_PROXY, save_published_layout

    url = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
    # torchvision's published layout, under its file name in the torch-hub cache
    save_published_layout(r50_models("maskrcnn_resnet50_fpn"), tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name)
    env = {"TORCH_HOME": str(tmp_path / "torch"), **DEAD_PROXY}  # any download attempt would fail
    result = run_cli("--weights", "coco", "--output", tmp_path / "coco", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "Downloading" not in result.stderr
    config = json.loads((tmp_path / "coco" / "model.json").read_text())
    assert config["weights"] == {"source": "torchvision-coco", "trained": True}
    assert config["arch"] == "maskrcnn_resnet50_fpn" and len(config["class_names"]) == 91


def test_random_weights_build_a_loadable_untrained_model(tmp_path):
    out = tmp_path / "random-v1"
    result = run_cli("--weights", "random", "--seed", "3", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "[1/3]" in result.stderr  # progress for the slow steps
    config = json.loads((out / "model.json").read_text())
    assert config["weights"] == {"source": "random", "seed": 3, "trained": False}
    assert config["arch"] == "maskrcnn_resnet50_fpn" and len(config["class_names"]) == 91
    assert config["class_names"][0] == "__background__" and "N/A" in config["class_names"]
    assert config["class_names"][1] == "person"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random-v1"]  # no staging leftovers
    again = run_cli("--weights", "random", "--output", out)
    assert again.returncode != 0 and "exists" in again.stderr


def test_state_dict_file_published_layout_loads_and_bad_keys_are_listed(tmp_path, r50_models):
    import torch

    from helpers import published_state_dict

    state = published_state_dict(r50_models("maskrcnn_resnet50_fpn"))
    good = tmp_path / "good.pth"
    torch.save(state, good)
    result = run_cli("--weights", good, "--output", tmp_path / "from-file")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "from-file" / "model.json").read_text())
    assert config["weights"]["source"] == "file" and len(config["weights"]["sha256"]) == 64

    state["roi_heads.extra.weight"] = torch.zeros(1)
    del state["rpn.head.conv.0.0.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    result = run_cli("--weights", bad, "--output", tmp_path / "bad-model")
    assert result.returncode != 0
    assert "rpn.head.conv.0.0.weight" in result.stderr and "roi_heads.extra.weight" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "bad-model").exists()
    missing = run_cli("--weights", tmp_path / "nope.pth", "--output", tmp_path / "x")
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_failed_export_leaves_no_directory(tmp_path, small_model, monkeypatch):
    import importlib

    export_module = importlib.import_module("exporter.export")  # the package re-exports a function of that name

    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second graph")
        return original(*args, **kwargs)

    original = export_module._export_graph
    monkeypatch.setattr(export_module, "_export_graph", failing)
    from helpers import SMALL_CLASSES

    with pytest.raises(RuntimeError, match="simulated"):
        export_module.export(small_model, tmp_path / "model", SMALL_CLASSES, quiet=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="class names"):
        export_module.export(small_model, tmp_path / "model", ["a", "b"], quiet=True)


def test_int8_needs_calibration_images():
    result = run_cli("--weights", "random", "--int8", "--output", "/tmp/never-written")
    assert result.returncode == 2 and "--calib-images" in result.stderr


def test_int8_export_quantizes_every_graph_and_still_segments(tmp_path, small_model, monkeypatch):
    import cv2
    import onnx

    from helpers import SMALL_CLASSES, photo
    from engine import Engine
    from exporter.quantize import export_int8, load_calibration_images

    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        cv2.imwrite(str(calib / f"{name}.png"), photo(name)[..., ::-1])
    out = export_int8(small_model, tmp_path / "int8", SMALL_CLASSES, load_calibration_images(calib), quiet=True)
    config = json.loads((out / "model.json").read_text())
    assert config["quantization"]["precision"] == "int8" and config["name"] == "int8"
    for graph in ("dense", "box_head", "mask_head"):
        nodes = onnx.load(str(out / f"{graph}.onnx")).graph.node
        ops = {n.op_type for n in nodes}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, graph
        # shapes are read from the quantized maps, not from a dequantized copy made for it
        dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
        assert not [n.name for n in nodes if n.op_type == "Shape" and n.input[0] in dequantized], graph
        # every quantized op must reach ONNX Runtime's integer kernels (QLinearConv, QGemm):
        # a float Conv left after its QDQ fusions runs at FP32 speed between Q/DQ pairs.
        # Only the heads' output layers stay float, on purpose (model.json lists them).
        kept = set(config["quantization"]["fp32_layers"][graph])
        assert kept and all("pred" in n or "logits" in n for n in kept), kept
        assert set(float_ops_after_fusion(out / f"{graph}.onnx", tmp_path / f"{graph}.fused.onnx")) == kept, graph
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".fused.onnx")) == ["calib", "int8"]
    # 7-bit weights by default: no U8 x S8 pair overflows an int16 on any CPU (engine.int8_arithmetic)
    assert config["quantization"]["weight_bits"] == 7
    weights = [onnx.numpy_helper.to_array(t) for graph in ("dense", "box_head", "mask_head")
               for t in onnx.load(str(out / f"{graph}.onnx")).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) == 64
    eight_bit = export_int8(small_model, tmp_path / "int8-w8", SMALL_CLASSES, load_calibration_images(calib),
                            quiet=True, weight_bits=8)
    assert json.loads((eight_bit / "model.json").read_text())["quantization"]["weight_bits"] == 8
    assert_box_head_arrangements_agree_with_and_without_vnni(out, eight_bit)
    for backend in ("onnxruntime-cpu", "openvino"):  # both CPU backends run the INT8 graphs as INT8
        engine = Engine.load(out, backend=backend)
        assert "int8" in engine.precision, (backend, engine.precision)
        if backend == "openvino":  # QUANTIZED_PLANS: INT8 with FP32 between, even on a BF16 CPU
            from engine.backends.openvino_plans import GRAPH_POOLING_QUANTIZED_PLANS, QUANTIZED_PLANS

            native = engine.backend.pooling == "native"
            assert engine.backend.plan == (QUANTIZED_PLANS if native else GRAPH_POOLING_QUANTIZED_PLANS)["fp32"]
            assert engine.backend.precisions["mask_head"] == "fp32+int8"
            if native:
                assert_native_int8_box_head(out, monkeypatch)
        det = engine.predict(photo("motorcycle"), score_threshold=0.05)
        assert len(det) > 0 and det.masks.shape[1:] == photo("motorcycle").shape[:2]


def assert_native_int8_box_head(model_dir, monkeypatch):
    """With the native RoIAlign the INT8 box head runs on OpenVINO too, fc6's weight columns
    permuted for channels-last features (the same outputs as the plain cut graph) and its
    input quantized to uint8 by the pooling instead of the graph's FakeQuantize. That
    rounding differs from OpenVINO's by 1 on about one value in 100,000 (a few RoIs of 1000),
    and random weights make those rows move; the rest must be the same. The dense graph's
    maps come out NCHW and are transposed natively: the same detections as OpenVINO's own
    NHWC outputs."""
    from helpers import assert_same_box_head, box_head_variants, photo

    out = box_head_variants(model_dir, monkeypatch, {"quantized": (), "permuted": ("quantized_input_head",),
                                                      "plain": ("channels_last_head",)})
    backend = out["quantized", "backend"]
    assert backend.precisions["box_head"] == "fp32+int8"
    assert backend.transpose_features  # the INT8 dense graph writes NCHW; the native code transposes
    assert backend.channels_last["box_head"] and backend.quantize["box_head"] is not None
    assert out["permuted", "backend"].quantize["box_head"] is None
    assert_same_box_head(out["permuted"], out["plain"])
    (probs, deltas), (float_probs, float_deltas) = out["quantized"], out["permuted"]
    same = np.all(np.abs(probs - float_probs) <= 1e-5, axis=1) & np.all(np.abs(deltas - float_deltas) <= 1e-4, axis=1)
    assert same.mean() >= 0.97, same.mean()
    assert (probs.argmax(1) == float_probs.argmax(1)).mean() >= 0.99

    # the same detections as with OpenVINO writing the maps NHWC itself (as for float graphs)
    from engine import Engine
    from engine.backends.openvino_cpu import OpenVinoCpuBackend

    class OpenVinoWritesNhwc(OpenVinoCpuBackend):
        transpose_features = property(lambda self: False, lambda self, value: None)

    transposed = Engine.load(model_dir, backend="openvino")
    written = Engine(transposed.model_dir, OpenVinoWritesNhwc(transposed.model_dir))
    for name in ("coffee", "astronaut"):
        a, b = (e.predict(photo(name), score_threshold=0.05) for e in (transposed, written))
        assert len(a) == len(b) > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def assert_box_head_arrangements_agree_with_and_without_vnni(seven_bit, eight_bit):
    """tests/int8_box_heads.py on both directories, on this CPU and on oneDNN limited to AVX2
    (no VNNI: U8 x S8 pair sums saturate at int16, as on AVX2-only CPUs). The tolerance is the
    same everywhere, FP32 rounding between the permuted and the plain box head, because the
    backend requantizes 8-bit weights to 7 bits where products saturate; without that the
    8-bit directory's arrangements differed by up to 0.97 in a class probability there."""
    import subprocess
    import sys

    from test_int8_arithmetic import AVX2_ONLY, exact_here

    script = Path(__file__).resolve().parent / "int8_box_heads.py"
    for env_extra, saturates in (({}, not exact_here("openvino")), (AVX2_ONLY, True)):
        result = subprocess.run([sys.executable, str(script), str(seven_bit), str(eight_bit)], capture_output=True,
                                text=True, env={**os.environ, **env_extra}, timeout=600)
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert result.returncode == 0 and len(rows) == 2, (env_extra, result.stdout, result.stderr[-2000:])
        assert [row["saturates"] for row in rows] == [saturates, saturates], (env_extra, rows)
        assert rows[0]["requantized"] == 0, rows  # 7-bit weights: nothing to requantize
        assert (rows[1]["requantized"] > 0) is saturates, rows
        assert rows[1]["int8_weights"].endswith("requantized to 7 bits at load") is saturates, rows
        assert rows[0]["int8_weights"] == ("INT8 products saturate here; the weights are 7-bit: exact" if saturates
                                           else "INT8 exact here"), rows
        # `python -m engine backends` says what the openvino backend does with the 8-bit weights
        listing = subprocess.run([sys.executable, "-m", "engine", "backends", "--model-dir", str(eight_bit)],
                                 capture_output=True, text=True, env={**os.environ, **env_extra}, cwd=ROOT, timeout=300)
        assert listing.returncode == 0, listing.stderr
        assert f"{eight_bit}: INT8, 8-bit weights" in listing.stdout
        assert ("INT8 on openvino: U8 x S8 products saturate here" in listing.stdout) is saturates, listing.stdout
        assert ("openvino: requantizes them to 7 bits at load" in listing.stdout) is saturates, listing.stdout


def float_ops_after_fusion(graph_path, fused_path) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that ONNX Runtime still runs in float after its
    QDQ fusions (ORT_ENABLE_EXTENDED: the fusions, without hardware-specific layouts)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(fused_path)
    ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(fused_path)).graph.node
    return [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul") and n.domain in ("", "ai.onnx")]


def test_private_initializers_keep_the_graph_and_drop_shared_identities(tmp_path, small_model_dir):
    """torch.onnx.export reads equal initializers (the all-zero biases of a fresh model)
    through Identity nodes; the quantizer needs each as its own initializer."""
    import onnx
    import onnxruntime as ort

    from helpers import photo
    from engine.preprocess import preprocess
    from exporter.quantize import materialize_shared_initializers

    source = small_model_dir / "dense.onnx"
    graph = onnx.load(str(source)).graph
    initializers = {i.name for i in graph.initializer}
    shared = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    assert shared, "the fixture no longer has shared initializers; this test would prove nothing"
    copies = materialize_shared_initializers(source, tmp_path / "private.onnx")
    result = onnx.load(str(tmp_path / "private.onnx")).graph
    assert copies >= len(shared)
    assert not [n for n in result.node if n.op_type == "Identity" and n.input[0] in {i.name for i in result.initializer}]
    config = json.loads((small_model_dir / "model.json").read_text())["transform"]
    image = preprocess(photo("coffee"), config["image_mean"], config["image_std"], config["min_size"],
                       config["max_size"], config["size_divisible"]).tensor
    before = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"images": image})
    after = ort.InferenceSession(str(tmp_path / "private.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": image})
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_resize_rule_reaches_model_json(tmp_path):
    from helpers import SMALL_CLASSES, build_small_maskrcnn
    from exporter import export
    from exporter.weights import set_resize_rule

    model = set_resize_rule(build_small_maskrcnn(), 160)  # 320/480 scaled alike
    config = json.loads((export(model, tmp_path / "m", SMALL_CLASSES, quiet=True) / "model.json").read_text())
    assert (config["transform"]["min_size"], config["transform"]["max_size"]) == (160, 240)
    assert set_resize_rule(model, 200, 500).transform.max_size == 500
