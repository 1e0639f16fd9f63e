"""The NBD wire protocol, sans I/O: constants, parsers and encoders of the messages a server
exchanges with a client (the newstyle *fixed* handshake and simple replies).

Reference: the NBD protocol document (NetworkBlockDevice/nbd ``doc/proto.md``). Every number
is big-endian ("network byte order"). Shapes of the messages this module handles::

    S: "NBDMAGIC" | "IHAVEOPT" | u16 handshake flags            (greeting, 18 bytes)
    C: u32 client flags                                          (4 bytes)
    C: "IHAVEOPT" | u32 option | u32 length | data               (option request, 16 + length)
    S: u64 0x3e889045565a9 | u32 option | u32 reply type | u32 length | data   (option reply)
    S: u64 size | u16 transmission flags [| 124 zero bytes]      (answer to NBD_OPT_EXPORT_NAME)
    C: u32 0x25609513 | u16 flags | u16 type | u64 cookie | u64 offset | u32 length [| data]
    S: u32 0x67446698 | u32 error | u64 cookie [| data]          (simple reply)

Parsers raise :class:`~replicad.core.errors.RemoteProtocolError` (the client's fault) and
nothing else; encoders assert their own arguments (a bad value there is our bug).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from replicad.core.errors import RemoteProtocolError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8

# option reply types
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6

# NBD_REP_INFO types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_CAN_MULTI_CONN = 1 << 8

# commands and command flags
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1

# errors of a simple reply (the protocol's own values, not the host's errno)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

OPTION_MAX_BYTES = 64 * 1024        # an option's data beyond this is refused (names are <= 4096 bytes)
REQUEST_MAX_BYTES = 32 * 2**20      # one READ/WRITE: the largest payload this server accepts (EINVAL/EOVERFLOW above)
NAME_MAX_BYTES = 4096               # the protocol's bound on a string

_GREETING = struct.Struct(">8sQH")
_OPTION = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE = struct.Struct(">IIQ")
OPTION_HEADER_BYTES = _OPTION.size     # 16
REQUEST_HEADER_BYTES = _REQUEST.size   # 28


def greeting(no_zeroes: bool = True) -> bytes:
    """The server's first 18 bytes: ``NBDMAGIC | IHAVEOPT | flags`` (fixed newstyle, and
    NO_ZEROES when ``no_zeroes``)."""
    return _GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0))


def parse_client_flags(data: bytes) -> int:
    """The client's 4-byte flags. Raises RemoteProtocolError if they lack FIXED_NEWSTYLE (this
    server speaks only the fixed newstyle handshake) or set unknown bits."""
    if len(data) != 4:
        raise RemoteProtocolError("NBD client flags must be 4 bytes", length=len(data))
    flags = int.from_bytes(data, "big")
    if not flags & FLAG_C_FIXED_NEWSTYLE:
        raise RemoteProtocolError("NBD client does not speak the fixed newstyle handshake", flags=flags)
    if flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        raise RemoteProtocolError("NBD client flags carry unknown bits", flags=flags)
    return flags


@dataclass(frozen=True)
class OptionHeader:
    """An option request's header: ``option`` number and ``length`` (bytes of data that follow)."""

    option: int
    length: int


def parse_option_header(data: bytes) -> OptionHeader:
    """Parse 16 bytes ``IHAVEOPT | option | length``. Raises RemoteProtocolError on a wrong
    magic or a length above OPTION_MAX_BYTES."""
    if len(data) != OPTION_HEADER_BYTES:
        raise RemoteProtocolError("short NBD option header", length=len(data))
    magic, option, length = _OPTION.unpack(data)
    if magic != IHAVEOPT:
        raise RemoteProtocolError("NBD option without the IHAVEOPT magic", magic=hex(magic))
    if length > OPTION_MAX_BYTES:
        raise RemoteProtocolError("NBD option data too long", option=option, length=length)
    return OptionHeader(option, length)


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """An option reply: ``magic | option | reply type | length | data``."""
    return _OPT_REPLY.pack(OPT_REPLY_MAGIC, option, reply_type, len(data)) + data


