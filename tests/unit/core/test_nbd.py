"""The NBD wire format (sans I/O): encoders give the documented byte layouts, parsers either
parse or raise RemoteProtocolError, nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.core import nbd
from replicad.core.errors import RemoteProtocolError


def test_greeting_layout() -> None:
    g = nbd.greeting()
    assert g[:8] == b"NBDMAGIC" and g[8:16] == b"IHAVEOPT"
    assert struct.unpack(">H", g[16:])[0] == nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES


def test_client_flags() -> None:
    assert nbd.parse_client_flags(struct.pack(">I", 3)) == 3
    with pytest.raises(RemoteProtocolError):
        nbd.parse_client_flags(struct.pack(">I", 0))  # old newstyle: not served
    with pytest.raises(RemoteProtocolError):
        nbd.parse_client_flags(struct.pack(">I", 1 | 1 << 7))


def test_info_request_roundtrip() -> None:
    name = "ehr@3".encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">HHH", 2, nbd.INFO_NAME, nbd.INFO_BLOCK_SIZE)
    req = nbd.parse_info_request(data)
    assert req.name == "ehr@3" and req.infos == (nbd.INFO_NAME, nbd.INFO_BLOCK_SIZE)
    with pytest.raises(RemoteProtocolError):
        nbd.parse_info_request(data[:-1])


def test_option_reply_and_request_layouts() -> None:
    r = nbd.option_reply(nbd.OPT_GO, nbd.REP_INFO, nbd.info_export(4096, 3))
    assert struct.unpack(">QIII", r[:20]) == (nbd.OPT_REPLY_MAGIC, nbd.OPT_GO, nbd.REP_INFO, 12)
    assert struct.unpack(">HQH", r[20:]) == (nbd.INFO_EXPORT, 4096, 3)
    raw = struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 1, nbd.CMD_WRITE, 77, 512, 1024)
    assert nbd.parse_request(raw) == nbd.Request(1, nbd.CMD_WRITE, 77, 512, 1024)
    assert nbd.simple_reply(77, nbd.EIO) == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 5, 77)
    assert len(nbd.export_name_answer(1, 1, no_zeroes=False)) == 10 + 124


def test_check_range() -> None:
    assert nbd.check_range(nbd.Request(0, nbd.CMD_READ, 1, 0, 4096), 4096) == 0
    assert nbd.check_range(nbd.Request(0, nbd.CMD_READ, 1, 1, 4096), 4096) == nbd.EINVAL
    big = nbd.REQUEST_MAX_BYTES + 1
    assert nbd.check_range(nbd.Request(0, nbd.CMD_READ, 1, 0, big), 2**40) == nbd.EOVERFLOW


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parsers_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    for parse in (nbd.parse_client_flags, nbd.parse_option_header, nbd.parse_info_request, nbd.parse_export_name,
                  nbd.parse_request):
        try:
            parse(data)
        except RemoteProtocolError:
            pass
