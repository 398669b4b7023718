"""ablab's one logger. Progress goes to stderr as ``[ablab] message``; lines that carry their own tag
(``[train] ...``, ``[report] ...``) or continue a block (indented) are printed as they are."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("ablab")


class _Tagged(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith(("[", " ")) else f"[ablab] {text}"


class _CurrentStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted: a caller (a notebook, a test's capture) may
    have replaced the one that was there when the handler was attached, and closed it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging() -> None:
    """Attach the stderr handler once per process (the CLI and run_study call it; a library user may too)."""
    if not log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(_Tagged("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
