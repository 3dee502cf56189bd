"""The OpenAPI 3.1 document served at /openapi.json: server/openapi.json, made exact for the model.

server/openapi.json is hand-written and true of every model. The one input that depends on
the model, the `classes` custom attribute, is filled in once the engine is loaded:
`for_model(document, class_names)` returns a copy whose `classes` items are

* an enum of the names /ping lists (negotiation.selectable_classes), for people and tools, and
* a pattern of every spelling negotiation.parse_custom_attributes accepts: any of the model's
  names (the background and "N/A" placeholders too, which a trained model never detects)
  exactly or without regard to case, as str.casefold compares them ("ß" is "SS"),

and whose Ping schema states the `classes` list /ping answers. Until the engine is loaded the
generic document is served; every invocation is a 503 then.

A multi-model server (SAGEMAKER_MULTI_MODEL=true, server/models.py) serves another document,
the same for every model it loads: server/openapi.json with the hand-written fragment
server/openapi_multi_model.json merged in by `with_multi_model` (its paths replace or join the
base's: /ping, the invocation routes with their X-Amzn-SageMaker-Target-Model header, and the
/models routes; its components, tags and a paragraph of description are added).

The patterns are written for both dialects that read them: ECMA-262, which JSON Schema
names, and Python's re (jsonschema, hypothesis): characters escaped only where either needs
it, character classes of literal characters, no flags.

`OpenApiDocuments` serialises a model's document once and keeps it with its engine, so a
request costs an identity check.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import defaultdict
from pathlib import Path

from .negotiation import selectable_classes

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"  # hand-written; tests/test_openapi.py checks it
# hand-written too: what a multi-model server changes and adds (see with_multi_model)
MULTI_MODEL_OPENAPI_PATH = Path(__file__).resolve().parent / "openapi_multi_model.json"

# Every character with a case folding is in Unicode's planes 0 and 1 (planes 2 and up hold
# ideographs, tags, variation selectors and private use), so the scan below stops there.
_CASED_PLANES_END = 0x20000
_SYNTAX = frozenset("\\^$.|?*+()[]{}")  # escaped outside a character class
_CLASS_SYNTAX = frozenset("\\]^-[")  # escaped inside one


@functools.cache
def _folded_from() -> dict[str, tuple[str, ...]]:
    """Casefolded text -> the other characters that casefold to it ('k' -> 'K', 'K' (Kelvin);
    'ss' -> 'ß', 'ẞ'). Built once, on the first model document."""
    table = defaultdict(list)
    for code in range(_CASED_PLANES_END):
        char = chr(code)
        folded = char.casefold()
        if folded != char:
            table[folded].append(char)
    return {folded: tuple(chars) for folded, chars in table.items()}


def _one_of(chars) -> str:
    """A regex matching exactly one of `chars` (distinct single characters)."""
    if len(chars) == 1:
        return "\\" + chars[0] if chars[0] in _SYNTAX else chars[0]
    return "[" + "".join("\\" + c if c in _CLASS_SYNTAX else c for c in chars) + "]"


def _spellings(folded: str) -> str:
    """A regex matching exactly the strings s with s.casefold() == folded (a casefolded name).

    casefold works character by character, but one character may fold to several ('ß' ->
    'ss'), so a name splits into runs that no such fold crosses; each run is an alternation
    of its segmentations (rarely more than one) and the regex is the runs in order.
    """
    table = _folded_from()
    longest = max(map(len, table))
    joined = set()  # positions inside a multi-character fold: no run may start there
    for start in range(len(folded)):
        for length in range(2, longest + 1):
            if start + length <= len(folded) and folded[start:start + length] in table:
                joined.update(range(start + 1, start + length))

    def segmentations(start: int, end: int) -> str:
        if start == end:
            return ""
        options = []
        for length in range(1, min(longest, end - start) + 1):
            piece = folded[start:start + length]
            chars = ((piece,) if length == 1 else ()) + table.get(piece, ())
            if chars:
                options.append(_one_of(chars) + segmentations(start + length, end))
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"

    cuts = [i for i in range(len(folded) + 1) if i not in joined]
    return "".join(segmentations(a, b) for a, b in zip(cuts, cuts[1:]))


def class_name_pattern(class_names) -> str:
    """A JSON Schema pattern accepting exactly the `classes` entries the parser accepts for a
    model with these class names (index 0, the background, included). The names /ping lists
    come first: a generator that takes the first alternative takes a class it can detect."""
    names = dict.fromkeys(name.casefold() for name in [*selectable_classes(class_names), *class_names])
    return "^(?:" + "|".join(_spellings(name) for name in names) + ")$"


def for_model(document: dict, class_names) -> dict:
    """A copy of `document` (server/openapi.json) stating what this model's requests may name."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    listed = selectable_classes(class_names)
    accepted = [{"enum": listed}] if listed else []  # an enum may not be empty
    accepted.append({"pattern": class_name_pattern(class_names)})
    schemas["CustomAttributes"]["properties"]["classes"]["items"] = {"type": "string", "anyOf": accepted}
    schemas["Ping"]["properties"]["classes"]["const"] = listed
    return document


def with_multi_model(document: dict, fragment: dict) -> dict:
    """A copy of `document` (server/openapi.json) as a multi-model server serves it, with
    `fragment` (server/openapi_multi_model.json) merged in: each of the fragment's paths
    replaces the base's path item of that name or is added after them; each components
    section gains the fragment's entries (one of the same name replaces the base's); its tags
    are added; its info.description is a paragraph after the base's."""
    document = copy.deepcopy(document)
    fragment = copy.deepcopy(fragment)
    info = fragment.get("info", {})
    if "description" in info:
        document["info"]["description"] = document["info"].get("description", "") + "\n\n" + info["description"]
    tags = {tag["name"]: tag for tag in document.get("tags", [])}
    tags.update((tag["name"], tag) for tag in fragment.get("tags", []))
    if tags:
        document["tags"] = list(tags.values())
    document["paths"].update(fragment.get("paths", {}))
    components = document.setdefault("components", {})
    for section, entries in fragment.get("components", {}).items():
        components.setdefault(section, {}).update(entries)
    return document


def _dumps(document: dict) -> bytes:
    return json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"


class OpenApiDocuments:
    """The bytes of /openapi.json. Single-model: the packaged file until an engine is loaded,
    then the engine's own document, built on first use and kept with the engine it describes.
    Multi-model (`multi_model=True`): the packaged file with `fragment_path` merged in
    (with_multi_model), built once, whatever engine is asked about: the models differ in their
    classes, and the document names none of them."""

    def __init__(self, path: Path = OPENAPI_PATH, multi_model: bool = False,
                 fragment_path: Path = MULTI_MODEL_OPENAPI_PATH):
        self.multi_model = multi_model
        if multi_model:
            self._generic = _dumps(with_multi_model(json.loads(path.read_bytes()),
                                                    json.loads(fragment_path.read_bytes())))
        else:
            self._generic = path.read_bytes()  # a few kB
        self._built: tuple[object, bytes] | None = None

    def for_engine(self, engine) -> bytes:
        if engine is None or self.multi_model:
            return self._generic
        built = self._built  # one read: a concurrent rebuild replaces the pair whole
        if built is not None and built[0] is engine:
            return built[1]
        data = _dumps(for_model(json.loads(self._generic), engine.class_names))
        self._built = (engine, data)
        return data