@dataclass(frozen=True)
class InfoRequest:
    """The data of NBD_OPT_INFO / NBD_OPT_GO: the export ``name`` and the info types asked."""

    name: str
    infos: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    """Parse ``u32 name length | name | u16 n | n x u16``. Raises RemoteProtocolError when the
    lengths do not add up or the name is not UTF-8 / too long."""
    if len(data) < 6:
        raise RemoteProtocolError("NBD info request too short", length=len(data))
    n = int.from_bytes(data[:4], "big")
    if n > NAME_MAX_BYTES or 4 + n + 2 > len(data):
        raise RemoteProtocolError("NBD info request: bad name length", name_length=n, length=len(data))
    name = _name(data[4:4 + n])
    count = int.from_bytes(data[4 + n:6 + n], "big")
    rest = data[6 + n:]
    if len(rest) != 2 * count:
        raise RemoteProtocolError("NBD info request: info count does not match its data", count=count,
                                  length=len(rest))
    return InfoRequest(name, tuple(struct.unpack(f">{count}H", rest)))


def parse_export_name(data: bytes) -> str:
    """The name of NBD_OPT_EXPORT_NAME (the whole option data). Raises RemoteProtocolError."""
    if len(data) > NAME_MAX_BYTES:
        raise RemoteProtocolError("NBD export name too long", length=len(data))
    return _name(data)


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("NBD export name is not UTF-8") from None
    if "\x00" in name:
        raise RemoteProtocolError("NBD export name contains NUL")
    return name


def info_export(size_bytes: int, flags: int) -> bytes:
    """NBD_REP_INFO data of type NBD_INFO_EXPORT: ``u16 0 | u64 size | u16 flags``."""
    return struct.pack(">HQH", INFO_EXPORT, size_bytes, flags)


def info_name(name: str) -> bytes:
    """NBD_REP_INFO data of type NBD_INFO_NAME."""
    return struct.pack(">H", INFO_NAME) + name.encode("utf-8")


def info_description(text: str) -> bytes:
    """NBD_REP_INFO data of type NBD_INFO_DESCRIPTION."""
    return struct.pack(">H", INFO_DESCRIPTION) + text.encode("utf-8")[:NAME_MAX_BYTES]


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    """NBD_REP_INFO data of type NBD_INFO_BLOCK_SIZE (bytes: minimum, preferred, maximum)."""
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def server_entry(name: str) -> bytes:
    """NBD_REP_SERVER data of NBD_OPT_LIST: ``u32 name length | name``."""
    raw = name.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def export_name_answer(size_bytes: int, flags: int, no_zeroes: bool) -> bytes:
    """The answer to NBD_OPT_EXPORT_NAME: ``u64 size | u16 flags`` and 124 zero bytes unless
    the client negotiated NO_ZEROES."""
    return struct.pack(">QH", size_bytes, flags) + (b"" if no_zeroes else bytes(124))


@dataclass(frozen=True)
class Request:
    """A transmission request: ``flags``, ``kind`` (CMD_*), ``cookie`` (echoed in the reply),
    ``offset`` and ``length`` in bytes (a WRITE's ``length`` bytes of data follow it)."""

    flags: int
    kind: int
    cookie: int
    offset: int
    length: int


def parse_request(data: bytes) -> Request:
    """Parse a 28-byte request header. Raises RemoteProtocolError on a wrong magic (the
    connection cannot be resynchronised: the caller drops it)."""
    if len(data) != REQUEST_HEADER_BYTES:
        raise RemoteProtocolError("short NBD request header", length=len(data))
    magic, flags, kind, cookie, offset, length = _REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise RemoteProtocolError("NBD request without its magic", magic=hex(magic))
    return Request(flags, kind, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A simple reply header (16 bytes); a successful READ's data follows it."""
    return _SIMPLE.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def check_range(req: Request, size_bytes: int) -> int:
    """0 if ``req`` addresses bytes inside an export of ``size_bytes``, else the NBD error to
    answer: EINVAL past the end (the protocol's choice for an out-of-range request), EOVERFLOW
    for a READ/WRITE above REQUEST_MAX_BYTES."""
    if req.offset + req.length > size_bytes:
        return EINVAL
    if req.kind in (CMD_READ, CMD_WRITE) and req.length > REQUEST_MAX_BYTES:
        return EOVERFLOW
    return 0
