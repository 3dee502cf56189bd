"""engine/backends/openvino_cpu.py (with openvino_graphs.py and openvino_plans.py): OpenVINO on the
CPU, alone or with its heads on ONNX Runtime.

The default FP32 configuration (every graph on OpenVINO, the heads cut after their RoiAlign
and fed by the native RoIAlign) runs the whole parity suite in test_parity.py; here: the
configurations without the native RoIAlign (pooling="graph": the heads' own RoiAlign, on
OpenVINO or on ONNX Runtime) against torchvision, precision read back from the compiled
graphs, the default precision (BF16 where the CPU has it, and its accuracy on the demo
model; a clear error for bf16 where it does not), concurrent calls, and the surfaces that
report backend and precision.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import Engine
from engine.backends import backend_precisions, default_precision
from engine.errors import BackendUnavailableError, ModelDirError
from helpers import assert_same_box_head, box_head_variants, photo, torchvision_predict
from test_parity import assert_parity

openvino = pytest.importorskip("openvino")
from engine import roi_align  # noqa: E402
from engine.backends.openvino_cpu import OpenVinoCpuBackend, cpu_precisions  # noqa: E402
from engine.backends.openvino_graphs import channels_last_head, pooled_head  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
def all_openvino(precision: str) -> dict:
    return {graph: ("openvino", precision) for graph in ("dense", "box_head", "mask_head")}


def all_openvino_engine(model_dir, precision: str = "fp32", pooling: str | None = None) -> Engine:
    engine = Engine.load(model_dir, backend="onnxruntime-cpu")
    engine.backend = OpenVinoCpuBackend(engine.model_dir, precision=precision, plan=all_openvino(precision),
                                        pooling=pooling)
    return engine


def graph_pooling_engine(model_dir, precision: str = "fp32") -> Engine:
    """The backend as it runs without the native RoIAlign: GRAPH_POOLING_PLANS."""
    engine = Engine.load(model_dir, backend="onnxruntime-cpu")
    engine.backend = OpenVinoCpuBackend(engine.model_dir, precision=precision, pooling="graph")
    return engine


def runtimes(engine) -> dict:
    return {g: engine.backend.runtime_of(g) for g in ("dense", "box_head", "mask_head")}


def test_every_graph_runs_on_openvino_with_the_native_roi_align(small_model_dir):
    engine = Engine.load(small_model_dir, backend="openvino", precision="fp32")
    assert engine.backend_name == "openvino" and engine.precision == "fp32"
    assert engine.backend.pooling == ("native" if roi_align.available() else "graph")
    if engine.backend.pooling == "native":
        assert set(runtimes(engine).values()) == {"openvino"}
    # read back from the compiled graphs: their convolutions and matrix products run in FP32
    assert set(engine.backend.precisions.values()) == {"fp32"}


def test_without_the_native_roi_align_the_heads_run_on_onnxruntime(small_model_dir):
    engine = graph_pooling_engine(small_model_dir)
    assert runtimes(engine) == {"dense": "openvino", "box_head": "onnxruntime", "mask_head": "onnxruntime"}
    assert engine.precision == "fp32"


def test_default_precision_is_bf16_where_the_cpu_has_it(small_model_dir):
    bf16 = "bf16" in cpu_precisions()
    assert default_precision("openvino") == ("bf16" if bf16 else "fp32") and default_precision("onnxruntime-cpu") == "fp32"
    for backend in ("openvino", "auto"):
        engine = Engine.load(small_model_dir, backend=backend)
        assert engine.backend_name == "openvino"
        # read back from the compiled graphs (PLANS): every graph BF16 under the native
        # RoIAlign; without it only the dense graph, the heads FP32 on ONNX Runtime
        if not bf16:
            assert set(engine.backend.precisions.values()) == {"fp32"}
        elif engine.backend.pooling == "native":
            assert set(engine.backend.precisions.values()) == {"bf16"} and engine.precision == "bf16"
    if bf16:
        engine = graph_pooling_engine(small_model_dir, "bf16")
        assert engine.backend.precisions == {"dense": "bf16", "box_head": "fp32", "mask_head": "fp32"}
        assert engine.precision == "bf16+fp32"


@pytest.mark.parametrize("name,threshold", [("astronaut", 0.5), ("coffee", 0.05), ("chelsea", 0.3)])
def test_graph_pooling_on_openvino_matches_torchvision_on_the_small_model(name, threshold, small_model, small_model_dir):
    """Every graph on OpenVINO with the heads' own RoiAlign (no native RoIAlign)."""
    engine = all_openvino_engine(small_model_dir, pooling="graph")
    assert set(engine.backend.precisions.values()) == {"fp32"}
    image = photo(name)
    assert_parity(torchvision_predict(small_model, image, threshold), engine.predict(image, score_threshold=threshold), image.shape)


