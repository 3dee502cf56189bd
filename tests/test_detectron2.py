"""detectron2 Mask R-CNN models: converted by build_engine.py --detectron2-config without
detectron2, served with detectron2's own results.

The reference is detectron2 itself (installed, else its vendored source: tests/
detectron2_reference.py): models built by detectron2 from its model-zoo configs, with seeded
weights whose scores spread over classes (tests/detectron2_models.py), saved in the zoo's .pkl
and a training run's .pth layouts, run through its DefaultPredictor on real photos.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

import detectron2_reference
from detectron2_models import detectron2_cfg, load_references, odd_photo
from helpers import ROOT, mask_iou, match_detections, photo, run_build_engine
from engine import Engine

torch = pytest.importorskip("torch")
detectron2_reference.load()  # these tests run in CI: no detectron2 is a failure, not a skip

CPU_BACKENDS = ["onnxruntime-cpu", "openvino"]
ZOO = "COCO-InstanceSegmentation"
# name -> (zoo config, overrides, weights layout, photos compared)
SUBJECTS = {
    "R50-FPN-3x": (f"{ZOO}/mask_rcnn_R_50_FPN_3x.yaml", {}, "pkl", ("astronaut", "coffee-333x517", "chelsea-tall")),
    # a custom class count and test sizes, RGB input with torchvision-style statistics, fewer detections
    "R101-FPN-custom": (f"{ZOO}/mask_rcnn_R_101_FPN_3x.yaml",
                        {"MODEL.ROI_HEADS.NUM_CLASSES": 7, "INPUT.MIN_SIZE_TEST": 600, "INPUT.MAX_SIZE_TEST": 1000,
                         "INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
                         "MODEL.PIXEL_STD": [58.395, 57.12, 57.375], "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.3,
                         "TEST.DETECTIONS_PER_IMAGE": 50},
                        "pth", ("astronaut", "coffee-333x517", "chelsea-tall")),
    "X101-32x8d-FPN": (f"{ZOO}/mask_rcnn_X_101_32x8d_FPN_3x.yaml", {}, "pth", ("astronaut",)),
}
CUSTOM_NAMES = ["pedestrian", "cyclist", "car", "bus", "truck", "dog", "cat"]


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    """name -> dict(cfg, config file, weights file, model dir, references per photo), each built,
    saved, converted and run through DefaultPredictor once per session, in a child process
    (tests/detectron2_models.py: this process never holds detectron2's models)."""
    cache = {}

    def get(name):
        if name in cache:
            return cache[name]
        config, overrides, layout, photos = SUBJECTS[name]
        folder = tmp_path_factory.mktemp(name)
        cfg = detectron2_cfg(config, **overrides)
        names = CUSTOM_NAMES if cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(CUSTOM_NAMES) else None
        spec = {"config": config, "overrides": overrides, "layout": layout, "photos": list(photos),
                "folder": str(folder), "class_names": names}
        (folder / "spec.json").write_text(json.dumps(spec))
        result = subprocess.run([sys.executable, str(ROOT / "tests" / "detectron2_models.py"), str(folder / "spec.json")],
                                capture_output=True, text=True, timeout=1200, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        cache[name] = {"cfg": cfg, "config": folder / "config.yaml", "weights": folder / f"model_final.{layout}",
                       "dir": folder / "model", "references": load_references(folder, photos), "folder": folder}
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_detectron2_models_match_detectron2(name, subjects):
    """>= 98% of detections matched (same class, box IoU >= 0.99) and mean mask IoU >= 0.98,
    on both CPU backends, against DefaultPredictor on the same weights and photos."""
    subject = subjects(name)
    cfg = subject["cfg"]
    for backend in CPU_BACKENDS:
        engine = Engine.load(subject["dir"], backend=backend, precision="fp32")
        matched = total = 0
        ious = []
        for key, ref in subject["references"].items():
            det = engine.predict(odd_photo(key), score_threshold=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
                                 max_detections=cfg.TEST.DETECTIONS_PER_IMAGE)
            ref = {**ref, "labels": ref["classes"] + 1}  # detectron2's classes are 0-based foreground
            pairs, _ = match_detections(ref, det)
            matched += len(pairs)
            total += max(len(ref["scores"]), len(det))
            ious += [mask_iou(ref["masks"][i], det.masks[j]) for i, j in pairs]
            for i, j in pairs:
                assert abs(float(ref["scores"][i]) - float(det.scores[j])) < 1e-4
        assert total > 30, f"{name}: too few detections to compare ({total})"
        assert matched / total >= 0.98, f"{name} on {backend}: {matched} of {total} matched"
        assert np.mean(ious) >= 0.98, f"{name} on {backend}: mean mask IoU {np.mean(ious):.4f}"


def test_class_names_and_model_json(subjects):
    """The custom model answers with the given names; model.json records the conventions."""
    subject = subjects("R101-FPN-custom")
    config = json.loads((subject["dir"] / "model.json").read_text())
    assert config["class_names"] == ["__background__"] + CUSTOM_NAMES
    assert config["arch"] == "detectron2_R_101_FPN" and config["weights"]["framework"] == "detectron2"
    # RGB, the default, is left out of model.json like every convention at its default
    assert config["transform"]["resize"] == "shortest_edge" and "channel_order" not in config["transform"]
    assert Engine.load(subject["dir"], backend="onnxruntime-cpu").config.transform.channel_order == "RGB"
    assert config["transform"]["min_size"] == 600 and config["transform"]["max_size"] == 1000
    assert config["box_head"]["background"] == "last" and config["box_head"]["aligned"] is True
    assert config["box_head"]["score_thresh"] == 0.3 and config["box_head"]["detections_per_img"] == 50
    assert config["mask_head"]["paste"] == "grid_sample" and config["mask_head"]["background_channel"] is False
    engine = Engine.load(subject["dir"], backend="onnxruntime-cpu")
    detections = engine.predict(photo("astronaut"), score_threshold=0.3)
    assert len(detections) and set(detections.labels) <= set(CUSTOM_NAMES)


def test_build_engine_cli_converts_a_zoo_pkl(subjects, tmp_path):
    """build_engine.py --detectron2-config on the zoo's config file itself (with its _BASE_
    chain) and a .pkl, no --class-names: classes named class_N, and the log says so; the
    same model directory as the Python conversion of the dumped config."""
    subject = subjects("R50-FPN-3x")
    zoo_config = detectron2_reference.configs_dir() / SUBJECTS["R50-FPN-3x"][0]
    result = run_build_engine("--detectron2-config", zoo_config, "--weights", subject["weights"], "--output",
                              tmp_path / "cli", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "class_1..class_80" in result.stderr
    config = json.loads((tmp_path / "cli" / "model.json").read_text())
    assert config["class_names"][:3] == ["__background__", "class_1", "class_2"] and len(config["class_names"]) == 81
    assert config["weights"]["layout"].startswith("detectron2 .pkl")
    python = json.loads((subject["dir"] / "model.json").read_text())
    for section in ("transform", "rpn", "box_head", "mask_head", "features"):
        assert config[section] == python[section], section
    image = odd_photo("chelsea-tall")
    a = Engine.load(tmp_path / "cli", backend="onnxruntime-cpu").predict(image, score_threshold=0.05)
    b = Engine.load(subject["dir"], backend="onnxruntime-cpu").predict(image, score_threshold=0.05)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.class_ids, b.class_ids)


def test_int8_conversion(subjects, tmp_path):
    """--int8 with --detectron2-config: INT8 graphs that load on both CPU backends and whose
    RPN logits follow the FP32 graph's (detection agreement on random weights says little:
    see docs/performance.md's INT8 figures for a trained model)."""
    import cv2

    subject = subjects("R50-FPN-3x")
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("motorcycle", "rocket"):
        cv2.imwrite(str(calib / f"{name}.jpg"), photo(name)[..., ::-1])
    (tmp_path / "names.txt").write_text("__background__\n" + "\n".join(f"thing{i}" for i in range(1, 81)) + "\n")
    result = run_build_engine("--detectron2-config", subject["config"], "--weights", subject["weights"], "--class-names",
                              tmp_path / "names.txt", "--int8", "--calib-images", calib, "--output", tmp_path / "int8",
                              timeout=900)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert config["quantization"]["precision"] == "int8" and config["class_names"][1] == "thing1"
    image = odd_photo("coffee-333x517")
    fp32 = Engine.load(subject["dir"], backend="onnxruntime-cpu", precision="fp32")
    tensor = fp32.transform(image).tensor
    reference = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in fp32.backend.run_dense(tensor).rpn_logits]
    for backend in CPU_BACKENDS:
        engine = Engine.load(tmp_path / "int8", backend=backend)
        assert len(engine.predict(image, score_threshold=0.05)) > 0
        logits = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in engine.backend.run_dense(tensor).rpn_logits]
        for a, b in zip(reference, logits):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9, f"{backend}: INT8 RPN logits do not follow FP32"


