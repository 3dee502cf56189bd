"""server/config.py: the settings table, from the environment."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import server.__main__ as serve_main
from engine import default_threads, environment
from engine.backends import BACKEND_CHOICES, PRECISIONS
from server import ServerConfig
from server.config import SPARE_HTTP_THREADS
from server_fixtures import PNG

REPO = Path(__file__).resolve().parents[1]


# ---- configuration -------------------------------------------------------------------------------------


def test_engine_settings_come_from_the_settings_table_too():
    config = ServerConfig.from_env({"MASKRCNN_BACKEND": "onnxruntime-cpu", "MASKRCNN_THREADS": "6",
                                    "MASKRCNN_CUDA_TF32": "1", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    assert (config.backend, config.threads, config.cuda_tf32) == ("onnxruntime-cpu", 6, True)
    assert config.threads_per_worker(available=2) == 3  # MASKRCNN_THREADS shared by the workers
    assert ServerConfig.from_env({"MASKRCNN_PRECISION": " BF16 "}).precision == "bf16"
    defaults = ServerConfig.from_env({})
    assert (defaults.backend, defaults.threads, defaults.cuda_tf32, defaults.precision) == ("auto", None, False, None)
    assert defaults.threads_per_worker(available=2) == 2
    for env, message in [({"MASKRCNN_THREADS": "0"}, "threads must be at least 1"),
                         ({"MASKRCNN_THREADS": "two"}, "MASKRCNN_THREADS='two' is not a valid int"),
                         ({"MASKRCNN_CUDA_TF32": "yes"}, "MASKRCNN_CUDA_TF32='yes' must be 0 or 1"),
                         ({"MASKRCNN_PRECISION": "fp16"}, "precision must be fp32 or bf16, got 'fp16'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ServerConfig.from_env(env)


def test_every_variable_the_settings_table_reads_is_in_its_table_and_the_configuration_docs():
    import server.config as config_module

    source = Path(config_module.__file__).read_text()
    table, code = source.split('"""', 2)[1], source.split('"""', 2)[2]
    read = set(re.findall(r"\benv\.([A-Z][A-Z0-9_]+)", code))
    assert {"MASKRCNN_THREADS", "MASKRCNN_HTTP_THREADS", "SAGEMAKER_MODEL_SERVER_WORKERS"} <= read, read
    for name in sorted(read):
        assert getattr(environment, name) == name
        assert name in table, f"{name} is read but not in server/config.py's table"


def test_every_environment_variable_is_named_once_and_documented():
    """engine.environment names each variable once (its value is its name); the
    configuration docs list every one, and no module spells a name as a string of its own."""
    docs = (REPO / "docs" / "configuration.md").read_text()
    names = {k: v for k, v in vars(environment).items() if k.isupper()}
    assert names and all(k == v for k, v in names.items()), names
    for name in names:
        assert f"`{name}`" in docs, f"{name} is not in docs/configuration.md"
    ours = [name for name in names if name.startswith(("MASKRCNN_", "SAGEMAKER_", "SM_"))]
    for package in ("engine", "server", "provision", "deploy"):
        for module in (REPO / package).rglob("*.py"):
            if module.name == "environment.py":
                continue
            source = module.read_text()
            spelled = [name for name in ours if f'"{name}"' in source or f"'{name}'" in source]
            assert not spelled, f"{module.relative_to(REPO)} spells {spelled}: import them from engine.environment"


# ---- serve's flags over the environment ----------------------------------------------------------------


def flags(*argv: str, environ: dict | None = None) -> ServerConfig:
    return serve_main.server_config(serve_main.parse_args(list(argv)), environ or {})


def test_serve_threads_sets_inference_threads_over_the_environment():
    assert flags("--threads", "1").threads == 1
    assert flags("--threads", "1", environ={"MASKRCNN_THREADS": "3"}).threads == 1  # the flag wins
    assert flags(environ={"MASKRCNN_THREADS": "3"}).threads == 3
    config = flags("--threads", "1", environ={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    assert config.threads_per_worker(available=8) == 1  # shared by the workers, as MASKRCNN_THREADS is
    assert config.http_threads == ServerConfig(workers=2).http_threads  # HTTP threads untouched
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        flags("--threads", "0")


def test_http_threads_come_from_their_own_flag_and_variable():
    default = flags()
    assert default.http_threads == default.workers + default.queue_size + SPARE_HTTP_THREADS
    assert default.threads is None
    assert flags("--http-threads", "20").http_threads == 20
    assert flags(environ={"MASKRCNN_HTTP_THREADS": "16"}).http_threads == 16
    assert flags("--http-threads", "20", environ={"MASKRCNN_HTTP_THREADS": "16"}).http_threads == 20
    assert flags("--http-threads", "20").threads is None  # inference threads untouched
    # as the old --threads was checked: more than workers + queue, or /ping could starve
    too_few = "HTTP threads (9) must exceed inference workers (1) + queue size (8), or /ping could starve"
    with pytest.raises(ValueError, match=re.escape(f"invalid server setting from the flags: {too_few}")):
        flags("--http-threads", "9")
    with pytest.raises(ValueError, match=re.escape(f"invalid server setting from the environment: {too_few}")):
        flags(environ={"MASKRCNN_HTTP_THREADS": "9"})
    assert flags(environ={"MASKRCNN_HTTP_THREADS": "4", "MASKRCNN_QUEUE_SIZE": "2"}).http_threads == 4


def test_threads_above_the_usable_cores_warn_that_http_threads_are_http_threads(caplog):
    cores = default_threads()
    with caplog.at_level(logging.WARNING, logger="server.__main__"):
        flags("--threads", str(cores))
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="server.__main__"):
        config = flags("--threads", str(cores + 1))
    assert config.threads == cores + 1  # still what was asked for
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelname == "WARNING" and "\n" not in message
    assert f"--threads {cores + 1} is more than the {cores} usable cores" in message
    assert "--threads sets inference threads" in message and "HTTP threads are --http-threads" in message


@pytest.mark.parametrize("flag, value, choices", [("--backend", "bogus", BACKEND_CHOICES),
                                                  ("--precision", "fp16", PRECISIONS)])
def test_enum_flags_list_their_choices(capsys, flag, value, choices):
    with pytest.raises(SystemExit) as exit_info:
        serve_main.parse_args([flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: invalid choice: '{value}'" in error
    assert all(f"'{choice}'" in error for choice in choices), error


def test_the_backend_from_the_environment_is_one_of_the_choices():
    assert ServerConfig.from_env({"MASKRCNN_BACKEND": "openvino"}).backend == "openvino"
    with pytest.raises(ValueError, match="backend must be one of auto, tensorrt, onnxruntime-cuda, openvino, "
                                         "onnxruntime-cpu, got 'bogus'"):
        ServerConfig.from_env({"MASKRCNN_BACKEND": "bogus"})


def test_config_from_environment():
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "MASKRCNN_QUEUE_SIZE": "3",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "image/PNG",
           "MASKRCNN_MAX_MEGAPIXELS": "12.5", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10",
           "MASKRCNN_MAX_BODY_BYTES": "12345"}
    config = ServerConfig.from_env(env)
    assert (config.workers, config.queue_size, config.timeout_s) == (2, 3, 30.0)
    assert config.default_accept == PNG and config.max_megapixels == 12.5
    assert config.max_body_bytes == 12345  # the exact figure wins over the MiB one
    assert config.http_threads == 2 + 3 + 2
    assert ServerConfig.from_env({}) == ServerConfig()


@pytest.mark.parametrize("env, word", [
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS"),
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "workers"),
    ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}, "default_accept"),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "nan"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    ({"MASKRCNN_QUEUE_SIZE": "-1"}, "queue_size"),
])
def test_bad_environment_names_the_setting(env, word):
    with pytest.raises(ValueError, match=word):
        ServerConfig.from_env(env)
