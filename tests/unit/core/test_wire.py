"""Peer wire format: decode or raise RemoteProtocolError — nothing else, whatever the bytes.

The invariant of :mod:`replicad.core.wire` is checked by fuzzing :func:`decode_doc`,
:func:`decode_reply` and :class:`FrameReader` with random bytes, random msgpack structures,
near-valid documents, truncations and trailing garbage; valid documents and chunk streams
must round-trip exactly, however the network splits them.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from replicad.core import wire
from replicad.core.errors import LocalProtocolError, RemoteProtocolError

KINDS = sorted(wire.SCHEMAS)
FIELD_NAMES = sorted({*wire._COMMON, *(f for s in wire.SCHEMAS.values() for f in s)})
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digests_st = st.binary(min_size=wire.DIGEST_SIZE, max_size=wire.DIGEST_SIZE)
counter_st = st.integers(0, wire.MAX_COUNTER)

# Any value msgpack can carry (no floats: NaN != NaN would spoil equality checks).
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40)
hashable_keys = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) \
    | st.binary(max_size=10) | st.sampled_from(FIELD_NAMES)
msgpack_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(hashable_keys, children, max_size=6),
    max_leaves=20,
)


def valid_fields(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Fields (without ``v``) of a valid document of ``kind``."""
    common = {"volume": st.text(max_size=30), "epoch": counter_st, "from": st.text(max_size=20)}
    extra = {
        "missing": {"digests": st.lists(digests_st, max_size=8)},
        "fetch": {"digests": st.lists(digests_st, max_size=8)},
        "snapshot": {"seq": counter_st, "root": digests_st},
        "chunks": {},
    }[kind]
    return st.fixed_dictionaries({**common, **extra})


def check_well_typed(kind: str, doc: Any) -> None:
    """The promise of decode_doc for an accepted document."""
    assert isinstance(doc, dict)
    assert doc["v"] == wire.WIRE_VERSION
    for name, typ in {**wire._COMMON, **wire.SCHEMAS[kind]}.items():
        assert isinstance(doc[name], typ) and not isinstance(doc[name], bool), name
    assert 0 <= doc["epoch"] <= wire.MAX_COUNTER
    if "seq" in wire.SCHEMAS[kind]:
        assert 0 <= doc["seq"] <= wire.MAX_COUNTER
    if "digests" in wire.SCHEMAS[kind]:
        assert len(doc["digests"]) <= wire.MAX_DIGESTS_PER_DOC
        assert all(isinstance(d, bytes) and len(d) == wire.DIGEST_SIZE for d in doc["digests"])
    if "root" in wire.SCHEMAS[kind]:
        assert len(doc["root"]) == wire.DIGEST_SIZE


def decode_or_reject(kind: str, data: bytes) -> dict[str, Any] | None:
    """decode_doc's result (checked), or None if it raised RemoteProtocolError.

    Any other exception propagates and fails the test: that is the invariant.
    """
    try:
        doc = wire.decode_doc(kind, data)
    except RemoteProtocolError:
        return None
    check_well_typed(kind, doc)
    return doc


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def valid_doc(kind: str, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"v": wire.WIRE_VERSION, "volume": "pacs", "epoch": 3, "from": "site-a"}
    fields.update({"missing": {"digests": [bytes([i]) * 32 for i in range(3)]},
                   "fetch": {"digests": [b"\x07" * 32]},
                   "snapshot": {"seq": 12, "root": b"\x09" * 32},
                   "chunks": {}}[kind])
    fields.update(over)
    return fields


# ----------------------------------------------------------------------------- decode_doc fuzz


@FUZZ
@given(kind=st.sampled_from(KINDS + ["nope"]), data=st.binary(max_size=300))
def test_random_bytes_decode_or_raise_remote_protocol_error(kind: str, data: bytes) -> None:
    if kind == "nope":
        with pytest.raises(RemoteProtocolError):
            wire.decode_doc(kind, data)
        return
    decode_or_reject(kind, data)


