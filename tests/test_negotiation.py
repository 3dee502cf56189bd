"""server/negotiation.py: the response type (every row of the seed's rule) and the custom attributes."""

from __future__ import annotations

import json

import falcon.testing
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from server import ServerConfig, create_app
from server.negotiation import choose_response_type, parse_custom_attributes
from server_fixtures import JSON, JPEG, PNG, post, assert_error, FAKE_CLASSES, FakeEngine, fake_detections
from server_fixtures import engine, client, jpeg_body, png_body  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---- content negotiation: every row -------------------------------------------------------------


@pytest.mark.parametrize("accept, response_type, default, expected", [
    # Accept decides when it names a type
    (JPEG, None, JSON, JPEG),
    (PNG, None, JSON, PNG),
    (JSON, None, JSON, JSON),
    ("Image/JPEG", None, JSON, JPEG),
    ("image/png; q=0.9", None, JSON, PNG),
    (JSON, "png", JSON, JSON),  # Accept first: custom attributes do not override it
    (JPEG, "json", JSON, JPEG),
    # lists by preference
    ("image/png;q=0.5, application/json;q=0.9", None, JSON, JSON),
    ("image/png, image/jpeg", None, JSON, PNG),  # equal q: the earlier one
    ("image/jpeg, image/png", None, JSON, JPEG),
    ("text/html, image/png;q=0.8, */*;q=0.1", None, JSON, PNG),
    ("text/html, */*;q=0.1", None, JSON, JSON),  # only the wildcard matches: default
    ("text/html, */*;q=0.1", "jpeg", JSON, JPEG),  # ... or the response_type
    ("image/*", None, JSON, JPEG),
    ("image/*", "png", JSON, PNG),  # a tie inside Accept goes to response_type
    ("image/*;q=0.2, image/png;q=0", None, JSON, JPEG),  # the specific q=0 wins over image/*
    ("application/*", None, PNG, JSON),
    # Accept absent or */*: response_type decides
    (None, "jpeg", JSON, JPEG),
    (None, "png", JSON, PNG),
    (None, "json", JSON, JSON),
    ("*/*", "png", JSON, PNG),
    ("*/*", "jpg", JSON, JPEG),
    ("", "png", JSON, PNG),
    # neither: JSON, or SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    (None, None, JSON, JSON),
    ("*/*", None, JSON, JSON),
    (None, None, PNG, PNG),
    ("*/*", None, JPEG, JPEG),
])
def test_negotiation_rows(jpeg_body, accept, response_type, default, expected):
    client = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig(default_accept=default)))
    attrs = None if response_type is None else {"response_type": response_type}
    resp = post(client, jpeg_body, accept=accept, attrs=attrs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == expected


@pytest.mark.parametrize("accept", ["text/html", "image/gif", "application/json;q=0", "*/*;q=0",
                                    "image/*;q=0, application/json;q=0", "nonsense", "text/*"])
def test_unsatisfiable_accept_is_406(client, jpeg_body, accept):
    assert_error(post(client, jpeg_body, accept=accept, attrs={"response_type": "json"}), 406, "Accept")


def test_negotiation_function_directly():
    assert choose_response_type(None, None, JSON) == JSON
    assert choose_response_type("application/json;q=0.1, image/jpeg;q=0.1", "image/jpeg", JSON) == JPEG
    assert choose_response_type("image/png;q=abc, image/jpeg", None, JSON) == JPEG  # bad q: skipped


@pytest.mark.parametrize("content_type, body_kind", [
    ("image/jpeg", "jpeg"), ("image/png", "png"), ("image/jpeg; charset=binary", "jpeg"),
    ("IMAGE/PNG", "png"), ("application/x-image", "jpeg"), ("application/x-image", "png"),
    ("image/jpg", "jpeg"),
])
def test_accepted_content_types(client, jpeg_body, png_body, content_type, body_kind):
    resp = post(client, jpeg_body if body_kind == "jpeg" else png_body, content_type=content_type)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "image/gif",
                                          "application/json", None])
