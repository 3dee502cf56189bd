"""What the tests and the benchmarks share to drive the project from outside: not served, not
packaged (pyproject.toml's packages leave it out). Both import it from the repository root
(pytest's `pythonpath`; each benchmark puts the root on sys.path).

* server.py: the one launcher of the real `serve` process (free port, readiness polled with
  a deadline, SIGTERM, its log) and a plain HTTP client for it.
* proc.py: the one reader of /proc: a process's resident memory, its peak, its CPU time.
* timing.py: the one timer: one call, repeated calls, their median and percentiles.
* photos.py: the photos fed to the engine and the server (scikit-image's, resized, encoded).
* model_dirs.py: model directories the benchmarks export (R50 with seeded random weights).
* hostile_images.py: bodies built to hurt a decoder: decompression bombs, many-scan JPEGs,
  chunk floods, headers declaring sizes the data does not have.
* fuzz_targets.py: the hypothesis strategies and properties for the untrusted-input parsers
  (tests/test_fuzz.py runs them briefly, benchmarks/fuzz.py for minutes).
* slow_clients.py: stalled and trickling connections, and the open-file limit they need.
* agreement.py: how far two engines' detections agree (same class, box IoU).
"""