@FUZZ
@given(kind=st.sampled_from(KINDS), value=msgpack_values)
def test_random_msgpack_structures_decode_or_raise(kind: str, value: Any) -> None:
    data = pack(value)
    assert decode_or_reject(kind, data) is None or isinstance(value, dict)
    decode_or_reject(kind, data[: len(data) // 2])
    decode_or_reject(kind, data + b"\xc1")


@FUZZ
@given(kind=st.sampled_from(KINDS), doc=st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=8))
def test_random_maps_over_the_real_field_names(kind: str, doc: dict[str, Any]) -> None:
    decode_or_reject(kind, pack(doc))
    if "seq" not in wire.SCHEMAS[kind]:  # a non-int extra seq: see test_extra_non_int_seq_is_a_remote_protocol_error
        doc.pop("seq", None)
    decode_or_reject(kind, pack({**valid_doc(kind), **doc}))


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_valid_document_with_one_field_mutated(data: st.DataObject, kind: str) -> None:
    fields = data.draw(valid_fields(kind))
    doc = {"v": wire.WIRE_VERSION, **fields}
    name = data.draw(st.sampled_from(sorted(doc)))
    action = data.draw(st.sampled_from(["replace", "delete", "near"]))
    if action == "delete":
        del doc[name]
    elif action == "replace":
        doc[name] = data.draw(msgpack_values)
    else:  # values next to the valid ones: off-by-one sizes and bounds, wrong scalar types
        doc[name] = data.draw(st.sampled_from([
            -1, wire.MAX_COUNTER + 1, 2**64 - 1, True, b"\x01" * 31, b"\x01" * 33, "x" * 32,
            [b"\x01" * 31], [b"\x01" * 32, 5], [b"\x01" * 32] * 2, 0, 2, None, {}, [],
        ]))
    got = decode_or_reject(kind, pack(doc))
    if got is not None:
        assert got == doc


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_truncated_and_extended_valid_documents_are_rejected(data: st.DataObject, kind: str) -> None:
    encoded = wire.encode_doc(kind, **data.draw(valid_fields(kind)))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(RemoteProtocolError):
        wire.decode_doc(kind, encoded[:cut])
    trailing = data.draw(st.binary(min_size=1, max_size=40))
    with pytest.raises(RemoteProtocolError):
        wire.decode_doc(kind, encoded + trailing)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_valid_document_with_bytes_flipped(data: st.DataObject, kind: str) -> None:
    encoded = bytearray(wire.encode_doc(kind, **data.draw(valid_fields(kind))))
    for _ in range(data.draw(st.integers(1, 4))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    decode_or_reject(kind, bytes(encoded))


def test_deep_nesting_and_unhashable_keys_are_remote_errors() -> None:
    for data in (b"\x91" * 5000, b"\x81" * 5000, b"\x81\x91\x01\x01", b"\x81\x81\x01\x01\x01",
                 b"\xc1", b"", b"\xd4\xff\x00", b"\xc7\x03\xff\x00\x00\x00"):
        for kind in KINDS:
            with pytest.raises(RemoteProtocolError):
                wire.decode_doc(kind, data)


@pytest.mark.parametrize("kind", KINDS)
@settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(name=st.sampled_from(FIELD_NAMES + ["extra"]), value=msgpack_values)
@example(name="seq", value="7")
def test_valid_document_with_an_extra_field(kind: str, name: str, value: Any) -> None:
    doc = valid_doc(kind)
    if name in doc:
        return
    got = decode_or_reject(kind, pack({**doc, name: value}))
    assert got is None or got == {**doc, name: value}


@pytest.mark.parametrize("kind", ["missing", "fetch", "chunks"])
def test_extra_non_int_seq_on_a_kind_without_seq_is_ignored(kind: str) -> None:
    # fields a kind does not define are carried along unchecked (forward compatibility), never crash
    assert wire.decode_doc(kind, pack(valid_doc(kind, seq="12")))["seq"] == "12"


def test_frame_reader_header_with_extra_non_int_seq() -> None:
    reader = wire.FrameReader("chunks")
    reader.feed(pack(valid_doc("chunks", seq=None)))
    assert list(reader.frames()) == [] and reader.finish()["seq"] is None


def test_frame_reader_only_reads_stream_kinds() -> None:
    with pytest.raises(LocalProtocolError):
        wire.FrameReader("missing")


# ----------------------------------------------------------------------------- bounds


def test_bounds_on_counters_and_digest_count() -> None:
    for kind in KINDS:
        for epoch in (-1, wire.MAX_COUNTER + 1, 2**64 - 1, -(2**63)):
            with pytest.raises(RemoteProtocolError):
                wire.decode_doc(kind, pack(valid_doc(kind, epoch=epoch)))
        assert wire.decode_doc(kind, pack(valid_doc(kind, epoch=wire.MAX_COUNTER)))["epoch"] == wire.MAX_COUNTER
    for seq in (-1, wire.MAX_COUNTER + 1):
        with pytest.raises(RemoteProtocolError):
            wire.decode_doc("snapshot", pack(valid_doc("snapshot", seq=seq)))
    full = [i.to_bytes(32, "big") for i in range(wire.MAX_DIGESTS_PER_DOC)]
    for kind in ("missing", "fetch"):
        assert len(wire.decode_doc(kind, wire.encode_doc(kind, **{**valid_doc(kind), "digests": full}))["digests"]) \
            == wire.MAX_DIGESTS_PER_DOC
        with pytest.raises(RemoteProtocolError):
            wire.decode_doc(kind, pack(valid_doc(kind, digests=full + [b"\x01" * 32])))
        with pytest.raises(LocalProtocolError):
            wire.encode_doc(kind, **{**valid_doc(kind), "digests": full + [b"\x01" * 32]})


def test_oversized_documents_and_huge_declarations_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_doc("missing", b"\x80" + bytes(wire.MAX_DOC_BYTES))
    # A map whose volume declares a 100 MiB string / bin, and a 2**32-1 element array.
    declare_str = b"\x84\xa1v\x01\xa6volume\xdb" + (100 * 2**20).to_bytes(4, "big") + b"abc"
    declare_bin = b"\xc6" + (100 * 2**20).to_bytes(4, "big") + b"abc"
    declare_arr = b"\xdd\xff\xff\xff\xff\x01"
    for data in (declare_str, declare_bin, declare_arr):
        for kind in KINDS:
            with pytest.raises(RemoteProtocolError):
                wire.decode_doc(kind, data)
            with pytest.raises(RemoteProtocolError):
                wire.decode_reply(data)


def test_nested_array_headers_do_not_amplify_memory() -> None:
    data = b"\xdc\xff\xff" * 1000  # 1000 nested arrays, each declaring 65535 entries
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            wire.decode_doc("missing", data)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes <= wire.MAX_DOC_BYTES


# ----------------------------------------------------------------------------- round trips, encode errors


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_encode_decode_round_trip(data: st.DataObject, kind: str) -> None:
    fields = data.draw(valid_fields(kind))
    # unknown fields pass through; "kind" is encode_doc's own parameter, not a field name
    extra = data.draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in FIELD_NAMES
                                                                             and k != "kind"),
                                      msgpack_values, max_size=3))
    fields.update(extra)
    assert wire.decode_doc(kind, wire.encode_doc(kind, **fields)) == {"v": wire.WIRE_VERSION, **fields}


