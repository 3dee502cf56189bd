"""exporter.detectron2_config (detectron2 YAML configs read without detectron2) against
detectron2's own config system: `get_cfg(); cfg.merge_from_file(path)` is the reference, imported
through tests/detectron2_reference.py. No model is built."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

import detectron2_reference
from exporter import detectron2_config
from exporter.detectron2_config import (
    DEFAULTS,
    KNOWN_KEYS,
    Detectron2Config,
    Detectron2ConfigError,
    read_detectron2_config,
)

R50_3X = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"

# The model zoo's YAML configs that are FPN Mask R-CNNs this product runs (every other one is
# refused: test_every_zoo_yaml_is_read_or_refused).
SUPPORTED = [
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    R50_3X,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "Cityscapes/mask_rcnn_R_50_FPN.yaml",
    "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml",  # ROIAlign (not V2) poolers
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "quick_schedules/mask_rcnn_R_50_FPN_inference_acc_test.yaml",
    "quick_schedules/mask_rcnn_R_50_FPN_instant_test.yaml",
    "quick_schedules/mask_rcnn_R_50_FPN_training_acc_test.yaml",
    "quick_schedules/mask_rcnn_R_50_FPN_pred_boxes_training_acc_test.yaml",
]

# Model zoo configs that are refused, and the key (or tag) their message must name.
UNSUPPORTED = {
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": "MODEL.BACKBONE.NAME",  # C4
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml": "MODEL.BACKBONE.NAME",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml": "MODEL.RESNETS.RES5_DILATION",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x.yaml": "MODEL.RESNETS.RES5_DILATION",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml": "MODEL.ROI_HEADS.NAME",
    "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5.yaml": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml": "MODEL.RESNETS.NORM",
    # SyncBN in the ResNet would do, but its FPN, box head (4 convs) and mask head are normalized
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml": "MODEL.FPN.NORM",
    "Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml": "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "Misc/semantic_R_50_FPN_1x.yaml": "MODEL.META_ARCHITECTURE",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml": "MODEL.META_ARCHITECTURE",
    "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml": "MODEL.META_ARCHITECTURE",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml": "MODEL.KEYPOINT_ON",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml": "MODEL.MASK_ON",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml": "MODEL.MASK_ON",
    "COCO-Detection/rpn_R_50_FPN_1x.yaml": "MODEL.META_ARCHITECTURE",
    # its base builds anchor sizes with !!python/object/apply:eval, which is never run
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml": "MODEL.ANCHOR_GENERATOR.SIZES",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py": "LazyConfig",
}


@pytest.fixture(scope="session")
def configs() -> Path:
    """detectron2's model-zoo configs folder."""
    return detectron2_reference.configs_dir()


@pytest.fixture(scope="session")
def d2():
    return detectron2_reference.load()


