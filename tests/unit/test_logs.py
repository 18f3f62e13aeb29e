"""common/logs.py's formats and the runtime's correlation-id stamping (pure; the processes' real
logs are checked in tests/integration/test_logs.py)."""
import io
import json
import logging

import pytest

from common import bus, logs
from functions.api import Emit, Publish
from functions.runtime import with_cid


def _logger(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_json_lines_carry_the_correlation_id_only_inside_its_context():
    logger, out = _logger(logs.JsonFormatter("fn-send"))
    with logs.correlation("abc123"):
        logger.info("stored %d messages", 3)
    logger.warning("after")
    inside, after = [json.loads(line) for line in out.getvalue().splitlines()]
    assert inside["message"] == "stored 3 messages" and inside["cid"] == "abc123"
    assert inside["process"] == "fn-send" and inside["level"] == "INFO" and inside["logger"] == logger.name
    assert inside["time"].endswith("Z") and isinstance(inside["pid"], int)
    assert "cid" not in after


def test_an_exception_is_a_field_of_its_one_line():
    logger, out = _logger(logs.JsonFormatter("gateway"))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "failed" and "RuntimeError: boom" in entry["exception"]


def test_text_lines_name_the_correlation_id():
    text = logs.config("gateway", {"LOG_FORMAT": "text"})["formatters"]["pingme"]["format"]
    logger, out = _logger(logging.Formatter(text))
    with logs.correlation("c0ffee"):
        logger.info("hello")
    logger.info("plain")
    first, second = out.getvalue().splitlines()
    assert first.endswith("cid=c0ffee: hello") and second.endswith(f"{logger.name}: plain")


def test_log_format_is_text_by_default_and_a_bad_one_is_refused():
    assert logs.log_format({}) == "text" and logs.log_format({"LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.log_format({"LOG_FORMAT": "xml"})


def test_libraries_that_log_query_parameters_stay_above_debug():
    loggers = logs.config("fn-send", {"LOG_LEVEL": "DEBUG"})["loggers"]
    assert loggers["peewee"]["level"] == "INFO" and loggers["kafka"]["level"] == "WARNING"


def test_with_cid_stamps_kafka_outputs_that_have_none():
    outputs = [Emit("deliver", {}), Emit("retry", b"", headers={bus.H_CID: "first"}), Publish("gw", {})]
    stamped = with_cid(outputs, "c1")
    assert [getattr(out, "headers", None) for out in stamped] == [{bus.H_CID: "c1"}, {bus.H_CID: "first"}, None]
    assert with_cid(outputs, None) is outputs
