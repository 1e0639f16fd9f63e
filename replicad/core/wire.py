"""Peer wire format: versioned msgpack documents and bounded chunk-frame streams (sans-I/O).

Every peer request body is one msgpack map carrying ``v`` (:data:`WIRE_VERSION`), ``volume``,
``epoch`` and ``from`` (the sending site id), plus the fields of its kind (see
:data:`SCHEMAS`). Chunk streams are a header document followed by frames
``[digest(32 bytes), codec(int), payload(bytes)]``.

Invariant (tested by a property test): :func:`decode_doc` and :class:`FrameReader` either
return well-typed values or raise :class:`~replicad.core.errors.RemoteProtocolError` — nothing
else, whatever bytes a peer sends. Sizes are bounded so that a hostile peer cannot make a
site buffer more than :data:`MAX_DOC_BYTES` / :data:`MAX_FRAME_BYTES` at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

from replicad.core.errors import LocalProtocolError, RemoteProtocolError

WIRE_VERSION = 1
DIGEST_SIZE = 32
MAX_DOC_BYTES = 8 * 2**20          # one request/response document
MAX_DIGESTS_PER_DOC = 4096         # digests in one request: msgpack allocates declared array
                                   # lengths up front, so this also bounds what nesting can cost
MAX_NAME_CHARS = 255               # volume and site names
MAX_FRAME_BYTES = 5 * 2**20        # one chunk frame: block sizes are at most 4 MiB (+ lz4 slack)
FEED_MAX_BYTES = 2**20             # callers feed a FrameReader pieces of at most this size
CONTENT_TYPE = "application/x-msgpack"
MAX_COUNTER = 2**53                # epochs and seqs: far beyond any real count, fits SQLite and JSON

_INT = int
_STR = str
_BYTES = bytes

# kind -> {field: type | (type, ...)} (fields every kind carries are added below).
SCHEMAS: dict[str, dict[str, Any]] = {
    "missing": {"digests": list},
    "chunks": {},
    "snapshot": {"seq": _INT, "root": _BYTES},
    "fetch": {"digests": list},
}
_COMMON = {"v": _INT, "volume": _STR, "epoch": _INT, "from": _STR}
STREAM_KINDS = ("chunks",)  # kinds whose document heads a frame stream (no list fields)


def _unpacker(max_bytes: int, max_array_len: int = MAX_DIGESTS_PER_DOC,
              buffer_bytes: int | None = None) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        max_buffer_size=buffer_bytes or max_bytes,
        max_bin_len=max_bytes,
        max_str_len=min(max_bytes, 2**20),
        max_array_len=max_array_len,
        max_map_len=64,
    )


def encode_doc(kind: str, **fields: Any) -> bytes:
    """Encode a request document of ``kind`` with ``v`` added.

    Raises:
        LocalProtocolError: the document would not pass :func:`decode_doc` (our bug).
    """
    doc = {"v": WIRE_VERSION, **fields}
    _check(kind, doc, LocalProtocolError)
    data = msgpack.packb(doc, use_bin_type=True)
    if len(data) > MAX_DOC_BYTES:
        raise LocalProtocolError(f"{kind} document of {len(data)} bytes exceeds {MAX_DOC_BYTES}", kind=kind)
    return data


def decode_doc(kind: str, data: bytes) -> dict[str, Any]:
    """Decode and validate a request document of ``kind``.

    Returns:
        the document as a dict with the fields of :data:`SCHEMAS` and the common fields.
    Raises:
        RemoteProtocolError: truncated, oversized, wrong types, unknown version or kind.
    """
    if len(data) > MAX_DOC_BYTES:
        raise RemoteProtocolError(f"{kind} document too large: {len(data)} bytes", kind=kind)
    unpacker = _unpacker(MAX_DOC_BYTES)
    try:
        unpacker.feed(data)
        doc = unpacker.unpack()
        extra = unpacker.tell() != len(data)
    except msgpack.OutOfData:
        raise RemoteProtocolError(f"{kind} document truncated", kind=kind) from None
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise RemoteProtocolError(f"{kind} document malformed: {err}", kind=kind) from None
    if extra:
        raise RemoteProtocolError(f"{kind} document has trailing bytes", kind=kind)
    _check(kind, doc, RemoteProtocolError)
    return doc


def decode_reply(data: bytes) -> dict[str, Any]:
    """Decode a reply document (a msgpack map) from a peer; RemoteProtocolError if it is not one."""
    if len(data) > MAX_DOC_BYTES:
        raise RemoteProtocolError(f"reply too large: {len(data)} bytes")
    unpacker = _unpacker(MAX_DOC_BYTES)
    try:
        unpacker.feed(data)
        doc = unpacker.unpack()
        extra = unpacker.tell() != len(data)
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as err:
        raise RemoteProtocolError(f"reply malformed: {err}") from None
    if extra:
        raise RemoteProtocolError("reply has trailing bytes")
    if not isinstance(doc, dict):
        raise RemoteProtocolError("reply is not a map")
    return doc


def encode_reply(**fields: Any) -> bytes:
    """Encode a reply document (no schema: replies are checked by their callers)."""
    return msgpack.packb({"v": WIRE_VERSION, **fields}, use_bin_type=True)


def _check(kind: str, doc: Any, err_cls: type) -> None:
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise err_cls(f"unknown document kind {kind!r}", kind=kind)
    if not isinstance(doc, dict):
        raise err_cls(f"{kind} document is not a map", kind=kind)
    if doc.get("v") != WIRE_VERSION:
        raise err_cls(f"{kind} document has unsupported version {doc.get('v')!r} (this site speaks {WIRE_VERSION})",
                      kind=kind, version=doc.get("v"))
    for name, typ in {**_COMMON, **schema}.items():
        value = doc.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise err_cls(f"{kind} document: field {name!r} missing or not {typ.__name__}", kind=kind, field=name)
    for name in ("volume", "from"):
        if len(doc[name]) > MAX_NAME_CHARS:
            raise err_cls(f"{kind} document: {name} longer than {MAX_NAME_CHARS} characters", kind=kind, field=name)
    for name in ("epoch", "seq"):
        if name in _COMMON or name in schema:
            if not 0 <= doc[name] <= MAX_COUNTER:
                raise err_cls(f"{kind} document: {name} out of range 0..{MAX_COUNTER}", kind=kind, field=name)
    if "digests" in schema:
        digests = doc["digests"]
        if len(digests) > MAX_DIGESTS_PER_DOC:
            raise err_cls(f"{kind} document lists {len(digests)} digests (max {MAX_DIGESTS_PER_DOC})", kind=kind)
        for d in digests:
            if not isinstance(d, bytes) or len(d) != DIGEST_SIZE:
                raise err_cls(f"{kind} document: a digest is not {DIGEST_SIZE} bytes", kind=kind)
    if "root" in schema and len(doc["root"]) != DIGEST_SIZE:
        raise err_cls(f"{kind} document: root is not {DIGEST_SIZE} bytes", kind=kind)


def encode_frame(digest: bytes, codec: int, payload: bytes) -> bytes:
    """One chunk frame ``[digest, codec, payload]``; LocalProtocolError if it breaks the bounds."""
    if len(digest) != DIGEST_SIZE or len(payload) > MAX_FRAME_BYTES - 64:
        raise LocalProtocolError("chunk frame out of bounds", digest=digest, payload_bytes=len(payload))
    return msgpack.packb([digest, codec, payload], use_bin_type=True)


def frame_head(digest: bytes, codec: int, payload_bytes: int) -> bytes:
    """The bytes of the frame ``[digest, codec, payload]`` (:func:`encode_frame`) that come before
    the payload's own bytes, for a payload of ``payload_bytes``: ``head + payload`` is exactly
    ``encode_frame(digest, codec, payload)`` (msgpack: a 3-array, bin 8 of the digest, the
    codec, the bin header of the payload). LocalProtocolError if it breaks the bounds."""
    if len(digest) != DIGEST_SIZE or not 0 <= payload_bytes <= MAX_FRAME_BYTES - 64:
        raise LocalProtocolError("chunk frame out of bounds", digest=digest, payload_bytes=payload_bytes)
    if payload_bytes < 2**8:
        size = b"\xc4" + payload_bytes.to_bytes(1, "big")
    elif payload_bytes < 2**16:
        size = b"\xc5" + payload_bytes.to_bytes(2, "big")
    else:
        size = b"\xc6" + payload_bytes.to_bytes(4, "big")
    return b"\x93\xc4\x20" + bytes(digest) + msgpack.packb(codec) + size


def encode_frames(frames: Iterable[tuple[bytes, int, bytes]]) -> bytes:
    """The frames ``(digest, codec, payload)`` one after the other, as one bytes object: equal to
    ``b"".join(encode_frame(*f) for f in frames)`` but each payload copied once (a chunk stream
    served at disk speed copies hundreds of MB; :func:`encode_frame` copies each payload twice,
    the join a third time). LocalProtocolError if a frame breaks the bounds."""
    parts: list[bytes] = []
    for digest, codec, payload in frames:
        parts.append(frame_head(digest, codec, len(payload)))
        parts.append(payload)
    return b"".join(parts)


_HEAD_FIXED = 37               # 0x93, bin 8 of 32 bytes (0xc4 0x20 + digest), codec fixint, bin marker
_BIN_SIZE_BYTES = {0xc4: 1, 0xc5: 2, 0xc6: 4}
MAX_HEADER_DOC_BYTES = 2**16   # the document heading a chunk stream (a few names and numbers)


class FrameSplitter:
    """Reader of a chunk stream like :class:`FrameReader` (same bytes, same bounds), for the
    restore path where the payloads are hundreds of MB: it copies as little as it can.

    It reads only the canonical form every sender here writes (:func:`frame_head`: a 3-array,
    the digest as bin 8 of 32 bytes, the codec as a positive fixint, the payload as bin
    8/16/32 of at most ``MAX_FRAME_BYTES - 64``); any other bytes are a RemoteProtocolError
    (a compromised peer gets no more latitude than that). :meth:`feed` returns the frames
    completed by a piece: a payload lying whole in one fed piece is a ``memoryview`` of it
    (no copy: it keeps that piece alive), one spanning pieces is copied once into a
    ``bytearray`` of its declared size, allocated only when its first bytes arrive. The
    heading document is decoded with msgpack (at most MAX_HEADER_DOC_BYTES).

    Raises (from :meth:`feed` and :meth:`finish`) RemoteProtocolError: a malformed header or
    frame, a frame over the bound, a stream that ends in a frame or without a header.
    """

    def __init__(self, kind: str) -> None:
        if kind not in STREAM_KINDS:
            raise LocalProtocolError(f"{kind!r} does not head a chunk stream", kind=kind)
        self.kind = kind
        self.header: dict[str, Any] | None = None
        self._pre = bytearray()                      # bytes before the header is complete
        self._head = bytearray()                     # a frame head split across pieces
        self._cur: tuple[bytes, int, bytearray, int] | None = None  # digest, codec, payload, filled

    def _frame_head(self, head: bytes | bytearray | memoryview) -> tuple[bytes, int, int, int]:
        """(digest, codec, payload bytes, head bytes) of a complete head; RemoteProtocolError."""
        if head[0] != 0x93 or head[1] != 0xc4 or head[2] != DIGEST_SIZE or head[35] > 0x7f \
                or head[36] not in _BIN_SIZE_BYTES:
            raise RemoteProtocolError("chunk stream: malformed frame")
        k = _BIN_SIZE_BYTES[head[36]]
        n = int.from_bytes(head[_HEAD_FIXED:_HEAD_FIXED + k], "big")
        if n > MAX_FRAME_BYTES - 64:
            raise RemoteProtocolError("chunk stream frame exceeds bound", bound=MAX_FRAME_BYTES)
        return bytes(head[3:35]), head[35], n, _HEAD_FIXED + k

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, int, memoryview | bytearray]]:
        """Take the next piece of the stream; return the ``(digest, codec, payload)`` frames it
        completed, in order."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        if self.header is None:
            self._pre += view
            unpacker = _unpacker(MAX_HEADER_DOC_BYTES)
            try:
                unpacker.feed(self._pre[:MAX_HEADER_DOC_BYTES])
                doc = unpacker.unpack()
            except msgpack.OutOfData:
                if len(self._pre) >= MAX_HEADER_DOC_BYTES:
                    raise RemoteProtocolError("chunk stream header exceeds bound", bound=MAX_HEADER_DOC_BYTES) from None
                return []
            except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError, msgpack.BufferFull) as err:
                raise RemoteProtocolError(f"chunk stream malformed: {err}") from None
            _check(self.kind, doc, RemoteProtocolError)
            self.header = doc
            view = memoryview(bytes(self._pre[unpacker.tell():]))
            self._pre = bytearray()
        out: list[tuple[bytes, int, memoryview | bytearray]] = []
        pos, end = 0, len(view)
        while pos < end:
            if self._cur is not None:  # a payload begun in an earlier piece
                digest, codec, payload, filled = self._cur
                take = min(len(payload) - filled, end - pos)
                payload[filled:filled + take] = view[pos:pos + take]
                pos += take
                filled += take
                if filled == len(payload):
                    out.append((digest, codec, payload))
                    self._cur = None
                else:
                    self._cur = (digest, codec, payload, filled)
                continue
            if self._head or end - pos < _HEAD_FIXED + 4:  # a head split across pieces: gather it
                want = _HEAD_FIXED + _BIN_SIZE_BYTES.get(self._head[36], 1) if len(self._head) > 36 else _HEAD_FIXED
                take = min(want - len(self._head), end - pos)
                self._head += view[pos:pos + take]
                pos += take
                if len(self._head) == _HEAD_FIXED:
                    if self._head[36] not in _BIN_SIZE_BYTES:
                        raise RemoteProtocolError("chunk stream: malformed frame")
                    continue
                if len(self._head) < want:
                    continue
                digest, codec, n, _ = self._frame_head(self._head)
                self._head = bytearray()
            else:
                digest, codec, n, k = self._frame_head(view[pos:pos + _HEAD_FIXED + 4])
                pos += k
            if end - pos >= n:  # whole in this piece: a view, no copy
                out.append((digest, codec, view[pos:pos + n]))
                pos += n
            else:
                payload = bytearray(n)
                take = end - pos
                payload[:take] = view[pos:end]
                pos = end
                self._cur = (digest, codec, payload, take)
        return out

    def finish(self) -> dict[str, Any]:
        """Check the stream ended cleanly (a header, no frame begun); return its header."""
        if self.header is None:
            raise RemoteProtocolError("chunk stream without header")
        if self._cur is not None or self._head:
            raise RemoteProtocolError("chunk stream truncated in the middle of a frame")
        return self.header


