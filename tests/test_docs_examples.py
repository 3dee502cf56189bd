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

from harness.server import REPO, ServerProcess
from prometheus_server import require_prometheus

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


FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of `markdown` (lower case; punctuation other than
    hyphens and underscores dropped; spaces to hyphens; -1, -2, ... for repeats)."""
    anchors: set[str] = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def relative_links(markdown: str) -> list[str]:
    """Every link and image target in `markdown` outside code, that is not a URL."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", markdown))
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_github_anchors_follow_githubs_rules():
    text = "# A: `b` c\n## A: `b` c\n### The API (SageMaker hosting contract)\n```\n# not a heading\n```\n"
    assert github_anchors(text) == {"a-b-c", "a-b-c-1", "the-api-sagemaker-hosting-contract"}


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
                                  "benchmarks/HISTORY.md"])
def test_every_relative_link_resolves(page):
    """Each relative link in the README and the docs names a file or folder of the repository,
    and, with #anchor, a heading of that page."""
    source = REPO / page
    broken = []
    for target in relative_links(source.read_text()):
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        if not resolved.exists() or REPO.resolve() not in [resolved, *resolved.parents]:
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in github_anchors(resolved.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO.resolve())}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_the_engine_commands_and_python_api_run_as_written(tmp_path):
    """docs/api.md's `python -m engine` lines and its Python example, on the bundled demo model
    (the page's models/coco-v1 is replaced by demo/model; `--model coco-v1` builds from COCO
    weights, which cannot be downloaded here: tests/test_named_models.py runs that path)."""
    shutil.copy(REPO / "server" / "static" / "sample.jpg", tmp_path / "photo.jpg")
    demo = str(REPO / "demo" / "model")
    block = docs_block("api.md", "## Without the server", "bash")
    env = {k: v for k, v in os.environ.items() if k != "SM_MODEL_DIR"}
    ran = 0
    for line in block.splitlines():
        command = line.partition("#")[0].strip()
        if not command or "--model coco-v1" in command:
            continue
        argv = shlex.split(command.replace("models/coco-v1", demo).replace(" [--json]", ""))
        assert argv[:3] == ["python", "-m", "engine"], line
        result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        if "--json" in argv:
            assert json.loads(result.stdout)["labels"], line
        ran += 1
    assert ran == 5
    assert (tmp_path / "segmented.jpg").stat().st_size > 0

    code = docs_block("api.md", "serving image; a missing or corrupt directory", "python")
    code = code.replace('"models/coco-v1"', repr(demo))
    probe = "\nassert len(det.boxes) == len(det.scores) == len(det.masks) > 0\nprint(det.labels)\n"
    result = subprocess.run([sys.executable, "-c", code + probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


# Every bash, sh, python or yaml block of README.md and docs/ is run by a test (found by the
# calls below), or says why not in an HTML comment right after it, which renders as nothing:
# <!-- not run as written: why, and which test runs its commands instead -->
NOT_RUN = re.compile(r"\n<!-- not run as written: (.+?) -->", re.S)
RUNNABLE_LANGUAGES = ("bash", "sh", "python", "yaml")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ACCESSORS = [  # (pattern, how its groups name page, after, language)
    (re.compile(r'readme_block\("([^"]+)", "(\w+)"(?:, "([^"]+)")?\)'),
     lambda g: (g[2] or "README.md", g[0], g[1])),
    (re.compile(r'docs_block\("([^"]+)", "([^"]+)", "(\w+)"\)'), lambda g: (f"docs/{g[0]}", g[1], g[2])),
    (re.compile(r'run_readme_setup\("([^"]+)", \w+(?:, "([^"]+)")?\)'), lambda g: (g[1] or "README.md", g[0], "bash")),
]


def blocks_run_by_tests() -> set[tuple[str, int]]:
    """(page, offset of the block) for every block a test takes with readme_block, docs_block
    or run_readme_setup and literal arguments."""
    found = set()
    for test in (REPO / "tests").glob("test_*.py"):
        source = test.read_text()
        for pattern, names in ACCESSORS:
            for match in pattern.finditer(source):
                page, after, language = names(match.groups())
                text = (REPO / page).read_text()
                block = re.compile(rf"^```{language}\n", re.M).search(text, text.index(after))
                found.add((page, block.start()))
    return found


def test_every_runnable_block_in_the_docs_is_run_or_says_why_not():
    pages = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
    run = blocks_run_by_tests()
    unaccounted, excused_but_run = [], []
    for page in pages:
        text = (REPO / page).read_text()
        for match in BLOCK.finditer(text):
            if match.group(1) not in RUNNABLE_LANGUAGES:
                continue  # output, a diagram, a JSON answer
            excuse = NOT_RUN.match(text, text.index("\n", match.end()))
            first_line = f"{page}: {match.group(2).splitlines()[0][:80]}"
            if (page, match.start()) in run and excuse:
                excused_but_run.append(first_line)
            elif (page, match.start()) not in run and not excuse:
                unaccounted.append(first_line)
    assert not unaccounted, "blocks no test runs (run them, or say why after them): " + "; ".join(unaccounted)
    assert not excused_but_run, "blocks a test runs, said not to be: " + "; ".join(excused_but_run)
