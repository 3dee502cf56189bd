"""The code blocks of docs/*.md that a user would run, run as written (only the server's
address is replaced), as tests/test_readme_examples.py does for the README."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prometheus_server import require_prometheus
from server_process import REPO, ServerProcess

DOCS_URL = "http://localhost:8080"


def docs_block(page: str, after: str, language: str) -> str:
    """The first ```language block after the text `after` in docs/<page>."""
    text = (REPO / "docs" / page).read_text()
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M).search(text, start)
    assert match, f"no {language} block after {after!r} in docs/{page}"
    return match.group(1)


def test_the_multi_model_local_recipe(tmp_path):
    block = docs_block("multi-model.md", "## Trying it locally", "bash").replace("\\\n", " ")
    lines = [line for line in block.splitlines() if line.strip()]
    # the first line starts the server in the background: started here as a process
    start = shlex.split(lines[0].rstrip("&"))
    assert start == ["SAGEMAKER_MULTI_MODEL=true", "serve", "--port", "8080"], lines[0]
    srv = ServerProcess(None, tmp_path / "server.log", extra_env={"SAGEMAKER_MULTI_MODEL": "true"}, args=["serve"])
    try:
        srv.wait_ready()
        outputs = []
        for line in lines[1:]:
            result = subprocess.run(line.replace(DOCS_URL, srv.url), shell=True, cwd=REPO, capture_output=True,
                                    text=True, timeout=120, check=True)
            outputs.append(json.loads(result.stdout))
        assert outputs[0]["modelName"] == "shapes" and outputs[0]["demo"] is True
        assert outputs[1] == {"models": [{"modelName": "shapes", "modelUrl": "demo/model"}]}

        code = docs_block("multi-model.md", "## Trying it locally", "python").replace(DOCS_URL, srv.url)
        shutil.copy(REPO / "server" / "static" / "sample.jpg", tmp_path / "shapes.jpg")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["labels"] and len(answer["labels"]) == len(answer["boxes"])
    finally:
        srv.kill()


def test_the_prometheus_scrape_config_is_valid(tmp_path):
    require_prometheus()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (it comes with Debian's prometheus package)")
    config = tmp_path / "prometheus.yml"
    config.write_text(docs_block("operating.md", "# Operating an endpoint", "yaml"))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_expressions_parse():
    """Each PromQL expression in the alarm table is one Prometheus accepts (promtool's rule check)."""
    require_prometheus()
    text = (REPO / "docs" / "operating.md").read_text()
    table = text[text.index("## What to alarm on"):text.index("## How it is verified")]
    expressions = [cell.replace("\\|", "|").replace("<MASKRCNN_QUEUE_SIZE>", "8")
                   for cell in re.findall(r"\| `([^`]+)` \|", table)]
    assert len(expressions) >= 6
    rules = {"groups": [{"name": "docs", "rules": [{"alert": f"A{i}", "expr": e} for i, e in enumerate(expressions)]}]}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"docs-rules-{os.getpid()}.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    try:
        result = subprocess.run([shutil.which("promtool"), "check", "rules", str(path)], capture_output=True,
                                text=True, timeout=60)
    finally:
        path.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