@pytest.mark.parametrize("kind", KINDS)
def test_encode_doc_refuses_bad_fields(kind: str) -> None:
    good = {k: v for k, v in valid_doc(kind).items() if k != "v"}
    wire.encode_doc(kind, **good)
    bad_variants: list[dict[str, Any]] = [
        {**good, "epoch": -1}, {**good, "epoch": wire.MAX_COUNTER + 1}, {**good, "epoch": True},
        {**good, "epoch": "3"}, {**good, "volume": b"pacs"}, {**good, "from": None}, {**good, "v": 2},
        {k: v for k, v in good.items() if k != "from"}, {k: v for k, v in good.items() if k != "volume"},
    ]
    if kind in ("missing", "fetch"):
        bad_variants += [{**good, "digests": (b"\x01" * 32,)}, {**good, "digests": [b"\x01" * 31]},
                         {**good, "digests": ["x" * 32]}]
    if kind == "snapshot":
        bad_variants += [{**good, "seq": -1}, {**good, "seq": 1.0}, {**good, "root": b"\x01" * 33},
                         {**good, "root": "r" * 32}]
    for fields in bad_variants:
        with pytest.raises(LocalProtocolError):
            wire.encode_doc(kind, **fields)
    with pytest.raises(LocalProtocolError):
        wire.encode_doc("nope", **good)