def test_unsupported_content_type_is_415(client, jpeg_body, content_type):
    assert_error(post(client, jpeg_body, content_type=content_type), 415, "image/jpeg")


# ---- custom attributes ---------------------------------------------------------------------------


def test_options_reach_the_engine(client, engine, jpeg_body):
    attrs = {"score_threshold": 0.25, "max_detections": 7, "classes": ["cat", "Dog"], "future_key": 1}
    resp = post(client, jpeg_body, attrs=attrs)
    assert resp.status_code == 200
    assert engine.calls[-1] == {"shape": (120, 160, 3), "score_threshold": 0.25, "max_detections": 7,
                                "class_ids": [2, 3]}
    assert resp.json["labels"] == ["cat 61%", "dog 30%"]


def test_defaults_reach_the_engine(client, engine, jpeg_body):
    post(client, jpeg_body)
    assert engine.calls[-1] == {"shape": (120, 160, 3), "score_threshold": 0.5, "max_detections": 100,
                                "class_ids": None}


def test_class_names_occurring_twice_map_to_every_index():
    options = parse_custom_attributes('{"classes": ["N/A", "person"]}', FAKE_CLASSES + ["N/A"])
    assert options.class_ids == (1, 4, 6)


def test_unknown_class_names_are_a_400_naming_each_and_listing_the_models_classes(client, engine, jpeg_body):
    resp = post(client, jpeg_body, attrs={"classes": ["cat", "unicorn", "Pedestrian"]})
    assert_error(resp, 400, "classes", '["unicorn", "Pedestrian"]',
                 '["person", "cat", "dog", "traffic light"]')  # as /ping lists them
    assert "N/A" not in resp.json["error"] and "__background__" not in resp.json["error"]
    assert engine.calls == []


def test_include_scores_and_class_ids(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": ["scores", "class_ids"], "score_threshold": 0.1})
    body = resp.json
    assert list(body) == ["labels", "boxes", "scores", "class_ids"]
    assert body["scores"] == pytest.approx([0.953, 0.61, 0.3])
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["class_ids"] == [1, 2, 3]


def test_include_masks_as_coco_rle(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": ["masks"], "score_threshold": 0.1})
    masks = resp.json["masks"]
    expected = fake_detections(120, 160).masks
    assert len(masks) == 3
    for rle, mask in zip(masks, expected):
        assert rle["size"] == [120, 160]
        np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}),
                                      mask.astype(np.uint8))