def detectron2_cfg(path):
    """detectron2's own reading of a config file: its defaults with the file merged in."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def reference_fields(cfg) -> dict:
    """Every Detectron2Config field (but source and merged) as detectron2 derives it from cfg."""
    from detectron2.modeling.anchor_generator import _broadcast_params
    from detectron2.modeling.poolers import ROIPooler

    def floats(values):
        return tuple(float(v) for v in values)

    def aligned(pooler_type):
        pooler = ROIPooler(output_size=7, scales=(0.25,), sampling_ratio=0, pooler_type=pooler_type)
        return bool(pooler.level_poolers[0].aligned)

    m = cfg.MODEL
    levels = len(m.RPN.IN_FEATURES)
    return {
        "depth": m.RESNETS.DEPTH,
        "num_groups": m.RESNETS.NUM_GROUPS,
        "width_per_group": m.RESNETS.WIDTH_PER_GROUP,
        "stride_in_1x1": m.RESNETS.STRIDE_IN_1X1,
        "stem_out_channels": m.RESNETS.STEM_OUT_CHANNELS,
        "res2_out_channels": m.RESNETS.RES2_OUT_CHANNELS,
        "norm": m.RESNETS.NORM,
        "fpn_in_features": tuple(m.FPN.IN_FEATURES),
        "fpn_out_channels": m.FPN.OUT_CHANNELS,
        "rpn_in_features": tuple(m.RPN.IN_FEATURES),
        "anchor_sizes": tuple(map(floats, _broadcast_params(m.ANCHOR_GENERATOR.SIZES, levels, "sizes"))),
        "aspect_ratios": tuple(map(floats, _broadcast_params(m.ANCHOR_GENERATOR.ASPECT_RATIOS, levels,
                                                             "aspect_ratios"))),
        "anchor_offset": float(m.ANCHOR_GENERATOR.OFFSET),
        "rpn_pre_nms_topk": m.RPN.PRE_NMS_TOPK_TEST,
        "rpn_post_nms_topk": m.RPN.POST_NMS_TOPK_TEST,
        "rpn_nms_thresh": float(m.RPN.NMS_THRESH),
        "rpn_bbox_reg_weights": floats(m.RPN.BBOX_REG_WEIGHTS),
        "rpn_min_size": float(m.PROPOSAL_GENERATOR.MIN_SIZE),
        "num_classes": m.ROI_HEADS.NUM_CLASSES,
        "roi_in_features": tuple(m.ROI_HEADS.IN_FEATURES),
        "score_thresh": float(m.ROI_HEADS.SCORE_THRESH_TEST),
        "nms_thresh": float(m.ROI_HEADS.NMS_THRESH_TEST),
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "box_num_fc": m.ROI_BOX_HEAD.NUM_FC,
        "box_fc_dim": m.ROI_BOX_HEAD.FC_DIM,
        "box_pooler_resolution": m.ROI_BOX_HEAD.POOLER_RESOLUTION,
        "box_pooler_sampling_ratio": m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        "box_pooler_aligned": aligned(m.ROI_BOX_HEAD.POOLER_TYPE),
        "box_bbox_reg_weights": floats(m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
        "mask_num_conv": m.ROI_MASK_HEAD.NUM_CONV,
        "mask_conv_dim": m.ROI_MASK_HEAD.CONV_DIM,
        "mask_pooler_resolution": m.ROI_MASK_HEAD.POOLER_RESOLUTION,
        "mask_pooler_sampling_ratio": m.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
        "mask_pooler_aligned": aligned(m.ROI_MASK_HEAD.POOLER_TYPE),
        "pixel_mean": floats(m.PIXEL_MEAN),
        "pixel_std": floats(m.PIXEL_STD),
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
    }


def assert_matches(ours: Detectron2Config, cfg) -> None:
    """Every field equals detectron2's value, with the same type (True is not 1)."""
    expected = reference_fields(cfg)
    fields = {f.name for f in dataclasses.fields(Detectron2Config)} - {"source", "merged"}
    assert set(expected) == fields
    for name, value in expected.items():
        got = getattr(ours, name)
        assert got == value and type(got) is type(value), f"{name}: {got!r} != detectron2's {value!r}"


def refusal(path) -> str:
    """The Detectron2ConfigError message reading `path` gives; it must be one line."""
    with pytest.raises(Detectron2ConfigError) as caught:
        read_detectron2_config(path)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


def plain(node):
    """A CfgNode as nested dicts, tuples kept."""
    return {k: plain(v) if isinstance(v, dict) else v for k, v in node.items()}


# ------------------------------------------------------------------------------- model zoo

@pytest.mark.parametrize("name", SUPPORTED)
def test_zoo_config_matches_detectron2(d2, configs, name):
    from detectron2.config import CfgNode

    path = configs / name
    ours = read_detectron2_config(path)
    assert ours.source == str(path)
    assert_matches(ours, detectron2_cfg(path))
    # the _BASE_ chain merged as fvcore merges it (before detectron2's defaults are added)
    assert ours.merged == CfgNode.load_yaml_with_base(str(path), allow_unsafe=False)