def test_encode_doc_refuses_a_document_above_max_doc_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode_doc("chunks", volume="pacs", epoch=1, blob=bytes(wire.MAX_DOC_BYTES), **{"from": "a"})


def test_encode_doc_refuses_what_decode_doc_would_refuse() -> None:
    fields = {"volume": "v" * (2**20 + 1), "epoch": 1, "from": "a", "digests": []}
    with pytest.raises(RemoteProtocolError):
        wire.decode_doc("missing", pack({"v": wire.WIRE_VERSION, **fields}))
    with pytest.raises(LocalProtocolError):
        wire.encode_doc("missing", **fields)


# ----------------------------------------------------------------------------- decode_reply


@FUZZ
@given(data=st.binary(max_size=200) | msgpack_values.map(pack))
def test_decode_reply_returns_a_map_or_raises(data: bytes) -> None:
    try:
        reply = wire.decode_reply(data)
    except RemoteProtocolError:
        return
    assert isinstance(reply, dict)


def test_reply_round_trip() -> None:
    assert wire.decode_reply(wire.encode_reply(missing=[b"\x01" * 32], stored=True)) == {
        "v": wire.WIRE_VERSION, "missing": [b"\x01" * 32], "stored": True}


def test_decode_reply_oversized_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode_reply(b"\x80" + bytes(wire.MAX_DOC_BYTES))


# ----------------------------------------------------------------------------- FrameReader

frames_st = st.lists(st.tuples(digests_st, st.integers(0, 3), st.binary(max_size=300)), max_size=6)


def split_points(data: st.DataObject, length: int) -> list[int]:
    cuts = data.draw(st.lists(st.integers(0, length), max_size=8))
    return sorted(set(cuts))


def run_reader(kind: str, pieces: list[bytes]) -> tuple[list[tuple[bytes, int, bytes]], dict[str, Any] | None]:
    """Feed pieces, collecting frames after each; (frames, header from finish or None).

    Only RemoteProtocolError may escape the reader: it is turned into ``header=None``.
    """
    reader = wire.FrameReader(kind)
    got: list[tuple[bytes, int, bytes]] = []
    try:
        for piece in pieces:
            reader.feed(piece)
            for digest, codec, payload in reader.frames():
                assert isinstance(digest, bytes) and len(digest) == wire.DIGEST_SIZE
                assert isinstance(codec, int) and not isinstance(codec, bool)
                assert isinstance(payload, bytes)
                got.append((digest, codec, payload))
        header = reader.finish()
    except RemoteProtocolError:
        return got, None
    check_well_typed(kind, header)
    return got, header


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@FUZZ
@given(data=st.data(), kind=st.sampled_from(wire.STREAM_KINDS), frames=frames_st)
def test_valid_stream_split_anywhere_yields_exactly_the_frames(data: st.DataObject, kind: str,
                                                               frames: list[tuple[bytes, int, bytes]]) -> None:
    fields = data.draw(valid_fields(kind))
    stream = wire.encode_doc(kind, **fields) + b"".join(wire.encode_frame(*f) for f in frames)
    got, header = run_reader(kind, cut(stream, split_points(data, len(stream))))
    assert got == frames
    assert header == {"v": wire.WIRE_VERSION, **fields}


def frame_spans(header: bytes, frames: list[tuple[bytes, int, bytes]]) -> list[tuple[int, int, int]]:
    """(start, payload_start, end) stream offsets of each encoded frame after ``header``."""
    spans = []
    start = len(header)
    for frame in frames:
        encoded = wire.encode_frame(*frame)
        spans.append((start, start + len(encoded) - len(frame[2]), start + len(encoded)))
        start += len(encoded)
    return spans


