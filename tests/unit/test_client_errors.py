"""A client's mistake is logged as one INFO line, a server error keeps its traceback."""

import logging

from bentoml.exceptions import BadInput
from pydantic import BaseModel, StrictInt, ValidationError

from serving.client_errors import BENTOML_HTTP_LOGGER, install


class Query(BaseModel):
    k: StrictInt


def logged(caplog, error: BaseException) -> logging.LogRecord:
    install()
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    with caplog.at_level(logging.DEBUG, logger=BENTOML_HTTP_LOGGER):
        try:
            raise error
        except BaseException:  # as BentoML's log_exception logs it
            logger.error("Exception on %s [%s]", "/recommend", "POST", exc_info=True)
    (record,) = [r for r in caplog.records if r.name == BENTOML_HTTP_LOGGER]
    return record


def test_a_validation_error_is_one_info_line(caplog):
    try:
        Query.model_validate({"k": True})
    except ValidationError as error:
        record = logged(caplog, error)
    assert record.levelno == logging.INFO and record.exc_info is None
    line = record.getMessage()
    assert line.startswith("POST /recommend -> 400: 1 validation error for Query")
    assert "\n" not in line and "Traceback" not in caplog.text


def test_a_bad_input_error_keeps_its_status(caplog):
    record = logged(caplog, BadInput("body is not JSON"))
    assert record.levelno == logging.INFO
    assert record.getMessage() == "POST /recommend -> 400: body is not JSON"


def test_a_server_error_keeps_its_traceback(caplog):
    record = logged(caplog, RuntimeError("the model broke"))
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "Traceback" in caplog.text and "the model broke" in caplog.text
