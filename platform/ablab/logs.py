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


def setup_logging() -> None:
    """Attach the stderr handler once per process (the CLI and run_study call it; a library user may too)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Tagged("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
