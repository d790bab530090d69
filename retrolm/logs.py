"""RetroLM's logger: one line per decision a user should know about (which scorer runs and why), on stderr.

Like transformers' own library logger, it prints INFO lines unless the application configured logging for
"retrolm" itself; silence it with logging.getLogger("retrolm").setLevel(logging.WARNING).
"""
import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (test runners and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


logger = logging.getLogger("retrolm")
if not logger.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("retrolm: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
