"""The wire vocabulary has one home (common/protocol.py): the gateway handles exactly the client
frames it names, nothing writes a server frame it does not name, and docs/PROTOCOL.md documents
every frame type and close code in it."""
import json
import re
from pathlib import Path

import pytest

from common import protocol
from common.errors import AppError, Code
from gateway import frames

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def test_the_gateway_handles_exactly_the_client_frames_of_the_protocol():
    assert set(frames.HANDLERS) == set(protocol.CLIENT_FRAMES)


def test_a_frame_outside_the_protocol_cannot_be_written():
    with pytest.raises(ValueError):
        protocol.frame("ack", {})  # a client frame type, not a server one
    assert json.loads(protocol.frame("pong", {"server_ts": 1})) == {"type": "pong", "payload": {"server_ts": 1}}


def test_an_error_frame_names_the_field_of_a_bad_input_and_its_ref():
    text = protocol.error(AppError(Code.INVALID_PARAMS, "seq must be an integer", field="seq"), "ack")
    assert json.loads(text)["payload"] == {"code": 10002, "message": "seq must be an integer",
                                           "field": "seq", "ref": "ack"}


def test_protocol_md_documents_every_frame_type_and_close_code():
    type_cells = " ".join(row.split("|")[2] for row in re.findall(r"^\| (?:server|client).*$", DOC, re.M))
    documented = set(re.findall(r"`([a-z_]+)`", type_cells)) | set(re.findall(r"close \d+", type_cells))
    names = set(protocol.CLIENT_FRAMES) | set(protocol.SERVER_FRAMES)
    codes = {f"close {getattr(protocol, n)}" for n in dir(protocol) if n.startswith("CLOSE_")}
    assert names | codes <= documented, sorted((names | codes) - documented)
