"""trioserve's own log: one line per event on stderr."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] trioserve: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
_HANDLER_NAME = "trioserve.stderr"


def configure_logging(level: str) -> None:
    """Send the ``trioserve`` loggers to stderr at ``level``; idempotent.

    Only trioserve's own logger tree is touched: the app's logging stays as the app
    configures it.
    """
    logger = logging.getLogger("trioserve")
    logger.setLevel(level.upper())
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    logger.propagate = False
