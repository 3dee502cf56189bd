"""Bring your own torchvision Mask R-CNN: checkpoint layouts as users save them, the
configuration a state_dict does not carry (--backbone, --model-kwargs), and the engine's
parity with torchvision for models beyond the two presets, on both CPU backends."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, mask_iou, match_detections, photo, resized_photo, run_build_engine, torchvision_predict
from engine import Engine

torch = pytest.importorskip("torch")

CPU_BACKENDS = ["onnxruntime-cpu", "openvino"]
TUTORIAL_CLASSES = ["__background__", "pedestrian", "cyclist"]


def tutorial_model(seed: int = 0):
    """torchvision's fine-tuning tutorial's model surgery on maskrcnn_resnet50_fpn, 3 classes,
    hidden layer 256, with seeded weights whose scores spread (the tutorial starts from COCO)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from exporter.weights import random_model, spread_class_scores

    model = random_model("maskrcnn_resnet50_fpn", seed)
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, len(TUTORIAL_CLASSES))
    in_features_mask = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_features_mask, 256, len(TUTORIAL_CLASSES))
    with torch.no_grad():
        spread_class_scores(model.eval(), torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """(model, folder with its checkpoints in every layout)."""
    from safetensors.torch import save_file

    model = tutorial_model()
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("checkpoints")
    args = argparse.Namespace(data_path="/data/PennFudanPed", model="maskrcnn_resnet50_fpn", lr=0.02, epochs=10)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"milestones": {16: 1}},
                "args": args, "epoch": 9}, folder / "train_py.pth")  # references/detection/train.py
    torch.save(state, folder / "plain.pth")
    torch.save({"module." + k: v for k, v in state.items()}, folder / "ddp.pth")
    torch.save({"_orig_mod." + k: v for k, v in state.items()}, folder / "compiled.pth")
    torch.save({"state_dict": {**{"model." + k: v for k, v in state.items()}, "criterion.weight": torch.ones(1)},
                "hyper_parameters": {"lr": 0.02}, "pytorch-lightning_version": "2.4.0", "epoch": 3}, folder / "lightning.ckpt")
    torch.save({"model": {k: torch.zeros_like(v) for k, v in state.items()},
                "model_ema": {"module." + k: v for k, v in state.items()}}, folder / "ema.pth")
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}}, folder / "model_state_dict.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "weights.safetensors"))
    torch.save(model, folder / "whole.pth")
    (folder / "names.txt").write_text("\n".join(TUTORIAL_CLASSES) + "\n")
    return model, folder


@pytest.mark.parametrize("file,key", [("train_py.pth", None), ("plain.pth", None), ("ddp.pth", None),
                                      ("compiled.pth", None), ("lightning.ckpt", None), ("ema.pth", "model_ema"),
                                      ("model_state_dict.pth", None), ("weights.safetensors", None)])
def test_every_checkpoint_layout_loads_the_same_weights(tutorial, file, key):
    from exporter.weights import file_model

    model, folder = tutorial
    loaded, checkpoint = file_model("maskrcnn_resnet50_fpn", folder / file, weights_key=key)
    assert loaded.roi_heads.box_predictor.cls_score.out_features == 3
    expected = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name]), f"{file}: {name} differs ({checkpoint.layout})"


def test_several_models_in_one_file_need_a_key(tutorial, tmp_path):
    from exporter.checkpoints import CheckpointError, read_checkpoint

    model, _ = tutorial
    state = model.state_dict()
    both = tmp_path / "both.pth"
    torch.save({**{"model." + k: v for k, v in state.items()}, **{"ema." + k: v for k, v in state.items()}}, both)
    with pytest.raises(CheckpointError, match="--weights-key"):
        read_checkpoint(both)
    assert set(read_checkpoint(both, weights_key="ema").state_dict) == set(state)


def test_unknown_pickled_classes_never_run(tmp_path, tutorial):
    """A class the safe loader does not know is never imported or constructed: the weights
    beside it still load."""
    from exporter.checkpoints import read_checkpoint

    model, _ = tutorial
    marker = tmp_path / "ran"
    path = tmp_path / "odd.pth"
    payload = {"model": model.state_dict(), "callback": _Dangerous(str(marker))}
    torch.save(payload, path)
    checkpoint = read_checkpoint(path)
    assert not marker.exists() and len(checkpoint.state_dict) == len(model.state_dict())