@FUZZ
@given(data=st.data(), frames=frames_st.filter(bool))
def test_truncated_stream_yields_a_prefix_and_finish_refuses(data: st.DataObject,
                                                             frames: list[tuple[bytes, int, bytes]]) -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    stream = header + b"".join(wire.encode_frame(*f) for f in frames)
    end = data.draw(st.integers(0, len(stream) - 1))
    got, finished = run_reader("chunks", cut(stream[:end], split_points(data, end)))
    assert got == frames[: len(got)]
    spans = frame_spans(header, frames)
    if end < len(header):
        assert finished is None
    elif any(end == start for start, _, _ in spans):
        assert finished is not None and len(got) == [s for s, _, _ in spans].index(end)
    elif any(payload < end < stop for _, payload, stop in spans):
        assert finished is None  # cut inside a payload
    # cuts between the tokens of a frame header: test_finish_refuses_every_cut_inside_a_frame


def test_finish_refuses_every_cut_inside_a_frame() -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    frame = wire.encode_frame(b"\x05" * 32, 0, b"hello")
    accepted = []
    for end in range(1, len(frame)):
        reader = wire.FrameReader("chunks")
        reader.feed(header + frame[:end])
        assert list(reader.frames()) == []
        try:
            reader.finish()
        except RemoteProtocolError:
            continue
        accepted.append(end)
    assert accepted == []  # today: [1, 2, 3, 35, 36, 37, 38]


@FUZZ
@given(data=st.data(), kind=st.sampled_from(wire.STREAM_KINDS), noise=st.binary(max_size=400))
def test_random_bytes_into_frame_reader(data: st.DataObject, kind: str, noise: bytes) -> None:
    run_reader(kind, cut(noise, split_points(data, len(noise))))
    prefix = wire.encode_doc(kind, **data.draw(valid_fields(kind)))
    stream = prefix + noise
    run_reader(kind, cut(stream, split_points(data, len(stream))))


@FUZZ
@given(data=st.data(), objs=st.lists(msgpack_values, max_size=4))
def test_random_msgpack_frames_after_a_valid_header(data: st.DataObject, objs: list[Any]) -> None:
    stream = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"}) + b"".join(pack(o) for o in objs)
    got, header = run_reader("chunks", cut(stream, split_points(data, len(stream))))
    if header is not None:
        assert got == [tuple(o) for o in objs]


def test_malformed_frames_are_refused() -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    d = b"\x05" * 32
    for frame in ([d, 0], [d, 0, b"x", b"y"], [d[:31], 0, b"x"], [d, True, b"x"], [d, 0, "x"], [d, 1.0, b"x"],
                  {"d": d}, d, 7, [list(d), 0, b"x"]):
        got, finished = run_reader("chunks", [header, pack(frame)])
        assert got == [] and finished is None, frame
    assert run_reader("chunks", [pack({"v": 1})]) == ([], None)     # bad header
    assert run_reader("chunks", []) == ([], None)                   # no header at all


def test_frame_declaring_100_mib_is_refused_without_buffering_it() -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    declaration = b"\x93\xc4\x20" + b"\x05" * 32 + b"\x00" + b"\xc6" + (100 * 2**20).to_bytes(4, "big")
    reader = wire.FrameReader("chunks")
    reader.feed(header + declaration + b"first payload bytes")
    assert list(reader.frames()) == []
    with pytest.raises(RemoteProtocolError):
        reader.finish()
    # Feeding the declared payload: refused once about one frame bound is buffered.
    reader = wire.FrameReader("chunks")
    reader.feed(header + declaration)
    piece = bytes(2**16)
    fed = 0
    with pytest.raises(RemoteProtocolError):
        while fed <= 100 * 2**20:
            reader.feed(piece)
            fed += len(piece)
            assert list(reader.frames()) == []
    assert fed <= wire.MAX_FRAME_BYTES + wire.FEED_MAX_BYTES  # one frame + the piece that completes it


