"""Test tiers: what each test module's tests need, as pytest markers, and what the markers mean.

conftest.py applies this table when the tests are collected, so the test modules carry no
tier markers themselves. Every test module must be listed in MODULES: collection stops when
one is missing (classify a new module here) or when the table names a module, a test or a
fixture that is gone.

    ./test.sh -m "not slow"        the quick loop: the pure unit tests, in-process, no exports
    ./test.sh                      everything (what CI runs)
    ./test.sh -m "not docker and not browser"     or any other combination

A test's markers are, together:
  * its module's entry: the markers of the whole module, or, for a test whose name matches a
    pattern in `tests`, that pattern's markers instead (so a module of servers can keep its
    pure tests quick, and a mostly pure module can name its heavy tests);
  * the markers of the fixtures it uses, directly or through other fixtures: FIXTURES for
    the shared ones (conftest.py's models), the entry's `fixtures` for the module's own;
  * what those markers imply (IMPLIES): everything that starts processes, exports models or
    needs a GPU, Docker or a browser is also `slow`; an export also needs `torch`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# name -> meaning (registered by conftest.py; `pytest --markers` lists them)
MARKERS = {
    "slow": "not in the quick loop (-m \"not slow\"): every test with a marker that implies it, and "
            "in-process tests of many seconds",
    "server": "starts the real `serve` process (harness/server.py) and talks HTTP to it",
    "docker": "builds or runs the serving image: needs a Docker engine (skips without one unless "
              "MASKRCNN_REQUIRE_DOCKER=1)",
    "browser": "drives headless Chromium with Selenium (chromium, chromium-driver) against the served web page",
    "gpu": "runs on an NVIDIA GPU (CUDA, onnxruntime-gpu, TensorRT); skips without one",
    "export": "builds and exports a model with torch (exporter, build_engine.py, the small and R50 "
              "model directories), in the test process or a child",
    "torch": "needs torch and torchvision (the export extra): as a reference, to build a model or to export",
    "subprocess": "runs a command in a child process: the command-line tools (python -m engine, "
                  "build_engine.py, deploy, serve failing to start), pip, python -c probes",
    "moto": "drives the deploy tool against a moto server (the AWS stand-in, a child process)",
    "prometheus": "runs prometheus or promtool (skips without them unless MASKRCNN_REQUIRE_PROMETHEUS=1)",
    "newman": "runs Postman's newman (Node.js) against the server (skips without it unless MASKRCNN_REQUIRE_NEWMAN=1)",
}

# a marker -> the markers it brings along
IMPLIES = {
    "server": ("slow",),
    "docker": ("slow",),
    "browser": ("slow",),
    "gpu": ("slow",),
    "export": ("slow", "torch"),
    "subprocess": ("slow",),
    "moto": ("slow",),
    "prometheus": ("slow",),
    "newman": ("slow",),
}

# fixtures of conftest.py (and the deploy tests' moto) -> the markers of every test that uses them
FIXTURES = {
    "torch_cpu": ("torch",),
    "small_model": ("torch",),
    "r50_models": ("torch",),
    "small_model_dir": ("export",),
    "r50_model_dirs": ("export",),
    "moto": ("moto",),  # tests/test_deploy.py's, shared by the other deploy modules
}


class Tier:
    """One module's entry. `markers` apply to all its tests except those whose name matches a
    pattern in `tests` (pattern -> markers, `*` the only wildcard; a pattern without `[` is
    matched against the name without its parameters); `fixtures` (fixture name -> markers) add
    to the tests that use the module's own fixtures."""

    def __init__(self, *markers: str, tests: dict[str, Iterable[str]] | None = None,
                 fixtures: dict[str, Iterable[str]] | None = None):
        self.markers = tuple(markers)
        self.tests = {pattern: tuple(ms) for pattern, ms in (tests or {}).items()}
        self.fixtures = {name: tuple(ms) for name, ms in (fixtures or {}).items()}

    def markers_of(self, name: str, fixturenames: Iterable[str]) -> set[str]:
        matched = [ms for pattern, ms in self.tests.items() if _matches(pattern, name)]
        found = set().union(*matched) if matched else set(self.markers)
        for fixture in fixturenames:
            found.update(self.fixtures.get(fixture, ()), FIXTURES.get(fixture, ()))
        return _with_implied(found)


UNIT = Tier()  # pure unit tests, in-process: the quick loop

