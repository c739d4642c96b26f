"""Logging setup: text and JSON lines with the request id, and the access log switch."""

import json
import logging

import pytest

from llmserve.logs import ACCESS_LOGGER, configure_logging, request_id_var


@pytest.fixture
def restore_logging():
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    saved = root.handlers[:], root.level, access.level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    access.setLevel(saved[2])


def log_request_lines(request_id: str) -> None:
    token = request_id_var.set(request_id)
    try:
        logging.getLogger("llmserve.servicer").info("working")
        logging.getLogger(ACCESS_LOGGER).info("Generate OK", extra={"rpc": "Generate",
                                                                    "code": "OK"})
    finally:
        request_id_var.reset(token)


def test_json_lines_carry_the_request_id_and_extra_fields(restore_logging, capsys):
    configure_logging("INFO", "json")
    log_request_lines("req-1")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["request_id"], e["message"]) for e in lines] == [
        ("llmserve.servicer", "req-1", "working"), (ACCESS_LOGGER, "req-1", "Generate OK")]
    assert (lines[1]["rpc"], lines[1]["code"], lines[1]["level"]) == ("Generate", "OK", "INFO")


def test_without_the_access_log_only_its_lines_are_dropped(restore_logging, capsys):
    configure_logging("INFO", "text", access_log=False)
    log_request_lines("req-2")
    logging.getLogger(ACCESS_LOGGER).warning("still shown")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO llmserve.servicer [req-2] working")
    assert lines[1].endswith(f"WARNING {ACCESS_LOGGER} [-] still shown")


def test_turning_the_access_log_back_on_restores_its_lines(restore_logging, capsys):
    configure_logging("INFO", "text", access_log=False)
    configure_logging("INFO", "text", access_log=True)
    log_request_lines("req-3")
    assert capsys.readouterr().err.splitlines()[1].endswith(
        f"INFO {ACCESS_LOGGER} [req-3] Generate OK")