class FrameReader:
    """Incremental reader of a chunk stream: one header document of ``kind``, then frames.

    Feed it bytes as they arrive; iterate :meth:`frames` for complete ``(digest, codec,
    payload)`` triples. Buffers at most one frame (:data:`MAX_FRAME_BYTES`).

    Raises:
        RemoteProtocolError: malformed header or frame, a frame over the bound, or (from
            :meth:`finish`) a stream that ends in the middle of a frame or without a header.
    """

    def __init__(self, kind: str) -> None:
        if kind not in STREAM_KINDS:
            raise LocalProtocolError(f"{kind!r} does not head a chunk stream", kind=kind)
        self.kind = kind
        self.header: dict[str, Any] | None = None
        # the buffer holds one whole frame plus the network piece that completes it
        self._unpacker = _unpacker(MAX_FRAME_BYTES, max_array_len=3, buffer_bytes=MAX_FRAME_BYTES + FEED_MAX_BYTES)
        self._fed_bytes = 0
        self._complete_at = 0  # stream offset just after the last complete object

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise RemoteProtocolError("chunk stream frame exceeds bound", bound=MAX_FRAME_BYTES) from None
        self._fed_bytes += len(data)

    def frames(self) -> Iterator[tuple[bytes, int, bytes]]:
        while True:
            try:
                obj = self._unpacker.unpack()
            except msgpack.OutOfData:
                return
            except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as err:
                raise RemoteProtocolError(f"chunk stream malformed: {err}") from None
            self._complete_at = self._unpacker.tell()
            if self.header is None:
                _check(self.kind, obj, RemoteProtocolError)
                self.header = obj
                continue
            if (not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[0], bytes)
                    or len(obj[0]) != DIGEST_SIZE or not isinstance(obj[1], int) or isinstance(obj[1], bool)
                    or not isinstance(obj[2], bytes)):
                raise RemoteProtocolError("chunk stream: malformed frame")
            yield obj[0], obj[1], obj[2]

    def finish(self) -> dict[str, Any]:
        """Check the stream ended cleanly; return its header."""
        if self.header is None:
            raise RemoteProtocolError("chunk stream without header")
        try:
            self._unpacker.unpack()
        except msgpack.OutOfData:
            pass
        except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as err:
            raise RemoteProtocolError(f"chunk stream malformed: {err}") from None
        else:
            raise RemoteProtocolError("chunk stream: unread frame at end")
        if self._complete_at != self._fed_bytes:
            raise RemoteProtocolError("chunk stream truncated in the middle of a frame")
        return self.header