def test_graph_pooling_plan_matches_torchvision_on_the_small_model(small_model, small_model_dir):
    """What the backend runs where the native RoIAlign was not built: heads on ONNX Runtime."""
    engine = graph_pooling_engine(small_model_dir)
    image = photo("coffee")
    assert_parity(torchvision_predict(small_model, image, 0.05), engine.predict(image, score_threshold=0.05), image.shape)


def test_graph_pooling_on_openvino_matches_torchvision_on_r50(r50_models, r50_model_dirs):
    arch = "maskrcnn_resnet50_fpn"
    engine = all_openvino_engine(r50_model_dirs(arch), pooling="graph")
    image = photo("astronaut")
    ref = torchvision_predict(r50_models(arch), image, 0.5)
    det = engine.predict(image, score_threshold=0.5)
    assert len(det) > 5
    assert_parity(ref, det, image.shape)


def test_bf16_where_the_cpu_has_it_else_a_clear_error(small_model_dir):
    listed = backend_precisions("openvino")
    assert listed == cpu_precisions() and listed[0] == "fp32"
    if "bf16" not in listed:
        with pytest.raises(BackendUnavailableError, match="no BF16 instructions"):
            Engine.load(small_model_dir, backend="openvino", precision="bf16")
        with pytest.raises(BackendUnavailableError, match="no BF16 instructions"):
            Engine.load(small_model_dir, backend="auto", precision="bf16")
        return
    engine = all_openvino_engine(small_model_dir, "bf16")
    # read back, not assumed: every graph compiled for BF16 runs its convolutions in BF16
    assert set(engine.backend.precisions.values()) == {"bf16"}
    fp32 = all_openvino_engine(small_model_dir).predict(photo("coffee"), score_threshold=0.3)
    bf16 = engine.predict(photo("coffee"), score_threshold=0.3)
    assert abs(len(bf16) - len(fp32)) <= max(2, len(fp32) // 10)


def test_default_bf16_meets_the_accuracy_criteria_on_the_demo_model(demo_model_dir):
    """The BF16 default's accuracy criteria, on 60 held-out scenes not in benchmarks/backend_accuracy.py's
    300: >= 97% of FP32 detections (score >= 0.5) returned with the same class and box IoU
    >= 0.9, box AP and mask AP within 0.01 of ONNX Runtime FP32."""
    if "bf16" not in cpu_precisions():
        pytest.skip("this CPU has no BF16 instructions (test_bf16_where_the_cpu_has_it_else_a_clear_error "
                    "checks the error)")
    pytest.importorskip("pycocotools")
    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from harness.agreement import engine_agreement

    scenes = held_out_scenes(60, start=3_000_000)
    fp32 = Engine.load(demo_model_dir, backend="onnxruntime-cpu")
    bf16 = Engine.load(demo_model_dir)  # auto: openvino at its default precision here
    assert "bf16" in bf16.precision
    matched, total = engine_agreement(fp32, bf16, [scene.image for scene in scenes])
    assert total > 100 and matched >= 0.97 * total, (matched, total)
    reference, measured = (evaluate(engine_predictor(e), scenes) for e in (fp32, bf16))
    for kind in ("bbox", "segm"):
        assert abs(measured[kind]["AP"] - reference[kind]["AP"]) <= 0.01, (kind, measured[kind], reference[kind])


def test_precision_is_refused_on_backends_that_do_not_run_it(small_model_dir):
    with pytest.raises(BackendUnavailableError, match="needs the openvino backend"):
        Engine.load(small_model_dir, backend="onnxruntime-cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Engine.load(small_model_dir, backend="openvino", precision="fp16")


def test_a_plan_names_known_graphs_runtimes_and_precisions(small_model_dir):
    from engine.model_directory.directory import ModelDir

    directory = ModelDir.open(small_model_dir)
    for plan, words in [({"box_head": ("onnxruntime", "bf16")}, "onnxruntime: fp32"),
                        ({"mask_head": ("tensorrt", "fp32")}, "runtimes openvino, onnxruntime"),
                        ({"dense": ("onnxruntime", "fp32")}, "backend onnxruntime-cpu")]:
        with pytest.raises(ValueError, match=words):
            OpenVinoCpuBackend(directory, plan=plan, pooling="graph")
    if roi_align.available():
        with pytest.raises(ValueError, match="under pooling native every graph runs on openvino"):
            OpenVinoCpuBackend(directory, plan={"box_head": ("onnxruntime", "fp32")}, pooling="native")
    with pytest.raises(ValueError, match="pooling must be one of"):
        OpenVinoCpuBackend(directory, pooling="torch")


def test_a_head_graph_is_cut_at_its_pooled_features(small_model_dir):
    """pooled_head drops the RoiAlign nodes and their inputs: the cut box head takes only
    "pooled"; the mask head keeps class_ids; a graph without RoiAlign is refused by name."""
    core = openvino.Core()
    box_graph = core.read_model(str(small_model_dir / "box_head.onnx"))
    channels = box_graph.input("feature_0").get_partial_shape()[1].get_length()
    box = pooled_head(box_graph, (None, channels, 7, 7))
    assert [p.get_friendly_name() for p in box.get_parameters()] == ["pooled"]
    assert not [op for op in box.get_ordered_ops() if op.get_type_name() == "ROIAlign"]
    mask = pooled_head(core.read_model(str(small_model_dir / "mask_head.onnx")), (None, channels, 14, 14))
    assert sorted(p.get_friendly_name() for p in mask.get_parameters()) == ["class_ids", "pooled"]
    with pytest.raises(ModelDirError, match="no ROIAlign node"):
        pooled_head(core.read_model(str(small_model_dir / "dense.onnx")), (None, channels, 7, 7))


def test_concurrent_predicts_each_get_their_own_infer_request(small_model_dir):
    """Feature maps are views of the dense request's output tensors until release: two
    calls at once must not see each other's (each takes a request from the pool)."""
    engine = Engine.load(small_model_dir, backend="openvino", threads=1)
    images = [photo("astronaut"), photo("coffee")]
    alone = [engine.predict(image, score_threshold=0.05) for image in images]
    results = {}

    def run(i):
        for _ in range(3):
            results.setdefault(i, []).append(engine.predict(images[i], score_threshold=0.05))

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(alone):
        for det in results[i]:
            assert len(det) == len(expected)
            np.testing.assert_allclose(det.boxes, expected.boxes, atol=1e-4)
            np.testing.assert_allclose(det.scores, expected.scores, atol=1e-5)


def test_cli_lists_openvino_with_its_precisions_and_predicts_with_it(demo_model_dir, tmp_path):
    import cv2
    from skimage import data

    listing = subprocess.run([sys.executable, "-m", "engine", "backends"], cwd=ROOT, capture_output=True, text=True)
    line = next(line for line in listing.stdout.splitlines() if line.startswith("openvino"))
    assert f"available ({', '.join(cpu_precisions())})" in line
    assert ("RoIAlign native" if roi_align.available() else "RoIAlign in the head graphs") in line
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), data.astronaut()[..., ::-1])
    out = subprocess.run([sys.executable, "-m", "engine", "predict", "--model-dir", str(demo_model_dir),
                          "--backend", "openvino", "--precision", "fp32", "--json", str(image)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) >= {"labels", "boxes", "scores"}



@pytest.mark.skipif(not roi_align.available(), reason="the native RoIAlign is not built")
def test_the_box_head_takes_channels_last_features_with_its_weights_permuted(small_model_dir, monkeypatch):
    out = box_head_variants(small_model_dir, monkeypatch, {"permuted": (), "plain": ("channels_last_head",)})
    assert out["permuted", "backend"].channels_last == {"box_head": True, "mask_head": False}
    assert out["plain", "backend"].channels_last == {"box_head": False, "mask_head": False}
    assert out["permuted", "backend"].quantize == {"box_head": None, "mask_head": None}  # an FP32 directory
    assert_same_box_head(out["permuted"], out["plain"])


def test_channels_last_head_leaves_graphs_it_cannot_permute_alone(small_model_dir):
    """The mask head's pooled features go into convolutions: no flatten, no permutation."""
    core = openvino.Core()
    mask = core.read_model(str(small_model_dir / "mask_head.onnx"))
    channels = mask.input("feature_0").get_partial_shape()[1].get_length()
    assert channels_last_head(pooled_head(mask, (None, channels, 14, 14))) is None
