"""The one launcher of the real `serve` process, and a plain HTTP client for it.

`ServerProcess` starts the README's command (`serve [--model-dir DIR]`, with the leading
`serve` argument SageMaker's `docker run IMAGE serve` adds) on a free loopback port, its
output in a log file, and polls /ping for readiness with a deadline, never a blind sleep;
`stop()` sends SIGTERM, as SageMaker does. The tests and the benchmarks both start servers
with it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from harness.proc import reset_peak_rss, status_kb

REPO = Path(__file__).resolve().parents[1]


class ServerNotReady(RuntimeError):
    """The server exited, or /ping did not answer 200 in time; the message holds its output."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """The installed `serve` console script if there is one, else `python -m server`."""
    script = Path(sys.executable).with_name("serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server"]


class Reply:
    """The parts of an HTTP response the callers look at."""

    def __init__(self, resp: http.client.HTTPResponse):
        self.status_code = resp.status
        self.headers = resp.headers
        self.content = resp.read()

    def json(self):
        return json.loads(self.content)


def http_call(url: str, method: str = "POST", body=None, headers: dict | None = None,
              timeout: float = 120.0) -> Reply:
    """A plain HTTP request with the standard library (an iterable body is sent chunked)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        conn.request(method, parts.path, body=body, headers=headers or {}, encode_chunked=chunked)
        return Reply(conn.getresponse())
    finally:
        conn.close()


class ServerProcess:
    """`serve` in a child process on a free port of 127.0.0.1, its output in a log file.

    model_dir None starts it without --model-dir (the server then picks $SM_MODEL_DIR,
    /opt/ml/model or the bundled demo model). extra_env overrides the environment; a None
    value removes that variable. cwd is where the process starts (the repository by default).
    `command` replaces `serve` (e.g. a copy's serve.sh) and `args` the model arguments;
    `--port PORT --host 127.0.0.1` follow them. With `stderr_path`, stderr (human progress
    lines) goes there and the log keeps only stdout.
    """

    def __init__(self, model_dir: Path | str | None, log_path: Path,
                 extra_env: Mapping[str, str | None] | None = None, cwd: Path = REPO,
                 command: list[str] | None = None, args: list[str] | None = None,
                 stderr_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.stderr_path = stderr_path
        env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
        env = {k: v for k, v in env.items() if v is not None}
        if args is None:
            args = ["serve"] + ([] if model_dir is None else ["--model-dir", str(model_dir)])
        self._log = open(self.log_path, "wb")  # a file, not a pipe nobody reads, which could fill up
        self._stderr = open(stderr_path, "wb") if stderr_path else None
        self.proc = subprocess.Popen(
            (command or serve_command()) + [*args, "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=cwd, env=env, stdout=self._log, stderr=self._stderr or subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ping(self, timeout: float = 2.0) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status
        finally:
            conn.close()

    def wait_ready(self, deadline_s: float = 180.0) -> list[int | str]:
        """Poll /ping until 200: the statuses seen on the way. ServerNotReady if the process
        exits first, or (the process then killed) if the deadline passes."""
        seen: list[int | str] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerNotReady(f"server exited with {self.proc.returncode}:\n{self.log()}\n{self.stderr()}")
            try:
                status = self.ping()
            except OSError:
                status = "refused"
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)  # a polling interval, bounded by the deadline
        self.kill()
        raise ServerNotReady(f"/ping not 200 within {deadline_s:g} s (saw {seen}):\n{self.log()}\n{self.stderr()}")

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A line of the process's /proc status in kB: VmRSS (resident now), VmHWM (its peak)."""
        return status_kb(self.proc.pid, field)

    def reset_peak_memory(self) -> None:
        """Restart VmHWM from the current RSS (Linux >= 4.0)."""
        reset_peak_rss(self.proc.pid)

    def log(self) -> str:
        """stdout (and stderr, unless it has its own file)."""
        return self.log_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit: its code."""
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


def started_server(model_dir: Path | str | None, log_path: Path, deadline_s: float = 300.0,
                   **kwargs) -> ServerProcess:
    """ServerProcess(model_dir, log_path, **kwargs) once /ping has answered 200: the
    benchmarks' way in (their R50 takes longer to load and warm up than the tests' models).
    ServerNotReady, the process gone, if it does not within deadline_s."""
    server = ServerProcess(model_dir, log_path, **kwargs)
    server.wait_ready(deadline_s)
    return server


def running_server(model_dir: Path | None, log_dir: Path, **kwargs):
    """For module fixtures: `yield from running_server(...)` gives a ready ServerProcess and
    kills it at teardown."""
    srv = ServerProcess(model_dir, log_dir / "server.log", **kwargs)
    srv.wait_ready()
    yield srv
    srv.kill()
