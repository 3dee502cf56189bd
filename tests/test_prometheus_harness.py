"""The Prometheus harness (prometheus_server.py) on its own: a real `prometheus` scraping a
tiny prometheus_client exporter in a child process, and a port where nothing listens.

The exporter's counter moves only when the test says so (a line on its stdin, acknowledged
with the new value), so what Prometheus reports after wait_for_scrape is known exactly.
Without the binary these skip, except where $MASKRCNN_REQUIRE_PROMETHEUS=1 (CI).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from harness.server import free_port
import prometheus_server
from prometheus_server import PrometheusQueryError, PrometheusServer, parse_rfc3339, require_prometheus

EXPORTER = r"""
import sys
from prometheus_client import REGISTRY, Counter, start_http_server

events = Counter("harness_events", "Events the test asked for")
start_http_server(int(sys.argv[1]), addr="127.0.0.1")
print("ready", flush=True)
for line in sys.stdin:
    events.inc(float(line))
    print(REGISTRY.get_sample_value("harness_events_total"), flush=True)
"""


class Exporter:
    """The exporter above on a free port; inc(n) returns the counter's value once it is set."""

    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", EXPORTER, str(self.port)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()  # start_http_server has bound and listens
        assert line == "ready\n", f"exporter did not start (exit {self.proc.poll()}): {line!r}"

    def inc(self, amount: float) -> float:
        self.proc.stdin.write(f"{amount}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def exporter():
    require_prometheus()  # skip before anything starts
    exp = Exporter()
    yield exp
    exp.stop()


@pytest.fixture(scope="module")
def dead_address():
    return f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def prom(exporter, dead_address, tmp_path_factory):
    with PrometheusServer(targets=[exporter.address, dead_address],
                          workdir=tmp_path_factory.mktemp("prometheus"), scrape_interval_s=0.5) as p:
        yield p
    assert p.proc.returncode == 0, p.log_tail()  # a clean exit on SIGTERM


def counter(prom, exporter) -> float:
    [entry] = prom.query(f'harness_events_total{{instance="{exporter.address}"}}')
    assert entry["metric"]["job"] == "maskrcnn"
    return entry["value"]


def test_counter_as_exported(prom, exporter):
    for amount in (3, 4.5):
        value = exporter.inc(amount)
        after = time.time()
        [target] = prom.wait_for_scrape(after, instances=[exporter.address])
        assert target["health"] == "up" and parse_rfc3339(target["lastScrape"]) > after
        assert counter(prom, exporter) == value
    assert value == 7.5
    [up] = prom.query(f'up{{instance="{exporter.address}"}}')
    assert up["value"] == 1.0


def test_target_down(prom, dead_address):
    after = time.time()
    [target] = prom.wait_for_scrape(after, instances=[dead_address], require_up=False)
    assert target["health"] == "down"
    assert "connection refused" in target["lastError"]
    assert {t["labels"]["instance"]: t["health"] for t in prom.targets()}[dead_address] == "down"
    [up] = prom.query(f'up{{instance="{dead_address}"}}')
    assert up["value"] == 0.0
    with pytest.raises(pytest.fail.Exception, match="connection refused"):
        prom.wait_for_scrape(time.time(), deadline_s=1, instances=[dead_address])


def test_query_errors_and_result_kinds(prom):
    with pytest.raises(PrometheusQueryError, match="parse error"):
        prom.query("sum(")
    assert prom.query("vector(2) * 3")[0]["value"] == 6.0
    [scalar] = prom.query("scalar(vector(1.5))")
    assert scalar["metric"] == {} and scalar["value"] == 1.5
    assert prom.query('nothing_by_this_name{job="maskrcnn"}') == []


def test_parse_rfc3339():
    assert parse_rfc3339("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_rfc3339("2026-12-07T08:00:41.916150964Z") == pytest.approx(1796630441.916151, abs=1e-6)
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_rfc3339("0001-01-01T00:00:00Z") < 0  # Go's zero time: never scraped


def test_require_prometheus_without_binary(monkeypatch):
    monkeypatch.setattr(prometheus_server, "prometheus_binary", lambda: None)
    monkeypatch.delenv(prometheus_server.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_prometheus()
    monkeypatch.setenv(prometheus_server.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="MASKRCNN_REQUIRE_PROMETHEUS=1"):
        require_prometheus()
