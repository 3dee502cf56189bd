"""Shared fixtures: seeded torchvision models and their exported model directories; and the
test tiers (markers from tests/tiers.py's table, applied at collection).

Models are built once per session; the exports go to a session temporary directory. Plain
helpers (photos, the small model's builder, torchvision reference runs, matching) are in
helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tiers
from helpers import SMALL_CLASSES, build_small_maskrcnn


def pytest_configure(config):
    for name, meaning in tiers.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers added here
def pytest_collection_modifyitems(config, items):
    """Each test gets its markers from tests/tiers.py; a test module missing from the table
    (or an entry naming what is gone) stops the collection."""
    problems = tiers.problems(Path(__file__).resolve().parent)
    problems += sorted({f"{item.path.name} is not classified: add it to MODULES in tests/tiers.py"
                        for item in items if item.path.stem not in tiers.MODULES} - set(problems))
    if problems:
        raise pytest.UsageError("test tiers (tests/tiers.py):\n  " + "\n  ".join(problems))
    for item in items:
        for marker in sorted(tiers.markers_for(item.path.stem, item.name, item.fixturenames)):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def torch_cpu():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="session")
def small_model(torch_cpu):
    return build_small_maskrcnn(seed=0)


@pytest.fixture(scope="session")
def small_model_dir(small_model, tmp_path_factory):
    """An exported small custom Mask R-CNN (random weights): a real model directory."""
    from exporter import export

    path = tmp_path_factory.mktemp("models") / "small"
    export(
        small_model,
        path,
        SMALL_CLASSES,
        name="small-test",
        weights_info={"source": "random", "seed": 0, "trained": False},
        quiet=True,
    )
    return path


@pytest.fixture(scope="session")
def demo_model_dir():
    """The trained demo model committed at demo/model (served when no model dir is given)."""
    path = Path(__file__).resolve().parents[1] / "demo" / "model"
    if not (path / "model.json").is_file():
        pytest.fail(f"{path} is missing: the trained demo model is committed there "
                    "(train and export it with `python demo/train_shapes.py --export demo/model`)")
    return path


@pytest.fixture(scope="session")
def r50_models(torch_cpu):
    """Seeded random torchvision R50-FPN v1 and v2 models, built lazily, once."""
    from exporter.weights import random_model

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = random_model(arch, seed=0)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def r50_model_dirs(r50_models, tmp_path_factory):
    from exporter import export

    cache = {}

    def get(arch: str):
        if arch not in cache:
            path = tmp_path_factory.mktemp("models") / arch
            export(r50_models(arch), path, [f"class{i}" for i in range(91)], arch=arch, quiet=True,
                   weights_info={"source": "random", "seed": 0, "trained": False})
            cache[arch] = path
        return cache[arch]

    return get
