"""What the exporter says while it works: INFO records of the `exporter.*` loggers ("[1/3]
exporting the dense graph...", "model directory written: DIR"), and, with `quiet=True`,
DEBUG records instead. The library configures no handler; an entry point (build_engine.py,
demo/export_shapes.py, demo/train_shapes.py) calls show_progress() to print them.
Needs neither torch nor TensorRT.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "exporter progress"


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes, not as it was when the handler was
    made (a test's output capture replaces it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_progress() -> None:
    """Print the exporter's INFO (and higher) records on stderr, one line each, the message
    alone, as they come. Idempotent."""
    logger = logging.getLogger("exporter")
    if not any(handler.get_name() == _HANDLER_NAME for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