def test_zoo_examples(configs):
    r50 = read_detectron2_config(configs / R50_3X)
    assert (r50.depth, r50.num_classes, r50.norm) == (50, 80, "FrozenBN")
    assert r50.fpn_in_features == ("res2", "res3", "res4", "res5")
    assert r50.rpn_in_features == ("p2", "p3", "p4", "p5", "p6")
    assert r50.roi_in_features == ("p2", "p3", "p4", "p5")
    assert r50.anchor_sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    assert r50.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert (r50.rpn_pre_nms_topk, r50.rpn_post_nms_topk) == (1000, 1000)
    assert (r50.box_num_fc, r50.box_pooler_resolution, r50.mask_num_conv) == (2, 7, 4)
    assert r50.box_pooler_aligned and r50.mask_pooler_aligned
    assert r50.pixel_std == (1.0, 1.0, 1.0) and r50.input_format == "BGR"
    hash(r50)  # frozen and hashable: `merged` is left out of equality and hash

    x101 = read_detectron2_config(configs / "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert (x101.depth, x101.num_groups, x101.width_per_group, x101.stride_in_1x1) == (101, 32, 8, False)
    noaug = read_detectron2_config(configs / "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml")
    assert not noaug.box_pooler_aligned and noaug.box_pooler_sampling_ratio == 2


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_zoo_config_is_refused(configs, name):
    message = refusal(configs / name)
    assert UNSUPPORTED[name] in message


def test_every_zoo_yaml_is_read_or_refused(configs):
    """Exactly the SUPPORTED zoo configs are read; every other one is one clear error."""
    read = set()
    for path in sorted(configs.rglob("*.yaml")):
        name = path.relative_to(configs).as_posix()
        try:
            read_detectron2_config(path)
        except Detectron2ConfigError as exc:
            assert "\n" not in str(exc) and ("MODEL." in str(exc) or "!!python" in str(exc)), exc
        else:
            read.add(name)
    assert read == set(SUPPORTED)


# ------------------------------------------------------------------- configs training runs write

def test_dumped_config_reads_back(d2, configs, tmp_path):
    """The config.yaml of a training run (cfg.dump(): yaml.safe_dump, tuples as lists)."""
    cfg = detectron2_cfg(configs / R50_3X)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.INPUT.MIN_SIZE_TEST = 600
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    text = cfg.dump()
    assert "!!python" not in text
    path = tmp_path / "config.yaml"
    path.write_text(text)

    ours = read_detectron2_config(path)
    assert_matches(ours, cfg)
    assert (ours.num_classes, ours.min_size_test, ours.pixel_std) == (3, 600, (57.375, 57.12, 58.395))
    assert ours.merged == yaml.safe_load(text)


def test_yaml_dump_with_python_tuples(d2, configs, tmp_path):
    """yaml.dump (not safe_dump) writes tuples as !!python/tuple: read as tuples, safely."""
    cfg = detectron2_cfg(configs / "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml")
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 2.0, 2.0)
    text = yaml.dump(plain(cfg))
    assert "!!python/tuple" in text
    path = tmp_path / "config.yaml"
    path.write_text(text)
    ours = read_detectron2_config(path)
    assert_matches(ours, cfg)
    assert ours.rpn_bbox_reg_weights == (1.0, 1.0, 2.0, 2.0)


# ------------------------------------------------------------------------ users' own configs

def test_user_base_chain(d2, configs, tmp_path):
    """Two levels of the user's own bases over a zoo config, each _BASE_ relative to the file
    naming it; strings that are Python literals read as yacs reads them."""
    (tmp_path / "team").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "team" / "base.yaml").write_text(f"""
_BASE_: {configs / R50_3X}
MODEL:
  ROI_HEADS: {{NUM_CLASSES: 5, SCORE_THRESH_TEST: 0.3}}
  ANCHOR_GENERATOR: {{SIZES: [[16], [32], [64], [128], [256]]}}
INPUT: {{MIN_SIZE_TEST: 640}}
""")
    (tmp_path / "project" / "model.yaml").write_text("""
_BASE_: ../team/base.yaml
MODEL:
  ROI_HEADS: {NUM_CLASSES: 3}
  RESNETS: {DEPTH: 101}
  PIXEL_STD: "(57.375, 57.12, 58.395)"
  ANCHOR_GENERATOR: {ASPECT_RATIOS: [0.5, 1.0]}
SOLVER: {BASE_LR: 0.01}
""")
    path = tmp_path / "project" / "model.yaml"
    ours = read_detectron2_config(path)
    assert_matches(ours, detectron2_cfg(path))
    assert (ours.num_classes, ours.score_thresh, ours.depth, ours.min_size_test) == (3, 0.3, 101, 640)
    assert ours.anchor_sizes == ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    assert ours.aspect_ratios == ((0.5, 1.0),) * 5  # a flat list serves every level
    assert ours.pixel_std == (57.375, 57.12, 58.395)
    assert ours.merged["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"] == 0.3
    assert "_BASE_" not in ours.merged