MODULES: dict[str, Tier] = {
    "test_app": UNIT,
    "test_backend_base": UNIT,
    "test_backends": Tier(tests={"test_engine_backends_command_*": ["subprocess"]}),
    "test_build_engine": Tier("subprocess", tests={
        "test_unreachable_reason_is_bounded_when_the_network_hangs": [],
        "test_private_initializers_keep_the_graph_and_drop_shared_identities": [],  # small_model_dir: export
        "test_failed_export_leaves_no_directory": ["export"],
        "test_resize_rule_reaches_model_json": ["export"],
        "test_int8_export_quantizes_every_graph_and_still_segments": ["export", "subprocess"],
        "test_coco_weights_in_the_torch_hub_cache_are_used_without_a_download": ["export", "subprocess"],
        "test_random_weights_build_a_loadable_untrained_model": ["export", "subprocess"],
        "test_state_dict_file_published_layout_loads_and_bad_keys_are_listed": ["export", "subprocess"],
    }),
    "test_chunking": UNIT,  # the demo model in-process; the small model's test is export (fixture)
    "test_config": UNIT,
    "test_container": Tier("docker"),
    "test_cuda_memory": UNIT,  # the no-GPU paths; skips where there is a GPU
    "test_demo_accuracy": UNIT,
    "test_demo_e2e": Tier("server"),
    "test_demo_model": Tier(tests={"test_training_batches_are_deterministic_and_fit_the_model_frame": ["torch"]}),
    "test_demo_shapes": UNIT,
    "test_deploy": Tier("subprocess", fixtures={"serve": ["server"]}, tests={
        "test_package_leaves_out_pycache_and_links_that_leave_the_directory": [],
        "test_failure_line_is_one_line": [],
        "test_wait_*": [],
    }),
    "test_deploy_async": Tier("subprocess", tests={
        "test_wait_for_answer_*": [],
        "test_failure_text_is_one_line": [],
        "test_async_environment_matches_the_server_settings": [],
        "test_async_queue_holds_every_request_sagemaker_may_hand_an_instance": [],
        "test_the_server_takes_the_photos_the_async_model_allows": ["server"],
    }),
    "test_deploy_multi_model": Tier("subprocess", fixtures={"multi_model_server": ["server"]}),
    "test_deploy_names": Tier("subprocess"),
    "test_detectron2": Tier("torch", fixtures={"subjects": ["export", "subprocess"]}, tests={
        "test_readme_detectron2_recipe_end_to_end": ["server", "subprocess"],
    }),
    "test_detectron2_config": Tier("torch"),
    "test_detectron2_image_ops": Tier("torch"),
    # the docs' examples, run against a server, but for the Prometheus ones (promtool)
    "test_docs_examples": Tier("server", "subprocess", tests={
        "*prometheus*": ["prometheus", "subprocess"],
        "*alert*": ["prometheus", "subprocess"],
    }),
    "test_engine_cli": Tier("subprocess"),
    "test_engine_contract": Tier(tests={  # the rest run the small model in-process: export (fixture)
        "test_no_engine_or_server_module_imports_torch": ["subprocess"],
        "test_predict_command_line": ["subprocess"],
    }),
    "test_fuzz": Tier(fixtures={"server": ["server"]}, tests={"test_property": ["subprocess"]}),
    "test_gpu_backends": Tier("gpu"),
    "test_harness": UNIT,
    "test_image_io": UNIT,
    "test_inference": UNIT,
    "test_int8_arithmetic": Tier(tests={
        "test_the_probe_tells_saturating_openvino_from_exact": ["subprocess"],
        "test_seven_bit_weights_are_exact_where_products_saturate": ["subprocess"],
        "test_both_runtimes_saturate_on_an_emulated_avx2_only_cpu": ["subprocess"],  # under qemu-user
    }),
    "test_mask_encoding": UNIT,
    "test_masks": Tier("torch"),
    "test_metrics": Tier(fixtures={"prometheus_binary": ["prometheus"], "metered_server": ["server"]}),
    "test_model_config": UNIT,
    "test_multi_model": Tier(fixtures={"mme_server": ["server"]}, tests={
        "test_507_from_the_real_server_under_a_small_memory_budget": ["server"],
        "test_sigterm_drains_multi_model_invocations": ["server"],
        "test_a_model_flag_in_multi_model_mode_is_a_one_line_error": ["subprocess"],
    }),
    "test_named_models": Tier(tests={
        "test_offline_*": ["subprocess"],
        "test_a_missing_weights_file_is_one_line": ["subprocess"],
        "test_weights_need_a_model_name": ["subprocess"],
        "test_weights_file_builds_the_named_model_and_replacing_it_rebuilds": ["export", "subprocess"],
        "test_serve_sh_coco_installs_builds_serves_and_then_reuses": ["server", "export", "subprocess"],
    }),
    "test_negotiation": UNIT,
    "test_onnxruntime_cuda": UNIT,  # its IOBinding flow on the CPU; the small model: export (fixture)
    "test_openapi": Tier(
        fixtures={"demo_server": ["server"], "r50_server": ["server", "export"], "multi_model_server": ["server"]},
        tests={
            "test_get_openapi_json_imports_no_torch_while_loading_or_after": ["subprocess"],
            # the server fixture is taken by name (request.getfixturevalue)
            "test_schemathesis_run_with_every_check_finds_nothing": ["server", "subprocess"],
            "test_schemathesis_run_with_every_check_finds_nothing[r50_server]": ["server", "subprocess", "export"],
            "test_schemathesis_run_on_a_multi_model_server_finds_nothing": ["subprocess"],
            "test_a_load_past_the_memory_budget_is_a_507_as_documented": ["server"],
        }),
    "test_openvino": Tier(tests={"test_cli_lists_openvino_with_its_precisions_and_predicts_with_it": ["subprocess"]}),
    "test_own_models": Tier("torch", fixtures={"tutorial": ["slow"], "own_models": ["export"]}, tests={
        "test_a_whole_pickled_model_needs_trust_pickle": ["torch", "subprocess"],
        "test_readme_tutorial_recipe_end_to_end": ["server", "export", "subprocess"],
        "test_int8_build_of_a_custom_backbone_through_the_cli": ["export", "subprocess"],
    }),
    "test_parity": UNIT,  # every test runs an exported model: export (fixtures)
    "test_postman": Tier("server", "newman", tests={"test_collection_passes[coco]": ["server", "newman", "export"]}),
    "test_postprocess_units": Tier("torch"),
    "test_prometheus_harness": Tier(fixtures={"exporter": ["prometheus", "subprocess"], "prom": ["prometheus"]}),
    "test_readme_examples": Tier("server", "subprocess"),
    "test_render": UNIT,
    "test_roi_align": Tier("torch"),
    "test_serve_model_dir": Tier(tests={"test_the_dockerfiles_install_carries_the_demo_model_and_the_web_page": ["subprocess"]}),
    "test_server_e2e": Tier("server"),
    "test_serving": UNIT,  # waitress in this process on loopback, a fake engine
    "test_slow_clients": Tier("server"),
    "test_stage_selection": Tier("torch"),
    "test_tensorrt_build": Tier(tests={"test_build_engine_tensorrt_without_gpu_fails_with_one_line": ["subprocess"]}),
    "test_tensorrt_plans": UNIT,
    "test_torch_kernels": Tier("torch"),
    "test_web_page": Tier("browser", "server"),
}


