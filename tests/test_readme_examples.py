"""The client examples of README.md and docs/api.md, run as written against the real server
(the bundled demo model, as `./serve.sh` serves it on a fresh machine), so they cannot drift
from what works.

Each example is taken from its page by the code block that follows its heading text; only
the server's address is replaced (the pages say http://localhost:8080). The examples run
in a scratch folder that holds the photos they name, with no AWS settings in the
environment: whatever region and credentials they need, they must say themselves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.image_io import decode_image
from harness.server import REPO, ServerProcess
from server_fixtures import encode_pil

README_URL = "http://localhost:8080"


def readme_block(after: str, language: str, page: str = "README.md") -> str:
    """The first ```language block after the text `after` in `page` (README.md, or docs/X.md)."""
    text = (REPO / page).read_text()
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M).search(text, start)
    assert match, f"no {language} block after {after!r} in {page}"
    return match.group(1)


def run_readme_setup(after: str, cwd, page: str = "README.md") -> Path:
    """The bash block after `after` in `page`, whose last line is `serve --model-dir DIR`, run
    line by line in `cwd` up to that line (`python` is this Python, build_engine.py the
    project's, comments and line continuations as bash reads them): the DIR it would serve."""
    import shlex

    block = readme_block(after, "bash", page).replace("\\\n", " ")
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].startswith("serve --model-dir "), commands[-1]
    for line in commands[:-1]:
        argv = shlex.split(line)
        if argv[0] == "python":
            argv = [sys.executable, *(str(REPO / a) if a == "build_engine.py" else a for a in argv[1:])]
            result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
            assert result.returncode == 0, result.stderr
        else:
            subprocess.run(line, shell=True, cwd=cwd, check=True)
    return Path(cwd) / shlex.split(commands[-1])[-1]


def readme_boto3_answer(server_url: str, cwd) -> dict:
    """The README's boto3 example (the seed API's) run against `server_url` from `cwd`, which
    holds its horse-guard.jpg, without AWS settings: the JSON answer it prints."""
    client = readme_block("boto3, exactly as the seed API's examples", "python").replace(README_URL, server_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([sys.executable, "-c", client], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(None, tmp_path_factory.mktemp("readme") / "server.log", extra_env={"SM_MODEL_DIR": None})
    srv.wait_ready()
    yield srv
    srv.kill()


@pytest.fixture
def scratch(tmp_path):
    """A working folder with the photos the examples name, and an environment without AWS settings."""
    from skimage import data

    (tmp_path / "horse-guard.jpg").write_bytes(encode_pil(data.astronaut(), "JPEG", quality=90))  # 512x512
    (tmp_path / "photo.jpg").write_bytes(encode_pil(data.coffee(), "JPEG", quality=90))  # 600x400
    (tmp_path / "photo.png").write_bytes(encode_pil(data.chelsea(), "PNG"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-creds"))
    return tmp_path, env


def json_documents(text: str) -> list:
    """Every JSON value in `text`, written one after another (curl adds no newline)."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while pos < len(text.strip()):
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def test_readme_boto3_example_runs_as_written(server, scratch):
    folder, env = scratch
    code = readme_block("boto3, exactly as the seed API's examples", "python")
    assert README_URL in code
    result = subprocess.run([sys.executable, "-c", code.replace(README_URL, server.url)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert decode_image((folder / "horse-guard.segmented.jpg").read_bytes()).shape == (512, 512, 3)
    answer = ast.literal_eval(result.stdout.strip())  # print() of the parsed JSON
    assert set(answer) == {"labels", "boxes"} and len(answer["labels"]) == len(answer["boxes"]) > 0


def test_readme_curl_examples_run_as_written(server, scratch):
    folder, env = scratch
    script = readme_block("curl:", "bash", "docs/api.md")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(README_URL, server.url)], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, third = json_documents(result.stdout)
    assert set(first) == {"labels", "boxes"}
    assert {"labels", "boxes", "scores", "masks"} <= set(third)
    assert all(score > 0.7 for score in third["scores"])
    assert decode_image((folder / "photo.segmented.jpg").read_bytes()).shape == (400, 600, 3)


def test_readme_aws_cli_example_runs_as_written(server, scratch):
    if shutil.which("aws") is None:
        if os.environ.get("CI"):
            pytest.fail("the AWS CLI is missing (Debian: apt-get install awscli; .ci/run installs it)")
        pytest.skip("the AWS CLI is not installed (Debian: apt-get install awscli)")
    folder, env = scratch
    script = readme_block("AWS CLI:", "bash", "docs/api.md")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(README_URL, server.url)], cwd=folder,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads((folder / "out.json").read_text())
    assert set(answer) == {"labels", "boxes"} and len(answer["boxes"]) > 0
