"""Client mistakes are not server errors: BentoML logs every rejected request (a
validation error, a bad body) at ERROR with a full traceback, so a stream of bad
requests would fill the disk with tracebacks. This filter turns those records
into one INFO line (method, path, status, reason); real server errors keep their
traceback."""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger BentoML's HTTP app reports endpoint exceptions on.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


def _client_status(error: BaseException | None) -> int | None:
    """The 4xx the request got for ``error``; None for a server error."""
    if isinstance(error, ValidationError):
        return 400
    if isinstance(error, BentoMLException) and error.error_code.value < 500:
        return error.error_code.value
    return None


class ClientErrorsAsInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_status(error)
        if status is None:
            return True
        path, method = (tuple(record.args) + ("?", "?"))[:2] if isinstance(
            record.args, tuple) else ("?", "?")
        first = str(error).strip().splitlines()
        reason = " ".join(line.strip() for line in first[:3])[:300]
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "%s %s -> %d: %s", (method, path, status, reason)
        record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """Once per process (the service's workers call it at import)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsAsInfo) for f in logger.filters):
        logger.addFilter(ClientErrorsAsInfo())
