"""server/config.py: the settings table, from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server import ServerConfig
from server_fixtures import PNG


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
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for name in sorted(set(re.findall(r'"((?:MASKRCNN|SAGEMAKER)_[A-Z0-9_]+)"', code))):
        assert name in table, f"{name} is read but not in server/config.py's table"
        assert name in docs, f"{name} is read but not in docs/configuration.md"


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