class _Dangerous:
    """Pickles as a call to os.system-like code: touching a file would prove it ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_whole_pickled_model_needs_trust_pickle(tutorial, tmp_path):
    _, folder = tutorial
    refused = run_build_engine("--weights", folder / "whole.pth", "--class-names", folder / "names.txt",
                               "--output", tmp_path / "m")
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "whole pickled model" in lines[0] and "MaskRCNN" in lines[0] and "--trust-pickle" in lines[0]
    assert not (tmp_path / "m").exists()
    assert "UNSAFE" in run_build_engine("--help").stdout


@pytest.mark.parametrize("kwargs,message", [
    ('{"box_score_thresh": "high"}', "box_score_thresh must be a number"),
    ('{"box_detections_per_img": 2.5}', "box_detections_per_img must be a positive integer"),
    ('{"rpn_anchor_generator": {"sizes": [[32], [64]], "aspect_ratios": [[1], [0.5, 1]]}}', "same number of anchors"),
    ('{"box_roi_pool": {"featmap_names": [0], "output_size": 7, "sampling_ratio": 2}}', "featmap_names"),
    ('{"num_classes": 3}', "--class-names"),
    ('{"min_sise": 480}', "min_sise is not a MaskRCNN argument"),
    ("[1, 2]", "neither a JSON object nor a file"),
])
def test_model_kwargs_errors_name_the_key(kwargs, message):
    from exporter.model_kwargs import parse_model_kwargs

    with pytest.raises(ValueError, match=message):
        parse_model_kwargs(kwargs)


# MobileNetV3-Large FPN as torchvision's fasterrcnn_mobilenet_v3_large_fpn lays it out (5 anchor
# sizes on each of its 3 maps), RoI pooling on maps "0" and "1" only, short side 480.
MOBILENET_KWARGS = {"min_size": 480, "rpn_anchor_generator": {"sizes": [[32, 64, 128, 256, 512]] * 3,
                                                              "aspect_ratios": [[0.5, 1.0, 2.0]] * 3},
                    "box_roi_pool": {"featmap_names": ["0", "1"], "output_size": 7, "sampling_ratio": 2},
                    "mask_roi_pool": {"featmap_names": ["0", "1"], "output_size": 14, "sampling_ratio": 2}}
CONFIGS = {
    "resnet101": ("resnet101", 5, {"min_size": 512, "box_detections_per_img": 50}),
    "resnext50": ("resnext50_32x4d", 5, {"min_size": 416, "max_size": 700}),
    "mobilenet": ("mobilenet_v3_large", 5, MOBILENET_KWARGS),
    # 2 classes and non-default thresholds and counts throughout
    "two-classes": ("resnet18", 2, {"min_size": 384, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 200,
                                   "rpn_nms_thresh": 0.6, "rpn_score_thresh": 0.05, "box_nms_thresh": 0.4,
                                   "box_detections_per_img": 30, "bbox_reg_weights": [8, 8, 4, 4]}),
}


@pytest.fixture(scope="module")
def own_models(tmp_path_factory):
    """name -> (torchvision model, exported directory), built once, with the seeded random
    weights build_engine.py --weights random --backbone gives."""
    from exporter import export
    from exporter.model_kwargs import parse_model_kwargs
    from exporter.weights import random_model

    cache = {}

    def get(name):
        if name not in cache:
            backbone, classes, kwargs = CONFIGS[name]
            model = random_model("maskrcnn_resnet50_fpn", 0, classes, backbone, parse_model_kwargs(json.dumps(kwargs)))
            path = tmp_path_factory.mktemp("own") / name
            export(model, path, ["__background__"] + [f"class{i}" for i in range(1, classes)], quiet=True,
                   arch=f"maskrcnn_{backbone}_fpn", weights_info={"source": "random", "seed": 0, "trained": False,
                                                                  "backbone": backbone, "model_kwargs": kwargs})
            cache[name] = model.eval(), path
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_own_models_match_torchvision(name, own_models):
    model, path = own_models(name)
    threshold = 0.3
    images = {"astronaut": photo("astronaut"), "coffee-333x517": resized_photo("coffee", (333, 517)),
              "chelsea-tall": resized_photo("chelsea", (451, 300))}
    references = {k: torchvision_predict(model, im, threshold, model.roi_heads.detections_per_img)
                  for k, im in images.items()}
    for backend in CPU_BACKENDS:
        engine = Engine.load(path, backend=backend, precision="fp32")
        matched = total = 0
        ious = []
        for key, image in images.items():
            ref = references[key]
            det = engine.predict(image, score_threshold=threshold, max_detections=model.roi_heads.detections_per_img)
            pairs, _ = match_detections(ref, det)
            matched += len(pairs)
            total += max(len(ref["scores"]), len(det))
            ious += [mask_iou(ref["masks"][i], det.masks[j]) for i, j in pairs]
        assert total > 30, f"{name}: too few detections to compare ({total})"
        assert matched / total >= 0.98, f"{name} on {backend}: {matched} of {total} matched"
        assert np.mean(ious) >= 0.98, f"{name} on {backend}: mean mask IoU {np.mean(ious):.4f}"


def test_readme_tutorial_recipe_end_to_end(tmp_path):
    """docs/models.md "Your own Mask R-CNN", as written: the tutorial's model surgery and a train.py
    checkpoint -> build_engine.py -> engine info -> serve --model-dir -> the seed's boto3 call
    answers with the user's class names, and /ping names the model."""
    import os

    import requests

    from harness.server import ServerProcess
    from test_readme_examples import readme_block, readme_boto3_answer, run_readme_setup

    code = readme_block("## Your own Mask R-CNN", "python", "docs/models.md")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=False)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    checkpoint["model"] = tutorial_model().state_dict()  # weights that detect something, same layout
    torch.save(checkpoint, tmp_path / "checkpoint.pth")

    model_dir = run_readme_setup("the tutorial's model surgery", tmp_path, "docs/models.md")
    info = subprocess.run([sys.executable, "-m", "engine", "info", "models/pennfudan", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert json.loads(info.stdout)["classes"] == TUTORIAL_CLASSES

    server = ServerProcess(model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        ping = requests.get(f"{server.url}/ping", timeout=10).json()
        assert ping["model"] == "pennfudan" and ping["classes"] == TUTORIAL_CLASSES[1:]
        (tmp_path / "horse-guard.jpg").write_bytes(
            __import__("server_fixtures").encode_pil(photo("astronaut"), "JPEG", quality=90))
        answer = readme_boto3_answer(server.url, tmp_path)
        names = {label.rsplit(" ", 1)[0] for label in answer["labels"]}
        assert answer["labels"] and names <= set(TUTORIAL_CLASSES[1:]), answer["labels"]
    finally:
        server.kill()


def test_int8_build_of_a_custom_backbone_through_the_cli(own_models, tmp_path):
    """build_engine.py --backbone --model-kwargs --int8 on the MobileNetV3 configuration: the
    directory records its backbone, arguments and quantization, both CPU backends load it, and
    its dense graph tracks the FP32 one. (Detection agreement with FP32 is not asserted: on
    random weights, whose class scores have little margin, it says little; the trained demo
    model's is under Benchmarks.)"""
    import cv2

    model, fp32_dir = own_models("mobilenet")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    (tmp_path / "kwargs.json").write_text(json.dumps(MOBILENET_KWARGS))
    (tmp_path / "names.txt").write_text("\n".join(["__background__"] + [f"class{i}" for i in range(1, 5)]))
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("motorcycle", "rocket", "coffee"):
        cv2.imwrite(str(calib / f"{name}.jpg"), photo(name)[..., ::-1])
    result = run_build_engine("--backbone", "mobilenet_v3_large", "--weights", tmp_path / "model.pth", "--model-kwargs",
                              tmp_path / "kwargs.json", "--class-names", tmp_path / "names.txt", "--int8",
                              "--calib-images", calib, "--output", tmp_path / "int8")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert config["arch"] == "maskrcnn_mobilenet_v3_large_fpn" and config["quantization"]["precision"] == "int8"
    from exporter.model_kwargs import parse_model_kwargs

    recorded = json.loads(json.dumps(parse_model_kwargs(json.dumps(MOBILENET_KWARGS))))  # as checked, as JSON
    assert config["weights"]["backbone"] == "mobilenet_v3_large" and config["weights"]["model_kwargs"] == recorded
    image = photo("astronaut")
    fp32 = Engine.load(fp32_dir, backend="onnxruntime-cpu", precision="fp32")
    prepared = fp32.transform(image)
    reference = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in fp32.backend.run_dense(prepared.tensor).rpn_logits]
    for backend in CPU_BACKENDS:
        engine = Engine.load(tmp_path / "int8", backend=backend)
        assert len(engine.predict(image, score_threshold=0.3)) > 0
        logits = [np.asarray(x.numpy() if hasattr(x, "numpy") else x)
                  for x in engine.backend.run_dense(engine.transform(image).tensor).rpn_logits]
        for a, b in zip(reference, logits):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9, f"{backend}: INT8 RPN logits do not follow FP32"
