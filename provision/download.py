"""Fetching a named model's weights: a bounded reachability probe, the one-line message for
weights that cannot be downloaded, and a download that leaves nothing behind when interrupted.

Torch-free: `serve --model` and build_engine.py (exporter.weights) share them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from engine.errors import ModelDirError

PROBE_TIMEOUT_S = 5.0  # the reachability check before a download; DNS alone may hang longer
DOWNLOAD_TIMEOUT_S = 60  # a read from the weights' server that stalls this long fails the download
DOWNLOAD_CHUNK_BYTES = 1 << 20


def unreachable_reason(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a HEAD request to `url` gets any HTTP answer within `timeout_s`, else why not.

    The request runs in a daemon thread because name resolution ignores socket timeouts: an
    offline machine whose DNS never answers would otherwise hang here.
    """
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered: the network works
            outcome.append(None)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            outcome.append(str(getattr(exc, "reason", None) or exc))

    thread = threading.Thread(target=probe, name="weights-url-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def download_hint(arch: str, url: str, reason: str, framework: str = "torchvision") -> str:
    """The one line for COCO weights that cannot be downloaded (build_engine.py says it too)."""
    return (f"cannot download {framework}'s COCO weights for {arch} from {url} ({reason}); "
            f"without network access, download that file elsewhere and pass --weights PATH")


def download(url: str, path: Path) -> None:
    """`url` into `path` (written beside it, then renamed: an interrupted download leaves nothing)."""
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ModelDirError(f"downloading {url} failed ({exc}); download it elsewhere and pass --weights PATH") from None
