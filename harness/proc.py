"""The one reader of Linux /proc: a process's resident memory, its peak, its CPU time.

`pid` is a process id or "self" (this process). Memory comes from /proc/PID/status: VmRSS
(resident now) and VmHWM (the peak, restarted by reset_peak_rss). MiB are 2**20 bytes.
"""

from __future__ import annotations

import os


def status_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A kB line of /proc/PID/status: VmRSS (resident now), VmHWM (its peak) and the like.
    KeyError if the kernel does not report that field."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int | str = "self") -> float:
    """The process's resident set now, MiB."""
    return status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set since it started or since reset_peak_rss(), MiB."""
    return status_kb(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int | str = "self") -> None:
    """Restart the peak (VmHWM) from the current resident set (Linux >= 4.0: clear_refs 5).
    OSError where that is refused."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_seconds(pid: int | str = "self") -> float:
    """The process's user + system CPU time so far, seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Peak resident memory growth (MiB) of this process over a `with` block, from VmHWM.

    Restarts the peak on entry, so that earlier work in the process (other tests) does not
    hide the block's own peak; where that is refused the growth is measured from the earlier
    peak, an underestimate only if that peak was higher."""

    def __enter__(self):
        try:
            reset_peak_rss()
        except OSError:
            pass
        self.start_kb = status_kb("self", "VmRSS")
        self.growth_mb = 0.0
        return self

    def __exit__(self, *exc):
        self.growth_mb = max(0, status_kb("self", "VmHWM") - self.start_kb) / 1024
        return False


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags as /proc/cpuinfo names them (e.g. "avx512_vnni",
    "amx_bf16"); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
