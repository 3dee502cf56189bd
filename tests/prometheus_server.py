"""A real Prometheus server (Debian's `prometheus` package) in a child process, scraping HTTP
targets, for tests of the server's GET /metrics as Prometheus itself reads it.

    with PrometheusServer(targets=[f"127.0.0.1:{port}"], workdir=tmp_path) as prom:
        ...  # requests to the target
        prom.wait_for_scrape(time.time())  # a scrape that started after those requests
        [entry] = prom.query('sum(some_counter_total)')  # {"metric": {...}, "value": float, ...}

What Prometheus 2.42 (Debian 12) does that a test must allow for:
* Its targets appear some 5 s after it is ready: the scrape manager applies discovered targets
  at most every 5 s, even static ones (not configurable in 2.x). The first wait_for_scrape
  therefore takes about 5-6 s; later ones at most a scrape interval or so.
* A target's lastScrape (/api/v1/targets) is the timestamp of that scrape's samples (the
  scheduled time, which is never after the request to the target was sent), and it is set just
  BEFORE those samples are committed. wait_for_scrape therefore also waits until the
  target's `up` sample with that timestamp can be queried.
* The API gives an instant query's values as [the evaluation time in unix seconds (millisecond
  precision), "the value as a string"]: the time is the query's, not the sample's (that is
  `timestamp(expr)`). `up` is 0 for a target whose last scrape failed, and its other series go
  stale at once (stale markers), not after the 5-minute lookback.

Only the standard library here (and pytest, to skip or fail). Without the binary, tests call
require_prometheus(): a skip, or a failure where $MASKRCNN_REQUIRE_PROMETHEUS=1 (CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from calendar import timegm
from pathlib import Path

import pytest

from harness.server import free_port

REQUIRE_ENV = "MASKRCNN_REQUIRE_PROMETHEUS"
JOB = "maskrcnn"
# Never through a proxy from the environment: every URL here is on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prometheus_binary() -> str | None:
    """The `prometheus` server binary on PATH, or None."""
    return shutil.which("prometheus")


def require_prometheus() -> str:
    """The binary's path; else a skip, or a failure where $MASKRCNN_REQUIRE_PROMETHEUS=1."""
    path = prometheus_binary()
    if path is None:
        reason = "prometheus is not on PATH (apt-get install prometheus; .ci/run does)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return path


class PrometheusQueryError(RuntimeError):
    """The HTTP API answered with status "error" (the text is Prometheus's errorType and error)."""


