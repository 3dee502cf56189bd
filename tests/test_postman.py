"""postman_collection.json, run by newman (Postman's command-line runner) against the real
`serve` process: on the bundled demo model and on a model with COCO's class names, every
request runs and every assertion the collection defines passes.

The collection is a user-facing artefact; this keeps it from drifting away from the server.
Its POST requests send the file the collection names (horse-guard.jpg), here a photograph
from scikit-image written into newman's working directory. Without newman every test skips
with the reason, except where $MASKRCNN_REQUIRE_NEWMAN=1 (CI): there it is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.server import REPO, running_server
from helpers import photo
from server_fixtures import encode_pil

REQUIRE_ENV = "MASKRCNN_REQUIRE_NEWMAN"
COLLECTION = REPO / "postman_collection.json"
# A seeded random R50 at a small resize: the collection needs COCO's class names, not its accuracy.
COCO_MODEL_KWARGS = {"min_size": 320, "max_size": 480}
NEWMAN_TIMEOUT_S = 300.0


def collection_items(collection: dict) -> list[dict]:
    """The collection's requests, in run order (folders flattened, as newman runs them)."""
    items = []
    for entry in collection["item"]:
        items.extend(collection_items(entry) if "item" in entry else [entry])
    return items


def defined_assertions(item: dict) -> int:
    """The pm.test calls in an item's test script. The collection keeps each one unconditional,
    at the top level of its script, so this is the number newman must report."""
    return sum(line.count("pm.test(") for event in item.get("event", []) if event["listen"] == "test"
               for line in event["script"]["exec"])


def body_files(items: list[dict]) -> set[str]:
    return {item["request"]["body"]["file"]["src"] for item in items
            if item["request"].get("body", {}).get("mode") == "file"}


@pytest.fixture(scope="module")
def newman() -> str:
    path = shutil.which("newman")
    if path is None:
        reason = ("newman is not on PATH (with Node.js: npm install -g newman; "
                  ".ci/run does)")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def collection() -> dict:
    return json.loads(COLLECTION.read_text())


@pytest.fixture(scope="module")
def working_dir(collection, tmp_path_factory) -> Path:
    """newman's --working-dir: a real photo under every file name the collection's bodies use."""
    names = body_files(collection_items(collection))
    assert names, "the collection sends no image file"
    path = tmp_path_factory.mktemp("postman")
    jpeg = encode_pil(photo("chelsea"), "JPEG", quality=90)
    for name in names:
        (path / name).write_bytes(jpeg)
    return path


@pytest.fixture(scope="module")
def coco_model_dir(torch_cpu, tmp_path_factory) -> Path:
    """A seeded random torchvision R50-FPN exported with COCO's 91 class names."""
    from exporter import export
    from exporter.weights import coco_class_names, random_model

    arch = "maskrcnn_resnet50_fpn"
    path = tmp_path_factory.mktemp("models") / "coco-random"
    export(random_model(arch, seed=0, model_kwargs=COCO_MODEL_KWARGS), path, coco_class_names(), arch=arch,
           name="coco-random", quiet=True, weights_info={"source": "random", "seed": 0, "trained": False})
    return path


@pytest.fixture(scope="module", params=["demo", "coco"])
def server(request, newman, tmp_path_factory):
    """The real server on the demo model, then on the COCO-class model (newman first, so that
    a machine without it skips before any model is exported or served)."""
    model_dir = request.getfixturevalue("demo_model_dir" if request.param == "demo" else "coco_model_dir")
    yield from running_server(model_dir, tmp_path_factory.mktemp(f"serve-{request.param}"))


def test_collection_passes(server, newman, collection, working_dir, tmp_path):
    report_path = tmp_path / "newman.json"
    command = [newman, "run", str(COLLECTION), "--env-var", f"baseUrl={server.url}",
               "--working-dir", str(working_dir), "--reporters", "cli,json",
               "--reporter-json-export", str(report_path), "--color", "off", "--timeout-request", "120000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=NEWMAN_TIMEOUT_S)
    output = f"{result.stdout}\n{result.stderr}"[-8000:]
    assert report_path.is_file(), f"newman wrote no report (exit {result.returncode}):\n{output}"
    run = json.loads(report_path.read_text())["run"]

    items = collection_items(collection)
    # one entry per request sent, a pre-request script's pm.sendRequest included: both under the
    # item's execution id, the same record twice
    executions = list({e["id"]: e for e in run["executions"]}.values())
    assert run["stats"]["items"]["total"] == len(items), output
    assert [e["item"]["name"] for e in executions] == [item["name"] for item in items], output
    for execution in executions:
        name = execution["item"]["name"]
        assert "requestError" not in execution, f"{name}: {execution['requestError']}\n{output}"
        assert "response" in execution, f"{name}: no response\n{output}"
    failures = [f"{f['source'].get('name', '?')}: {f['error'].get('test', '')} {f['error']['message']}"
                for f in run["failures"]]
    assert not failures, "\n".join(failures) + f"\n{output}"
    stats = run["stats"]
    for part in ("requests", "testScripts", "prerequestScripts", "assertions"):
        assert stats[part]["failed"] == 0, f"{part}: {stats[part]}\n{output}"
    assert run.get("error") is None, f"{run['error']}\n{output}"
    # a request whose script stopped early, or a test skipped, shows here as a shortfall
    assert stats["assertions"]["total"] == sum(map(defined_assertions, items)), output
    for execution, item in zip(executions, items):
        ran = execution.get("assertions", [])
        assert len(ran) == defined_assertions(item), f"{item['name']}: {len(ran)} assertions ran\n{output}"
        assert not [a for a in ran if a.get("skipped")], f"{item['name']}: skipped assertions\n{output}"
    assert result.returncode == 0, output
    assert server.proc.poll() is None, server.log()
