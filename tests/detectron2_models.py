"""detectron2 test subjects: models built by detectron2 itself from its own configs, with seeded
weights that make a useful subject, saved as users have them, and detectron2's DefaultPredictor
as the reference (tests/detectron2_reference.py finds detectron2).

* detectron2_cfg(config, **overrides): detectron2's CfgNode for a zoo config (path relative to
  its configs folder) with dotted-key overrides, on the CPU.
* seeded_model(cfg, seed): detectron2's build_model(cfg), weights scaled layer by layer to unit
  spread on a seeded photo-like image, box deltas small, class scores spread over classes.
* save_pkl(model, path), save_pth(model, path): the model zoo's and a training run's layouts.
* predictor(cfg, weights), predict(predictor, image_rgb): detectron2's DefaultPredictor and its
  result as numpy (boxes, scores, classes, masks).
* odd_photo(name): the compared photos, real, of modest and odd sizes.
* `python tests/detectron2_models.py SPEC.json`: all of the above for one subject in a child
  process (build, save, convert, references), so the test process never holds detectron2's
  models: the memory they leave behind would count against later tests' memory budgets.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import detectron2_reference  # noqa: E402


def detectron2_cfg(config: str, **overrides):
    detectron2_reference.load()
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(detectron2_reference.configs_dir() / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def seeded_model(cfg, seed: int = 0, logit_std: float = 2.0):
    """detectron2's own model for `cfg`, eval mode, with seeded weights that give detections
    of many classes whose scores spread over (0, 1)."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():  # FrozenBN statistics that are not all identity
            if type(module).__name__ == "FrozenBatchNorm2d":
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    from exporter.weights import calibration_image, scale_to_unit_spread

    image = calibration_image(generator) * 255.0  # noise with a photo's spectrum, 0-255; channel order moot
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d))]
    scale_to_unit_spread(layers, lambda: model(inputs))
    captured = {}
    hook = model.roi_heads.box_head.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        rpn_head = model.proposal_generator.rpn_head
        rpn_head.anchor_deltas.weight.mul_(0.1)
        rpn_head.anchor_deltas.bias.mul_(0.1)
        predictor = model.roi_heads.box_predictor
        predictor.bbox_pred.weight.normal_(0.0, 0.01, generator=generator)
        predictor.bbox_pred.bias.zero_()
        try:
            model(inputs)
        finally:
            hook.remove()
        features = captured["x"]
        mean = features.mean(dim=0)
        spread = (features - mean).norm(dim=1).mean().clamp_min(1e-6)
        predictor.cls_score.weight.normal_(0.0, float(logit_std / spread), generator=generator)
        predictor.cls_score.bias.copy_(-predictor.cls_score.weight @ mean)
    return model


def save_pkl(model, path) -> None:
    """The model zoo's layout: {"model": {name: numpy array}, "__author__": ...}, pickled."""
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)


def save_pth(model, path, iteration: int = 89999) -> None:
    """A training run's model_final.pth: {"model": state_dict, "iteration": N, ...}."""
    torch.save({"model": model.state_dict(), "iteration": iteration, "scheduler": {"last_epoch": iteration}}, path)


def predictor(cfg, weights):
    """detectron2's DefaultPredictor for `cfg` with the weights file `weights` (it builds the
    model and loads the file with its own checkpointer)."""
    from detectron2.engine import DefaultPredictor

    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(weights)
    return DefaultPredictor(cfg)


def predict(predictor, image_rgb: np.ndarray) -> dict:
    """DefaultPredictor's result on an RGB photo (it takes BGR, as cv2 reads it): boxes (N, 4),
    scores (N,), classes (N,) 0-based foreground, masks (N, H, W) bool."""
    instances = predictor(np.ascontiguousarray(image_rgb[:, :, ::-1]))["instances"]
    return {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
            "classes": instances.pred_classes.numpy(), "masks": instances.pred_masks.numpy()}


ODD_SIZES = {"coffee-333x517": ("coffee", (333, 517)), "chelsea-tall": ("chelsea", (451, 300))}


def odd_photo(name: str) -> np.ndarray:
    """A skimage photo by name, or one of ODD_SIZES: resized to odd sizes and aspect ratios."""
    from helpers import photo, resized_photo

    return resized_photo(*ODD_SIZES[name]) if name in ODD_SIZES else photo(name)


def build_subject(spec: dict) -> None:
    """One subject into spec["folder"]: config.yaml (the full config a training run dumps),
    model_final.pkl|pth, model/ (converted by exporter.detectron2, with spec["class_names"]),
    references.npz (DefaultPredictor's result on each of spec["photos"], masks bit-packed)."""
    from exporter.detectron2 import export_detectron2

    folder = Path(spec["folder"])
    cfg = detectron2_cfg(spec["config"], **spec["overrides"])
    (folder / "config.yaml").write_text(cfg.dump())
    weights = folder / f"model_final.{spec['layout']}"
    (save_pkl if spec["layout"] == "pkl" else save_pth)(seeded_model(cfg), weights)
    reference = predictor(cfg, weights)
    arrays = {}
    for name in spec["photos"]:
        result = predict(reference, odd_photo(name))
        arrays.update({f"{name}/{k}": v for k, v in result.items() if k != "masks"})
        arrays[f"{name}/masks"] = np.packbits(result["masks"], axis=-1)
        arrays[f"{name}/shape"] = np.array(result["masks"].shape)
    np.savez(folder / "references.npz", **arrays)
    export_detectron2(folder / "config.yaml", weights, folder / "model", spec["class_names"], quiet=True)


def load_references(folder: Path, photos) -> dict:
    """references.npz as {photo: {boxes, scores, classes, masks (N, H, W) bool}}."""
    data = np.load(Path(folder) / "references.npz")
    out = {}
    for name in photos:
        shape = tuple(data[f"{name}/shape"])
        masks = np.unpackbits(data[f"{name}/masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
        out[name] = {"boxes": data[f"{name}/boxes"], "scores": data[f"{name}/scores"],
                     "classes": data[f"{name}/classes"], "masks": masks}
    return out


if __name__ == "__main__":
    build_subject(json.loads(Path(sys.argv[1]).read_text()))