def parse_rfc3339(text: str) -> float:
    """Unix seconds of the API's timestamps, e.g. "2026-12-07T08:00:41.916150964Z" (nanoseconds,
    which datetime cannot hold) or with an offset; Go's zero time (never scraped) is far negative."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = timegm((year, month, day, hour, minute, second, 0, 0, 0)) + float("0." + (m[7] or "0"))
    if m[8] != "Z":
        sign = 1 if m[8][0] == "+" else -1
        seconds -= sign * (int(m[8][1:3]) * 3600 + int(m[8][4:6]) * 60)
    return seconds


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class PrometheusServer:
    """`prometheus` on a free local port with one scrape job ("maskrcnn") for `targets`
    ("host:port" each), its configuration, data and log under `workdir`.

    A context manager: entering starts it and waits for /-/ready (the test fails with the log's
    tail if it exits or is not ready in time); leaving terminates it (SIGTERM, then SIGKILL).
    """

    def __init__(self, targets: list[str], workdir: Path, scrape_interval_s: float = 1,
                 metrics_path: str = "/metrics", job: str = JOB, ready_deadline_s: float = 30.0):
        self.target_list = list(targets)
        self.workdir = Path(workdir)
        self.scrape_interval_s = scrape_interval_s
        self.metrics_path = metrics_path
        self.job = job
        self.ready_deadline_s = ready_deadline_s
        self.config_path = self.workdir / "prometheus.yml"
        self.data_path = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self.port: int | None = None
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle --

    def config_text(self) -> str:
        """prometheus.yml. Strings are written as JSON strings, which are YAML double-quoted ones."""
        q = json.dumps
        interval = _duration(self.scrape_interval_s)
        return "\n".join([
            "global:",
            f"  scrape_interval: {interval}",
            f"  scrape_timeout: {interval}",  # may not exceed the interval (the default is 10 s)
            "scrape_configs:",
            f"  - job_name: {q(self.job)}",
            f"    metrics_path: {q(self.metrics_path)}",
            "    scheme: http",
            "    static_configs:",
            f"      - targets: [{', '.join(q(t) for t in self.target_list)}]",
            "",
        ])

    def command(self) -> list[str]:
        return [
            require_prometheus(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",  # not 0.0.0.0:9090, the default
            # Debian's default paths (/etc/prometheus, /usr/share/prometheus) are kept for the
            # web UI's assets and consoles: nothing here uses them, and they do no harm.
            "--log.level=info",  # the startup and config lines are what a failure needs
        ]

    def start(self) -> "PrometheusServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = self.command()
        self._log = open(self.log_path, "wb")  # a file, not a pipe nobody reads
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.wait_ready(self.ready_deadline_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode} before it was ready:\n"
                            f"{self.log_tail()}")
            try:
                with _OPENER.open(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"  # 503 while the TSDB starts
            except OSError as e:
                last = str(e)
            time.sleep(0.05)
        pytest.fail(f"prometheus not ready within {deadline_s:g} s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds. Returns the exit status."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- HTTP API --

    def api(self, path: str, params: dict | None = None, timeout: float = 10.0):
        """GET /api/v1/<path>; the "data" of a success, else PrometheusQueryError."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with _OPENER.open(url, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution, 503 timeout...
            body = e.read()
            if not body.startswith(b"{"):
                raise PrometheusQueryError(f"GET {url}: HTTP {e.code}: {body[:500]!r}") from None
        reply = json.loads(body)
        if reply.get("status") != "success":
            raise PrometheusQueryError(
                f"GET {url}: {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query (at `at`, unix seconds, or now). One entry per series:
        {"metric": {label: value}, "value": float, "timestamp": the evaluation time (unix
        seconds; a sample's own is `timestamp(expr)`)}; a scalar is one entry with no labels;
        a range vector's entries have "values": [(sample timestamp, float)]. Values "NaN",
        "+Inf" are float NaN and inf."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [{"metric": r["metric"], "value": float(r["value"][1]),
                     "timestamp": float(r["value"][0])} for r in result]
        if kind == "scalar":
            return [{"metric": {}, "value": float(result[1]), "timestamp": float(result[0])}]
        if kind == "matrix":
            return [{"metric": r["metric"], "values": [(float(t), float(v)) for t, v in r["values"]]}
                    for r in result]
        raise PrometheusQueryError(f"{expr!r}: a {kind} result ({result!r}), not a number")

    def targets(self) -> list[dict]:
        """/api/v1/targets' active targets, as the API gives them: "labels" (with "instance"),
        "health" ("unknown" before the first scrape, "up", "down"), "lastError", "lastScrape"
        (RFC 3339 with nanoseconds; parse_rfc3339), "lastScrapeDuration" (seconds), ..."""
        return self.api("targets", {"state": "active"})["activeTargets"]

    def wait_for_scrape(self, after: float, deadline_s: float = 30, instances: list[str] | None = None,
                        require_up: bool = True) -> list[dict]:
        """Return once every target (or those of `instances`, "host:port") has had a scrape that
        started after `after` (time.time() seconds) and succeeded (with require_up=False: any
        scrape, a failed one included), with its samples queryable. Returns those targets.
        The first call after start takes some 5-6 s (see the module's docstring)."""
        wanted = set(self.target_list if instances is None else instances)
        unknown = wanted - set(self.target_list)
        assert not unknown, f"not targets of this server: {sorted(unknown)}"
        deadline = time.monotonic() + deadline_s
        while True:
            current = {t["labels"].get("instance"): t for t in self.targets()
                       if t["labels"].get("job") == self.job}
            done = {}
            for instance in wanted:
                t = current.get(instance)
                if t is None or parse_rfc3339(t["lastScrape"]) <= after:
                    continue
                if require_up and t["health"] != "up":
                    continue
                if self._committed(instance, t["lastScrape"]):
                    done[instance] = t
            if len(done) == len(wanted):
                return [done[i] for i in sorted(done)]
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.1, self.scrape_interval_s / 10))
        state = {i: {k: current[i].get(k) for k in ("health", "lastScrape", "lastError")}
                 if i in current else "not yet a target" for i in sorted(wanted)}
        pytest.fail(f"no {'successful ' if require_up else ''}scrape of every target started after "
                    f"{after:.3f} within {deadline_s:g} s: {state}\n{self.log_tail()}")

    def _committed(self, instance: str, last_scrape: str) -> bool:
        """Whether the scrape reported at `last_scrape` is in the TSDB: the target's lastScrape is
        set just before the scrape's samples are committed; its `up` sample has that timestamp."""
        selector = f'up{{job={json.dumps(self.job)}, instance={json.dumps(instance)}}}'
        result = self.query(f"timestamp({selector})")
        # Sample timestamps are whole milliseconds; lastScrape is the same instant in nanoseconds.
        return bool(result) and result[0]["value"] * 1000 >= int(parse_rfc3339(last_scrape) * 1000) - 0.5