def markers_for(module: str, name: str, fixturenames: Iterable[str]) -> set[str]:
    """The markers of test `name` (with its parameters, as pytest names it) of `module`."""
    return MODULES[module].markers_of(name, fixturenames)


def problems(tests_dir: Path) -> list[str]:
    """What is wrong with the table against the test modules on disk (empty when nothing)."""
    found = []
    on_disk = {path.stem: path for path in tests_dir.glob("test_*.py")}
    for module in sorted(on_disk.keys() - MODULES.keys()):
        found.append(f"{module}.py is not classified: add it to MODULES in tests/tiers.py")
    for module in sorted(MODULES.keys() - on_disk.keys()):
        found.append(f"MODULES names {module}, which is not a test module any more")
    for module, tier in sorted(MODULES.items()):
        if module not in on_disk:
            continue
        text = on_disk[module].read_text()
        tests = set(re.findall(r"^(?:async )?def (test_\w+)", text, re.M))
        used = [*tier.markers, *(m for ms in tier.tests.values() for m in ms),
                *(m for ms in tier.fixtures.values() for m in ms)]
        for marker in sorted(set(used) - MARKERS.keys()):
            found.append(f"{module}: {marker!r} is not a marker of tests/tiers.py's MARKERS")
        for pattern in tier.tests:
            if not any(_matches(pattern.partition("[")[0], test) for test in tests):
                found.append(f"{module}: no test matches {pattern!r}")
        for fixture in tier.fixtures:
            if not re.search(rf"\b{re.escape(fixture)}\b", text):
                found.append(f"{module}: no fixture {fixture!r}")
    for marker in {m for ms in [*IMPLIES.values(), *FIXTURES.values(), IMPLIES.keys()] for m in ms} - MARKERS.keys():
        found.append(f"{marker!r} is not a marker of tests/tiers.py's MARKERS")
    return found


def _matches(pattern: str, name: str) -> bool:
    if "[" not in pattern:
        name = name.partition("[")[0]
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


def _with_implied(markers: set[str]) -> set[str]:
    todo, found = list(markers), set()
    while todo:
        marker = todo.pop()
        if marker not in found:
            found.add(marker)
            todo.extend(IMPLIES.get(marker, ()))
    return found