# --- errors: one line, the key named, no traceback ----------------------------------------------

def cli(capsys, *argv) -> subprocess.CompletedProcess:
    """build_engine.main in this process, for the failures that stop before any export (a
    child process costs seconds of importing torch): its exit code and stderr."""
    import build_engine

    capsys.readouterr()
    try:
        code = build_engine.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return subprocess.CompletedProcess(argv, code, "", capsys.readouterr().err)


def _one_line_error(result, *words):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


@pytest.mark.parametrize("config,key", [
    (f"{ZOO}/mask_rcnn_R_50_C4_3x.yaml", "MODEL.BACKBONE.NAME"),
    (f"{ZOO}/mask_rcnn_R_50_DC5_3x.yaml", "RES5_DILATION"),
    ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "MODEL.ROI_HEADS.NAME"),
    ("Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5.yaml", "DEFORM_ON_PER_STAGE"),
])
def test_unsupported_configs_are_one_clear_error(config, key, subjects, capsys):
    subject = subjects("R50-FPN-3x")
    result = cli(capsys, "--detectron2-config", detectron2_reference.configs_dir() / config, "--weights",
                   subject["weights"], "--output", subject["folder"] / "unsupported")
    _one_line_error(result, key)
    assert not (subject["folder"] / "unsupported").exists()


