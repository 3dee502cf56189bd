"""The real `serve` process on a free port, and a plain HTTP client, for end-to-end tests.

The server is started with the README's command (`serve [--model-dir DIR] --port PORT`,
with the leading `serve` argument SageMaker's `docker run IMAGE serve` adds) and polled
for readiness with a deadline, never a blind sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]


class Reply:
    """The parts of an HTTP response the tests look at."""

    def __init__(self, resp: http.client.HTTPResponse):
        self.status_code = resp.status
        self.headers = resp.headers
        self.content = resp.read()

    def json(self):
        return json.loads(self.content)


def http_call(url: str, method: str = "POST", body=None, headers: dict | None = None,
              timeout: float = 120.0) -> Reply:
    """A plain HTTP request with the standard library (an iterable body is sent chunked)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        conn.request(method, parts.path, body=body, headers=headers or {}, encode_chunked=chunked)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def serve_command() -> list[str]:
    """The installed `serve` console script if there is one, else `python -m server`."""
    script = Path(sys.executable).with_name("serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server"]


class ServerProcess:
    """`serve` in a child process, its output in a log file.

    model_dir None starts it without --model-dir (the server then picks $SM_MODEL_DIR,
    /opt/ml/model or the bundled demo model). extra_env overrides the environment; a None
    value removes that variable. cwd is where the process starts (the repository by default).
    `command` replaces `serve` (e.g. a copy's serve.sh) and `args` the model arguments;
    with `stderr_path`, stderr (human progress lines) goes there and the log keeps only stdout.
    """

    def __init__(self, model_dir: Path | None, log_path: Path,
                 extra_env: Mapping[str, str | None] | None = None, cwd: Path = REPO,
                 command: list[str] | None = None, args: list[str] | None = None,
                 stderr_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.stderr_path = stderr_path
        env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
        env = {k: v for k, v in env.items() if v is not None}
        if args is None:
            args = ["serve"] + ([] if model_dir is None else ["--model-dir", str(model_dir)])
        self._log = open(log_path, "wb")  # a file, not a pipe nobody reads, which could fill up
        self._stderr = open(stderr_path, "wb") if stderr_path else None
        self.proc = subprocess.Popen(
            (command or serve_command()) + [*args, "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=cwd, env=env, stdout=self._log, stderr=self._stderr or subprocess.STDOUT)

    def ping(self, timeout: float = 2.0) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status
        finally:
            conn.close()

    def wait_ready(self, deadline_s: float = 180.0) -> list[int | str]:
        """Poll /ping until 200, failing early if the process dies. Returns what was seen."""
        seen: list[int | str] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}\n{self.stderr()}")
            try:
                status = self.ping()
            except OSError:
                status = "refused"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)  # a polling interval, bounded by the deadline
        pytest.fail(f"/ping not 200 within {deadline_s} s (saw {seen}):\n{self.log()}\n{self.stderr()}")

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A line of the process's /proc status in kB: VmRSS (resident now), VmHWM (its peak)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    def reset_peak_memory(self) -> None:
        """Restart VmHWM from the current RSS (Linux >= 4.0)."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def log(self) -> str:
        """stdout (and stderr, unless it has its own file)."""
        return self.log_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._close_logs()

    def kill(self) -> None:
        """Make sure the process is gone (a fixture's teardown after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_logs()

    def _close_logs(self) -> None:
        self._log.close()
        if self._stderr:
            self._stderr.close()


def running_server(model_dir: Path | None, log_dir: Path, **kwargs):
    """For module fixtures: `yield from running_server(...)` gives a ready ServerProcess and
    kills it at teardown."""
    srv = ServerProcess(model_dir, log_dir / "server.log", **kwargs)
    srv.wait_ready()
    yield srv
    srv.kill()