def test_encode_frame_bounds() -> None:
    with pytest.raises(LocalProtocolError):
        wire.encode_frame(b"\x01" * 31, 0, b"x")
    with pytest.raises(LocalProtocolError):
        wire.encode_frame(b"\x01" * 32, 0, bytes(wire.MAX_FRAME_BYTES))
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    largest = (b"\x01" * 32, 1, bytes(wire.MAX_FRAME_BYTES - 64))
    assert run_reader("chunks", [header, wire.encode_frame(*largest)]) == ([largest], {
        "v": wire.WIRE_VERSION, "volume": "pacs", "epoch": 2, "from": "a"})


@pytest.mark.parametrize("shift_bytes", [0, 1, 45, 2**19, 2**20 - 46, 2**20 - 45, 2**20 - 1])
def test_largest_block_frames_fed_in_one_mib_pieces(shift_bytes: int) -> None:
    """Raw 4 MiB blocks (the largest configurable block size) arrive in 1 MiB network pieces
    at any alignment (the receiver reads the request body in 1 MiB pieces)."""
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    frames = [(b"\x02" * 32, 0, bytes(shift_bytes)), (b"\x03" * 32, 0, b"\x07" * 4 * 2**20),
              (b"\x04" * 32, 0, b"\x08" * 4 * 2**20)]
    stream = header + b"".join(wire.encode_frame(*f) for f in frames)
    got, finished = run_reader("chunks", cut(stream, list(range(2**20, len(stream), 2**20))))
    assert got == frames and finished is not None


@FUZZ
@given(frames=frames_st)
def test_encode_frames_is_the_concatenation_of_encode_frame(frames: list[tuple[bytes, int, bytes]]) -> None:
    """The serving side writes a batch of frames with one copy of each payload (frame_head +
    payload): byte for byte what encode_frame gives, whatever the payload's size class."""
    assert wire.encode_frames(frames) == b"".join(wire.encode_frame(*f) for f in frames)
    for d, codec, payload in frames:
        assert wire.frame_head(d, codec, len(payload)) + payload == wire.encode_frame(d, codec, payload)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 4 * 2**20])
def test_frame_head_at_every_msgpack_bin_size_class(size: int) -> None:
    payload = bytes([size % 251]) * size
    for codec in (0, 1, 127, 128, 300):
        assert wire.frame_head(b"\x07" * 32, codec, size) + payload == wire.encode_frame(b"\x07" * 32, codec, payload)
    with pytest.raises(LocalProtocolError):
        wire.frame_head(b"\x07" * 31, 0, size)
    with pytest.raises(LocalProtocolError):
        wire.frame_head(b"\x07" * 32, 0, wire.MAX_FRAME_BYTES)


# ----------------------------------------------------------------------------- FrameSplitter


def run_splitter(kind: str, pieces: list[bytes]) -> tuple[list[tuple[bytes, int, bytes]], dict[str, Any] | None]:
    """:func:`run_reader` with :class:`wire.FrameSplitter` (payloads compared as bytes)."""
    splitter = wire.FrameSplitter(kind)
    got: list[tuple[bytes, int, bytes]] = []
    try:
        for piece in pieces:
            for digest, codec, payload in splitter.feed(piece):
                assert isinstance(digest, bytes) and len(digest) == wire.DIGEST_SIZE
                assert isinstance(codec, int) and not isinstance(codec, bool)
                assert isinstance(payload, (memoryview, bytearray))
                got.append((digest, codec, bytes(payload)))
        header = splitter.finish()
    except RemoteProtocolError:
        return got, None
    check_well_typed(kind, header)
    return got, header


big_frames_st = st.lists(st.tuples(digests_st, st.integers(0, 127),
                                   st.sampled_from([0, 1, 255, 256, 65535, 65536, 70000]).map(lambda n: b"\x5a" * n)),
                         max_size=4)


@FUZZ
@given(data=st.data(), frames=frames_st | big_frames_st)
def test_splitter_reads_what_the_reader_reads_split_anywhere(data: st.DataObject,
                                                             frames: list[tuple[bytes, int, bytes]]) -> None:
    fields = data.draw(valid_fields("chunks"))
    stream = wire.encode_doc("chunks", **fields) + wire.encode_frames(frames)
    pieces = cut(stream, split_points(data, len(stream)))
    got, header = run_splitter("chunks", pieces)
    assert (got, header) == run_reader("chunks", pieces)
    assert got == frames and header == {"v": wire.WIRE_VERSION, **fields}