def test_weights_that_do_not_fit_list_detectron2_names(subjects, tmp_path):
    subject = subjects("R50-FPN-3x")
    config = detectron2_reference.configs_dir() / f"{ZOO}/mask_rcnn_R_101_FPN_3x.yaml"
    result = run_build_engine("--detectron2-config", config, "--weights", subject["weights"], "--output", tmp_path / "x",
                              timeout=900)
    _one_line_error(result, "missing", "backbone.bottom_up.res4.6.conv1.weight")


@pytest.mark.parametrize("name", ["R50-FPN-3x", "R101-FPN-custom"])
def test_the_weight_names_detectron2s_models_have_are_known(name, subjects):
    """exporter.detectron2's list of a config's weight names (which names the misfit messages)
    is exactly what detectron2's own model saved, and maps one to one onto the rebuilt model."""
    from exporter.detectron2 import build_model, detectron2_weight_names, read_detectron2_weights, torchvision_state_dict
    from exporter.detectron2_config import read_detectron2_config

    subject = subjects(name)
    cfg = read_detectron2_config(subject["config"])
    names = detectron2_weight_names(cfg)
    saved, _ = read_detectron2_weights(subject["weights"])
    assert sorted(names) == sorted(k for k in saved if not k.endswith("num_batches_tracked"))
    rebuilt = torchvision_state_dict(dict.fromkeys(names), cfg)
    assert len(rebuilt) == len(names) and set(rebuilt) == set(build_model(cfg).state_dict())


def test_class_names_must_match_num_classes(subjects, tmp_path, capsys):
    subject = subjects("R50-FPN-3x")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    result = cli(capsys, "--detectron2-config", subject["config"], "--weights", subject["weights"], "--class-names",
                   tmp_path / "names.txt", "--output", tmp_path / "x")
    _one_line_error(result, "3 classes", "NUM_CLASSES 80")


