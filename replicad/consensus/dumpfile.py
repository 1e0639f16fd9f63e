"""The bytes of ``raft.dump``: a checksummed frame around the msgpack dump document.

A dump written by :meth:`replicad.consensus.raft.RaftNode._serialize_dump` is the state this
site restarts from, and the bytes a leader ships to a follower behind its log's start
(pysyncobj sends the file as it is). The document inside (:func:`replicad.consensus.checkpoint.dump_document`,
version 2) is verified by replaying its suffix, but a command whose bytes were damaged fails
its signature and is *replayed as refused*, exactly like a command forged by a lying leader:
without a checksum a flipped bit on this site's own disk made the node run from a silently
different state (chaos Raft-storage campaign, fault ``dump-body``). So the file carries one.

File format 3 (:data:`FORMAT_VERSION`)::

    MAGIC (16 bytes, b"REPLICAD-RAFTDMP") | <I version (3) | BLAKE3-256 of the body (32 bytes) | body

``body`` is the msgpack (``use_bin_type``) of the dump document, unchanged (its own ``v`` is
2). Every single flipped bit is detected: in the magic the file is no dump of either format
(a v2 file starts with a msgpack map byte, 0x80-0x8f/0xde/0xdf, and no one-bit change of
``R`` 0x52 gives one), in the version an unknown version, in the digest or body a mismatch.

Format 2 (before this frame): the bare msgpack document. :func:`decode` reports it as
``legacy``; what the callers do with it: this site's own dump at start is accepted once with
a WARNING and rewritten in format 3 at once (every site of a cluster being upgraded holds a
format-2 dump: refusing it would stop every site at once); a format-2 dump from a leader
still running the previous version is accepted (after the full content verification) and
stored here in format 3.
"""

from __future__ import annotations

import struct
from typing import Any

import blake3
import msgpack

from replicad.core import errors

MAGIC = b"REPLICAD-RAFTDMP"
FORMAT_VERSION = 3
LEGACY_VERSION = 2
_VERSION = struct.Struct("<I")
DIGEST_BYTES = 32
HEADER_BYTES = len(MAGIC) + _VERSION.size + DIGEST_BYTES  # 52


def frame(body: bytes) -> bytes:
    """The format-3 file bytes around ``body`` (the msgpack of a dump document)."""
    return MAGIC + _VERSION.pack(FORMAT_VERSION) + blake3.blake3(body).digest() + body


def encode(document: dict) -> bytes:
    """The format-3 file bytes of ``document``. Raises ``TypeError``/``ValueError`` (msgpack)."""
    return frame(msgpack.packb(document, use_bin_type=True))


def unpack(data: bytes) -> tuple[bytes, bool]:
    """``(body, legacy)`` of the file bytes ``data``, the checksum verified (format 3) or
    absent (format 2: ``legacy`` True, ``data`` itself is the body).

    Raises:
        errors.DumpRefusedError: reason ``dump_damaged``: the magic is there but the version
            is unknown, the file is shorter than its header, or the body's BLAKE3 is not the
            one recorded (evidence ``expected``/``actual`` as hex prefixes, ``size_bytes``).
            A file that starts otherwise is returned as legacy: decoding it tells.
    """
    if not data.startswith(MAGIC):
        return data, True
    if len(data) < HEADER_BYTES:
        raise errors.DumpRefusedError(f"the dump is cut inside its header ({len(data)} bytes, the header is "
                                      f"{HEADER_BYTES})", reason="dump_damaged", size_bytes=len(data))
    (version,) = _VERSION.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise errors.DumpRefusedError(f"the dump file has format version {version}, this site reads "
                                      f"{FORMAT_VERSION} (and {LEGACY_VERSION})", reason="dump_damaged",
                                      version=version, size_bytes=len(data))
    expected = data[len(MAGIC) + _VERSION.size:HEADER_BYTES]
    body = data[HEADER_BYTES:]
    actual = blake3.blake3(body).digest()
    if actual != expected:
        raise errors.DumpRefusedError(
            f"the dump's checksum does not match its content (BLAKE3 {actual.hex()[:16]}..., recorded "
            f"{expected.hex()[:16]}...; {len(data)} bytes): the file was damaged", reason="dump_damaged",
            expected=expected.hex()[:16], actual=actual.hex()[:16], size_bytes=len(data))
    return body, False


def decode(data: bytes) -> tuple[Any, bool]:
    """``(document, legacy)`` of the file bytes ``data`` (:func:`unpack`, then msgpack).

    Raises:
        errors.DumpRefusedError: as :func:`unpack`; or reason ``dump_damaged`` when the body
            is no msgpack value (undecodable, trailing bytes).
    """
    body, legacy = unpack(data)
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False), legacy
    except Exception as exc:  # msgpack raises a variety of types for bad input
        raise errors.DumpRefusedError(f"the dump does not decode ({type(exc).__name__}: {str(exc)[:120]}; "
                                      f"{len(data)} bytes, format {LEGACY_VERSION if legacy else FORMAT_VERSION})",
                                      reason="dump_damaged", size_bytes=len(data)) from None