def test_splitter_one_byte_at_a_time_and_payload_views() -> None:
    frames = [(bytes([i]) * 32, i % 2, bytes([i]) * n) for i, n in enumerate((0, 3, 300, 70000, 5))]
    stream = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"}) + wire.encode_frames(frames)
    assert run_splitter("chunks", [stream[i:i + 1] for i in range(len(stream))]) == \
        (frames, {"v": 1, "volume": "pacs", "epoch": 2, "from": "a"})
    splitter = wire.FrameSplitter("chunks")
    out = splitter.feed(stream)
    assert [(d, c, bytes(p)) for d, c, p in out] == frames
    assert all(isinstance(p, memoryview) for _, _, p in out)  # whole in the piece: no copy


@FUZZ
@given(data=st.data(), frames=frames_st.filter(bool))
def test_splitter_truncated_stream_yields_a_prefix_and_finish_refuses(data: st.DataObject,
                                                                      frames: list[tuple[bytes, int, bytes]]) -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    stream = header + wire.encode_frames(frames)
    end = data.draw(st.integers(0, len(stream) - 1))
    got, finished = run_splitter("chunks", cut(stream[:end], split_points(data, end)))
    assert got == frames[: len(got)]
    starts = [s for s, _, _ in frame_spans(header, frames)]
    assert (finished is not None) == (end in starts)


@FUZZ
@given(data=st.data(), noise=st.binary(max_size=400), objs=st.lists(msgpack_values, max_size=4))
def test_splitter_random_bytes_and_msgpack_frames_only_raise_remote_errors(data: st.DataObject, noise: bytes,
                                                                           objs: list[Any]) -> None:
    run_splitter("chunks", cut(noise, split_points(data, len(noise))))
    prefix = wire.encode_doc("chunks", **data.draw(valid_fields("chunks")))
    for tail in (noise, b"".join(pack(o) for o in objs)):
        stream = prefix + tail
        pieces = cut(stream, split_points(data, len(stream)))
        got, header = run_splitter("chunks", pieces)
        if header is not None:  # accepted: exactly what the msgpack reader reads
            assert (got, header) == run_reader("chunks", pieces)


def test_splitter_refuses_malformed_and_non_canonical_frames() -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    d = b"\x05" * 32
    for frame in ([d, 0], [d, 0, b"x", b"y"], [d[:31], 0, b"x"], [d, True, b"x"], [d, 0, "x"], [d, 1.0, b"x"],
                  {"d": d}, d, 7, [list(d), 0, b"x"], [d, -1, b"x"], [d, 128, b"x"]):
        assert run_splitter("chunks", [header, pack(frame)]) == ([], None), frame
    assert run_splitter("chunks", [pack({"v": 1})]) == ([], None)
    assert run_splitter("chunks", []) == ([], None)
    assert run_splitter("chunks", [b"\x81" + b"\xa1x" * 40000]) == ([], None)  # header over its bound


def test_splitter_refuses_a_100_mib_declaration_at_once() -> None:
    header = wire.encode_doc("chunks", volume="pacs", epoch=2, **{"from": "a"})
    declaration = b"\x93\xc4\x20" + b"\x05" * 32 + b"\x00" + b"\xc6" + (100 * 2**20).to_bytes(4, "big")
    for pieces in ([header + declaration + b"payload"], [header, declaration[:20], declaration[20:]]):
        splitter = wire.FrameSplitter("chunks")
        with pytest.raises(RemoteProtocolError):
            for p in pieces:
                splitter.feed(p)
    # the bound itself passes
    n = wire.MAX_FRAME_BYTES - 64
    got, _ = run_splitter("chunks", [header + wire.frame_head(b"\x05" * 32, 1, n), bytes(n)])
    assert [(d, c, len(p)) for d, c, p in got] == [(b"\x05" * 32, 1, n)]
