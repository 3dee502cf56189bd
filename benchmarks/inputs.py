"""What the benchmarks feed the engine and the server: one photo, the default random R50 model
directory, a free local port, and the real `serve` process started on it."""

from __future__ import annotations

import socket

import numpy as np


def benchmark_photo() -> np.ndarray:
    """skimage's coffee photo (400x600) resized to 640x480 RGB, the size the targets are set at."""
    import cv2
    import skimage.data

    return np.ascontiguousarray(cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_LINEAR))


def skimage_photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, as HxWx3 uint8 RGB (grey ones repeated)."""
    import skimage.data

    if name == "motorcycle":
        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[0])
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def benchmark_photo_jpeg(quality: int = 90) -> bytes:
    """`benchmark_photo()` as a client would upload it."""
    import cv2

    return cv2.imencode(".jpg", benchmark_photo()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_r50_model_dir(prefix: str) -> str:
    """R50-FPN v1 with seeded random weights (seed 0), exported to a new temp directory: the
    benchmarks' default model (no COCO download here). Needs the export extra."""
    import tempfile
    from pathlib import Path

    from exporter import export
    from exporter.weights import coco_class_names, random_model

    model_dir = str(Path(tempfile.mkdtemp(prefix=prefix)) / "r50")
    export(random_model("maskrcnn_resnet50_fpn", seed=0), model_dir, coco_class_names(), quiet=True,
           weights_info={"source": "random", "seed": 0, "trained": False})
    return model_dir


def serve_command(model_dir) -> list[str]:
    """`serve --model-dir DIR` on loopback (the installed script, else `python -m server`)."""
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("serve")
    return ([str(script)] if script.exists() else [sys.executable, "-m", "server"]) + [
        "--model-dir", str(model_dir), "--host", "127.0.0.1"]


def start_server(command: list[str], log_path, deadline_s: float = 300.0):
    """Run `command` (a server command line without --port) on a free port, its output in
    log_path, and wait until its /ping answers 200: (the Popen, the port). RuntimeError if
    it exits or the deadline passes first (the process is then stopped)."""
    import http.client
    import os
    import subprocess
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command + ["--port", str(port)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + deadline_s
    while True:
        problem = (f"server exited with {proc.returncode}" if proc.poll() is not None else
                   f"server not ready within {deadline_s:g} s" if time.monotonic() > deadline else None)
        if problem:
            proc.kill()
            raise RuntimeError(f"{problem}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