def test_include_masks_as_polygons(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": ["masks"], "mask_format": "polygon"})
    masks = resp.json["masks"]
    assert len(masks) == 2
    for polygons in masks:
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    xs = masks[0][0][0::2]
    assert 40 <= min(xs) and max(xs) <= 120  # the person disc lies inside its box


@pytest.mark.parametrize("attrs, words", [
    ("{not json", ["not valid JSON"]),
    ('["response_type", "json"]', ["JSON object"]),
    ('"json"', ["JSON object"]),
    ({"response_type": "gif"}, ["response_type"]),
    ({"response_type": 3}, ["response_type"]),
    ({"score_threshold": -0.1}, ["score_threshold"]),
    ({"score_threshold": 1.5}, ["score_threshold"]),
    ({"score_threshold": "0.5"}, ["score_threshold"]),
    ({"score_threshold": True}, ["score_threshold"]),
    ({"max_detections": 0}, ["max_detections"]),
    ({"max_detections": 1001}, ["max_detections", "1000"]),
    ({"max_detections": 2.5}, ["max_detections"]),
    ({"max_detections": "3"}, ["max_detections"]),
    ({"classes": ["cat", "unicorn"]}, ["classes", "unicorn"]),
    ({"classes": []}, ["classes"]),
    ({"classes": 5}, ["classes"]),
    ({"classes": ["cat", 5]}, ["classes"]),
    ({"include": ["masks", "polygons"]}, ["include", "polygons"]),
    ({"include": {"masks": True}}, ["include"]),
    ({"mask_format": "bitmap"}, ["mask_format"]),
])
def test_bad_custom_attributes_are_400_naming_the_key(client, engine, jpeg_body, attrs, words):
    assert_error(post(client, jpeg_body, attrs=attrs), 400, *words)
    assert engine.calls == []


def test_custom_attributes_over_1024_chars_is_400(client, jpeg_body):
    attrs = json.dumps({"response_type": "json", "padding": "x" * 1000})
    assert len(attrs) > 1024
    assert_error(post(client, jpeg_body, attrs=attrs), 400, "1024")


def test_valid_edge_values(client, engine, jpeg_body):
    for attrs in ({"score_threshold": 0}, {"score_threshold": 1}, {"max_detections": 1000},
                  {"max_detections": 1.0}, {"response_type": ""}, {"response_type": " PNG "},
                  {"classes": ["cat"]}, {"include": []}, {"mask_format": "Polygons"}, {}):
        assert post(client, jpeg_body, attrs=attrs).status_code == 200, attrs


# ---- the type rule: one JSON type per key, never coerced ---------------------------------------

# key -> (the words its 400 names the type with, a valid value, values of every other JSON type)
ATTRIBUTE_CASES = {
    "response_type": ("a string", "png", [3, 0.5, True, ["json"], {"type": "json"}]),
    "score_threshold": ("a number", 0.25, ["0.5", True, False, [0.5], {"value": 0.5}]),
    "max_detections": ("an integer", 7, ["3", True, 2.5, [3], {"n": 3}]),
    "classes": ("a list of strings", ["cat"], ["cat", 5, True, {"cat": True}, ["cat", 5], [["cat"]]]),
    "include": ("a list of strings", ["scores"], ["masks", 1, False, {"masks": True}, [1]]),
    "mask_format": ("a string", "polygon", [1, True, ["rle"], {"format": "rle"}]),
}
WRONG_TYPES = [(key, value, words) for key, (words, _, values) in ATTRIBUTE_CASES.items() for value in values]


@pytest.mark.parametrize("key, value, words", WRONG_TYPES, ids=[f"{k}={json.dumps(v)}" for k, v, _ in WRONG_TYPES])
def test_wrong_json_type_is_400_naming_the_key_and_the_type(client, engine, jpeg_body, key, value, words):
    assert_error(post(client, jpeg_body, attrs={key: value}), 400, key, words, json.dumps(value))
    assert engine.calls == []


@pytest.mark.parametrize("key", list(ATTRIBUTE_CASES))
def test_each_attribute_accepts_its_type_and_null_means_absent(key):
    """null (what json.dumps writes for None) is the default, for every key alike."""
    words, valid, _ = ATTRIBUTE_CASES[key]
    assert parse_custom_attributes(json.dumps({key: None}), FAKE_CLASSES) == parse_custom_attributes("{}", FAKE_CLASSES)
    assert parse_custom_attributes(json.dumps({key: valid}), FAKE_CLASSES) != parse_custom_attributes("{}", FAKE_CLASSES)


def test_every_parsed_attribute_has_a_type_case():
    from server.negotiation import ATTRIBUTE_TYPES

    assert set(ATTRIBUTE_TYPES) == set(ATTRIBUTE_CASES)


@pytest.mark.parametrize("text", ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "Infinity", "NaN"])
def test_out_of_range_numbers_are_400_not_500(client, jpeg_body, text):
    """An integer too big for a float once made score_threshold's check raise OverflowError."""
    for key in ("score_threshold", "max_detections"):
        assert_error(post(client, jpeg_body, attrs=f'{{"{key}": {text}}}'), 400, key)


def test_unknown_keys_are_ignored_whatever_their_type():
    assert parse_custom_attributes('{"future": "x", "other": [1, {"a": null}]}', FAKE_CLASSES) == \
        parse_custom_attributes("{}", FAKE_CLASSES)