def test_a_pkl_that_pickles_code_is_refused(subjects, tmp_path, capsys):
    """A .pkl is read by an unpickler that builds numpy arrays and nothing else."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Payload()}, "__author__": "someone"}))
    subject = subjects("R50-FPN-3x")
    result = cli(capsys, "--detectron2-config", subject["config"], "--weights", path, "--output", tmp_path / "x")
    _one_line_error(result, "pickles io.open")
    assert not marker.exists()


def test_caffe2_backbone_pkl_is_named(subjects, tmp_path, capsys):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32),
                                             "conv1_w": np.zeros((64, 3, 7, 7), np.float32)}}))
    subject = subjects("R50-FPN-3x")
    result = cli(capsys, "--detectron2-config", subject["config"], "--weights", path, "--output", tmp_path / "x")
    _one_line_error(result, "Caffe2")


def test_flags_that_do_not_apply(subjects, tmp_path, capsys):
    subject = subjects("R50-FPN-3x")
    for extra in (["--backbone", "resnet50"], ["--min-size", "600"], ["--arch", "maskrcnn_resnet50_fpn"]):
        result = cli(capsys, "--detectron2-config", subject["config"], "--weights", subject["weights"], *extra,
                       "--output", tmp_path / "x")
        _one_line_error(result)
    result = cli(capsys, "--detectron2-config", subject["config"], "--weights", "random", "--output", tmp_path / "x")
    _one_line_error(result, ".pkl or .pth")


# --- the conventions, stage by stage, against detectron2's own functions -------------------------

@pytest.mark.parametrize("sizes,ratios,offset", [
    ([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], 0.0),
    ([[20, 40, 80], [40, 80, 160]], [[0.25, 1.0, 3.0]], 0.5),  # several sizes per level: the cell order
])
def test_anchors_are_detectron2s(sizes, ratios, offset):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.anchor_generator import build_anchor_generator

    from engine.anchors import level_anchors

    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = sizes, ratios
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = offset
    strides = [4 * 2 ** i for i in range(len(sizes))]
    generator = build_anchor_generator(cfg, [ShapeSpec(stride=s) for s in strides])
    grids = [(-(-608 // s), -(-800 // s)) for s in strides]
    features = [torch.zeros(1, 1, *g) for g in grids]
    reference = [a.tensor.numpy() for a in generator(features)]
    broadcast = ratios * len(sizes) if len(ratios) == 1 else ratios
    for level, (grid, stride) in enumerate(zip(grids, strides)):
        ours = level_anchors(grid, (608, 800), sizes[level], broadcast[level], "sizes_outer", False, offset, stride)
        assert np.array_equal(ours, reference[level]), f"level {level}"


def test_level_assignment_is_detectron2s():
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    from engine.roi_heads import assign_levels
    from engine.model_directory.config import RoIPoolConfig

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 800, (5000, 2)).astype(np.float32)
    sides = np.exp(rng.uniform(np.log(1), np.log(900), (5000, 2))).astype(np.float32)
    sides[:200] = (224 * 2.0 ** rng.integers(-3, 3, (200, 1))).astype(np.float32)  # exactly at the level boundaries
    boxes = np.concatenate([xy, xy + sides], axis=1)
    pool = RoIPoolConfig(featmap_names=("0", "1", "2", "3"), feature_indices=(0, 1, 2, 3),
                         scales=(0.25, 0.125, 0.0625, 0.03125), output_size=(7, 7), sampling_ratio=0,
                         canonical_scale=224, canonical_level=4, level_epsilon=1e-8, level_epsilon_in_log=True)
    reference = assign_boxes_to_levels([Boxes(torch.from_numpy(boxes))], 2, 5, 224, 4).numpy()
    assert np.array_equal(assign_levels(boxes, pool), reference)


# --- serve --model detectron2-...: the model zoo's COCO models, from a seeded cache ----------------

@pytest.mark.parametrize("name", [n for n, m in importlib.import_module("engine.model_directory.named").NAMED_MODELS.items()
                                  if m.framework == "detectron2"])
def test_zoo_named_models_are_the_zoo_configs(name, tmp_path):
    """The settings a named model is built with are what the zoo's own config file (with its
    _BASE_ chain) gives, and its weights URL is the zoo's."""
    import dataclasses

    from engine.model_directory.named import NAMED_MODELS
    from exporter.detectron2_config import read_detectron2_config

    model = NAMED_MODELS[name]
    written = tmp_path / "config.yaml"
    written.write_text(json.dumps(model.detectron2_config))
    ours, zoo = (dataclasses.replace(read_detectron2_config(path), source="", merged={})
                 for path in (written, detectron2_reference.configs_dir() / f"{model.zoo_config}.yaml"))
    assert ours == zoo
    # detectron2.model_zoo imports pkg_resources, which new setuptools lacks: read its URL table as text
    table = (Path(detectron2_reference.load().__file__).parent / "model_zoo" / "model_zoo.py").read_text()
    prefix, _, run = model.weights_url.partition(model.zoo_config + "/")
    assert prefix == "https://dl.fbaipublicfiles.com/detectron2/" and f'"{model.zoo_config}": "{run}"' in table