def test_list_of_bases(d2, configs, tmp_path):
    (tmp_path / "a.yaml").write_text(f"_BASE_: {configs / R50_3X}\nMODEL: {{ROI_HEADS: {{NUM_CLASSES: 7}}}}\n")
    (tmp_path / "b.yaml").write_text("MODEL: {ROI_HEADS: {NMS_THRESH_TEST: 0.6}, FPN: {OUT_CHANNELS: 128}}\n")
    path = tmp_path / "c.yaml"
    path.write_text("_BASE_: [a.yaml, b.yaml]\nMODEL: {FPN: {OUT_CHANNELS: 192}}\n")
    ours = read_detectron2_config(path)
    assert_matches(ours, detectron2_cfg(path))
    assert (ours.num_classes, ours.nms_thresh, ours.fpn_out_channels) == (7, 0.6, 192)


# A zoo config with one change that is not supported (or not consistent), and the key its one
# error must name.
REFUSED_CHANGES = [
    ("MODEL: {META_ARCHITECTURE: RetinaNet}", "MODEL.META_ARCHITECTURE"),
    ("MODEL: {KEYPOINT_ON: true}", "MODEL.KEYPOINT_ON"),
    ("MODEL: {MASK_ON: 1}", "MODEL.MASK_ON"),
    ("MODEL: {PROPOSAL_GENERATOR: {NAME: RRPN}}", "MODEL.PROPOSAL_GENERATOR.NAME"),
    ("MODEL: {PROPOSAL_GENERATOR: {NAME: PrecomputedProposals}}", "MODEL.PROPOSAL_GENERATOR.NAME"),
    ("MODEL: {ANCHOR_GENERATOR: {NAME: RotatedAnchorGenerator}}", "MODEL.ANCHOR_GENERATOR.NAME"),
    ("MODEL: {ROI_HEADS: {NAME: RROIHeads}}", "MODEL.ROI_HEADS.NAME"),
    ("MODEL: {ROI_HEADS: {NAME: Res5ROIHeads}}", "MODEL.ROI_HEADS.NAME"),
    ("MODEL: {ROI_BOX_HEAD: {POOLER_TYPE: ROIAlignRotated}}", "MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
    ("MODEL: {ROI_MASK_HEAD: {POOLER_TYPE: ROIPool}}", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"),
    ("MODEL: {BACKBONE: {NAME: build_resnet_backbone}}", "MODEL.BACKBONE.NAME"),
    ("MODEL: {BACKBONE: {NAME: build_regnet_fpn_backbone}}", "MODEL.BACKBONE.NAME"),
    ("MODEL: {RESNETS: {RES5_DILATION: 2}}", "MODEL.RESNETS.RES5_DILATION"),
    ("MODEL: {RESNETS: {DEFORM_ON_PER_STAGE: [false, false, false, true]}}",
     "MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
    ("MODEL: {RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64}}", "MODEL.RESNETS.DEPTH"),
    ("MODEL: {RESNETS: {DEPTH: 34}}", "MODEL.RESNETS.DEPTH"),
    ("MODEL: {RESNETS: {DEPTH: 200}}", "MODEL.RESNETS.DEPTH"),
    ("MODEL: {RESNETS: {DEPTH: 50.0}}", "MODEL.RESNETS.DEPTH"),
    ("MODEL: {RESNETS: {NORM: GN}}", "MODEL.RESNETS.NORM"),
    ("MODEL: {FPN: {NORM: GN}}", "MODEL.FPN.NORM"),
    ("MODEL: {FPN: {FUSE_TYPE: avg}}", "MODEL.FPN.FUSE_TYPE"),
    ("MODEL: {RPN: {HEAD_NAME: MyRPNHead}}", "MODEL.RPN.HEAD_NAME"),
    ("MODEL: {RPN: {CONV_DIMS: [256, 256]}}", "MODEL.RPN.CONV_DIMS"),
    ("MODEL: {ROI_BOX_HEAD: {NAME: MyBoxHead}}", "MODEL.ROI_BOX_HEAD.NAME"),
    ("MODEL: {ROI_BOX_HEAD: {NUM_CONV: 4}}", "MODEL.ROI_BOX_HEAD.NUM_CONV"),
    ("MODEL: {ROI_BOX_HEAD: {NORM: GN}}", "MODEL.ROI_BOX_HEAD.NORM"),
    ("MODEL: {ROI_BOX_HEAD: {NUM_FC: 0}}", "MODEL.ROI_BOX_HEAD.NUM_FC"),
    ("MODEL: {ROI_BOX_HEAD: {USE_SIGMOID_CE: true}}", "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE"),
    ("MODEL: {ROI_MASK_HEAD: {NAME: MaskRCNNPointRendHead}}", "MODEL.ROI_MASK_HEAD.NAME"),
    ("MODEL: {ROI_MASK_HEAD: {NORM: SyncBN}}", "MODEL.ROI_MASK_HEAD.NORM"),
    ("MODEL: {ROI_MASK_HEAD: {CLS_AGNOSTIC_MASK: true}}", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"),
    ("MODEL: {FPN: {IN_FEATURES: [res2, res3, res4]}}", "MODEL.FPN.IN_FEATURES"),
    ("MODEL: {FPN: {IN_FEATURES: [res3, res2, res4, res5]}}", "MODEL.FPN.IN_FEATURES"),
    ("MODEL: {RESNETS: {OUT_FEATURES: [res3, res4, res5]}}", "MODEL.RESNETS.OUT_FEATURES"),
    ("MODEL: {RPN: {IN_FEATURES: [p2, p3, p7]}}", "MODEL.RPN.IN_FEATURES"),
    ("MODEL: {RPN: {IN_FEATURES: [p3, p2]}}", "MODEL.RPN.IN_FEATURES"),
    ("MODEL: {ROI_HEADS: {IN_FEATURES: [p2, p4]}}", "MODEL.ROI_HEADS.IN_FEATURES"),
    ("MODEL: {ROI_HEADS: {IN_FEATURES: [res4]}}", "MODEL.ROI_HEADS.IN_FEATURES"),
    ("MODEL: {ANCHOR_GENERATOR: {SIZES: [[32], [64]]}}", "MODEL.ANCHOR_GENERATOR.SIZES"),
    ("MODEL: {ANCHOR_GENERATOR: {SIZES: [[32, 40], [64], [128], [256], [512]]}}",
     "MODEL.ANCHOR_GENERATOR.SIZES"),
    ("MODEL: {ANCHOR_GENERATOR: {ASPECT_RATIOS: [[0.5], [1.0]]}}", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
    ("MODEL: {ANCHOR_GENERATOR: {OFFSET: 1.0}}", "MODEL.ANCHOR_GENERATOR.OFFSET"),
    ("MODEL: {ROI_HEADS: {NUM_CLASSES: 0}}", "MODEL.ROI_HEADS.NUM_CLASSES"),
    ("MODEL: {ROI_HEADS: {NUM_CLASSES: three}}", "MODEL.ROI_HEADS.NUM_CLASSES"),
    ("MODEL: {ROI_HEADS: {SCORE_THRESH_TEST: 1.5}}", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
    ("MODEL: {PIXEL_MEAN: [1, 2]}", "MODEL.PIXEL_MEAN"),
    ("MODEL: {PIXEL_STD: [1, 0, 1]}", "MODEL.PIXEL_STD"),
    ("INPUT: {FORMAT: L}", "INPUT.FORMAT"),
    ("TEST: {DETECTIONS_PER_IMAGE: 0}", "TEST.DETECTIONS_PER_IMAGE"),
    ("MODEL: {RESNETS: {DEPHT: 101}}", "MODEL.RESNETS.DEPHT"),  # a typo, as detectron2 refuses
    ("INPUT: {MIN_SIZE_TES: 600}", "INPUT.MIN_SIZE_TES"),
    ("MODEL: {RESNETS: null}", "MODEL.RESNETS"),
    ("MODEL: {ROI_HEADS: 3}", "MODEL.ROI_HEADS"),
    ("SOLVERR: {BASE_LR: 0.1}", "SOLVERR"),  # unknown top-level junk
    ("VERSION: 1", "VERSION"),
]


@pytest.mark.parametrize("change, key", REFUSED_CHANGES, ids=[c for c, _ in REFUSED_CHANGES])
def test_refused_change(configs, tmp_path, change, key):
    path = tmp_path / "model.yaml"
    path.write_text(f"_BASE_: {configs / R50_3X}\n{change}\n")
    assert key in refusal(path)


def test_typo_suggests_the_key(configs, tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(f"_BASE_: {configs / R50_3X}\nMODEL: {{RESNETS: {{DEPHT: 101}}}}\n")
    assert "did you mean DEPTH?" in refusal(path)


def test_training_only_keys_are_ignored(configs, tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(f"""_BASE_: {configs / R50_3X}
MODEL: {{ROI_BOX_HEAD: {{BBOX_REG_LOSS_TYPE: ciou, TRAIN_ON_PRED_BOXES: true}}, WEIGHTS: x.pkl}}
SOLVER: {{NOT_A_KEY: 1}}
DATASETS: {{TRAIN: [mine]}}
TEST: {{AUG: {{ENABLED: true}}}}
OUTPUT_DIR: /tmp/out
""")
    zoo = read_detectron2_config(configs / R50_3X)
    assert read_detectron2_config(path) == dataclasses.replace(zoo, source=str(path))


# ------------------------------------------------------------------------------ bad files

def test_file_errors(configs, tmp_path):
    assert "does not exist" in refusal(tmp_path / "missing.yaml")
    assert "LazyConfig" in refusal(configs / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")

    missing_base = tmp_path / "missing_base.yaml"
    missing_base.write_text("_BASE_: ../nowhere/base.yaml\n")
    message = refusal(missing_base)
    assert "nowhere/base.yaml" in message and "_BASE_ of" in message and "does not exist" in message

    (tmp_path / "loop_b.yaml").write_text("_BASE_: loop_a.yaml\n")  # loop_a.yaml's base, below
    for name, text, said in [
        ("bad.yaml", "MODEL:\n  MASK_ON: [true\n", "not valid YAML"),
        ("empty.yaml", "# nothing\n", "empty"),
        ("list.yaml", "- MODEL\n", "mapping"),
        ("loop_a.yaml", "_BASE_: loop_b.yaml\n", "_BASE_ loop"),
        ("url.yaml", "_BASE_: https://example.com/base.yaml\n", "URL"),
        ("bad_base.yaml", "_BASE_: 3\n", "_BASE_"),
        ("v1.yaml", "MODEL: {WEIGHT: x.pkl, MASK_ON: true}\n", "v1"),
    ]:
        (tmp_path / name).write_text(text)
        assert said in refusal(tmp_path / name), name


def test_python_tags_are_never_run(configs, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"MODEL:\n  WEIGHTS: !!python/object/apply:os.system ['touch {marker}']\n")
    message = refusal(path)
    assert "MODEL.WEIGHTS" in message and "!!python/object/apply:os.system" in message
    assert not marker.exists()


# ------------------------------------------------------------------- the module's own tables

def test_defaults_and_keys_are_detectron2s(d2):
    """DEFAULTS and KNOWN_KEYS hold the facts of detectron2's defaults.py."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    for key, value in DEFAULTS.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), key
    for section, known in KNOWN_KEYS.items():
        node = cfg
        for part in section.split(".") if section else []:
            node = node[part]
        assert set(node) == set(known), section


def test_reads_without_detectron2():
    """The product module imports none of detectron2, fvcore, yacs."""
    tree = ast.parse(Path(detectron2_config.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"detectron2", "fvcore", "yacs", "iopath"}