def test_zoo_named_model_builds_from_a_seeded_cache(subjects, tmp_path):
    """serve --model detectron2-r50-fpn-3x's first use, offline: the .pkl already in the cache's
    downloads/ (here the seeded R50 subject under the zoo's file name) is converted with COCO's
    class names; the directory gives the same results as converting it by hand; a second
    start reuses it."""
    import shutil

    from engine.model_directory.named import NAMED_MODELS
    from provision import ensure_named_model

    subject = subjects("R50-FPN-3x")
    model = NAMED_MODELS["detectron2-r50-fpn-3x"]
    environ = {**__import__("os").environ, "MASKRCNN_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache" / "downloads").mkdir(parents=True)
    shutil.copy(subject["weights"], tmp_path / "cache" / "downloads" / model.weights_file)
    said = []
    model_dir = ensure_named_model(model.name, environ=environ, say=said.append)
    assert model_dir == tmp_path / "cache" / "models" / model.name
    config = json.loads((model_dir / "model.json").read_text())
    assert config["name"] == model.name and config["class_names"][:3] == ["__background__", "person", "bicycle"]
    assert len(config["class_names"]) == 81 and "N/A" not in config["class_names"]
    image = odd_photo("chelsea-tall")
    ours = Engine.load(model_dir, backend="onnxruntime-cpu").predict(image, score_threshold=0.05)
    by_hand = Engine.load(subject["dir"], backend="onnxruntime-cpu").predict(image, score_threshold=0.05)
    assert np.array_equal(ours.boxes, by_hand.boxes) and np.array_equal(ours.class_ids, by_hand.class_ids)
    assert ensure_named_model(model.name, environ=environ, say=said.append) == model_dir
    assert "built earlier" in said[-1]


def test_readme_detectron2_recipe_end_to_end(subjects, tmp_path):
    """docs/models.md "Serving a detectron2 model", as written, on a training run's output folder:
    build_engine.py -> engine info -> serve --model-dir -> the seed's boto3 call answers with
    the class names given."""
    import shutil

    import requests

    from server_fixtures import encode_pil
    from harness.server import ServerProcess
    from test_readme_examples import readme_boto3_answer, run_readme_setup

    subject = subjects("R101-FPN-custom")
    (tmp_path / "output").mkdir()
    shutil.copy(subject["config"], tmp_path / "output" / "config.yaml")
    shutil.copy(subject["weights"], tmp_path / "output" / "model_final.pth")
    model_dir = run_readme_setup("## Serving a detectron2 model", tmp_path, "docs/models.md")
    assert json.loads((model_dir / "model.json").read_text())["class_names"][1:] == CUSTOM_NAMES
    server = ServerProcess(model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        ping = requests.get(f"{server.url}/ping", timeout=10).json()
        assert ping["model"] == "mine-d2" and ping["classes"] == CUSTOM_NAMES
        (tmp_path / "horse-guard.jpg").write_bytes(encode_pil(photo("astronaut"), "JPEG", quality=90))
        answer = readme_boto3_answer(server.url, tmp_path)
        assert answer["labels"] and {label.rsplit(" ", 1)[0] for label in answer["labels"]} <= set(CUSTOM_NAMES)
    finally:
        server.kill()
