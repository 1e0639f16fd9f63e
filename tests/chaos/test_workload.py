"""The workload's two block kinds (text, ciphertext) are exact, recognisable and tamper-evident,
and a ciphertext block is what the ransomware signal calls random while a text block is not.
Pure and fast: no processes, no root."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from chaos.harness import History, read_history
from chaos.workload import (CRYPT_HEADER, HEADER, Workload, block_bytes, crypt_gens, expected_image, parse_block,
                            parse_block_kind, parse_image)
from replicad.core.anomaly import looks_random
from replicad.storage.chunkstore import encode_chunk

VOL = "ehr"


@pytest.mark.parametrize("bs", [4096, 65536])
def test_ciphertext_block_roundtrip(bs: int) -> None:
    c = block_bytes(VOL, 5, 9, bs, crypt=True)
    assert len(c) == bs and c.startswith(CRYPT_HEADER + b"ehr 5 9\n")
    assert parse_block_kind(c, VOL, 5) == (9, True) and parse_block(c, VOL, 5) == 9
    assert block_bytes(VOL, 5, 9, bs, crypt=True) == c  # deterministic
    assert c != block_bytes(VOL, 5, 10, bs, crypt=True) and c != block_bytes(VOL, 6, 9, bs, crypt=True)
    t = block_bytes(VOL, 5, 9, bs)
    assert t.startswith(HEADER) and parse_block_kind(t, VOL, 5) == (9, False)
    assert parse_block_kind(bytes(bs), VOL, 5) == (0, False)
    assert block_bytes(VOL, 5, 0, bs, crypt=True) == bytes(bs)


def test_ciphertext_block_tamper_is_refused() -> None:
    bs = 4096
    c = block_bytes(VOL, 2, 3, bs, crypt=True)
    assert parse_block(c, VOL, 3) is None  # at the wrong place
    assert parse_block(c, "other", 2) is None
    flipped = bytearray(c)
    flipped[bs - 1] ^= 1
    assert parse_block(bytes(flipped), VOL, 2) is None
    # a ciphertext header over text filler, or the reverse, is neither kind
    assert parse_block(CRYPT_HEADER + block_bytes(VOL, 2, 3, bs)[len(HEADER):], VOL, 2) is None
    assert parse_block(HEADER + c[len(CRYPT_HEADER):], VOL, 2) is None
    assert parse_block(c[:100] + bytes(bs - 100), VOL, 2) is None  # torn


def test_only_ciphertext_looks_random_to_the_signal() -> None:
    for bs in (4096, 65536):
        c = block_bytes(VOL, 1, 2, bs, crypt=True)
        t = block_bytes(VOL, 1, 2, bs)
        assert looks_random(c, len(encode_chunk(c)[1]))
        assert not looks_random(t, len(encode_chunk(t)[1]))


def test_expected_image_and_crypt_gens() -> None:
    bs = 4096
    events = [{"op": "write", "type": "invoke", "blocks": [0, 2], "gens": [1, 1]},
              {"op": "write", "type": "ok", "blocks": [1, 3], "gens": [2, 4], "crypt": True},
              {"op": "write", "type": "invoke", "blocks": [3], "gens": [5], "crypt": True}]
    crypt = crypt_gens(events)
    assert crypt == {(1, 2), (3, 4), (3, 5)}
    img = expected_image(VOL, [1, 2, 0, 4], bs, crypt)
    assert [parse_block_kind(img[b * bs:(b + 1) * bs], VOL, b) for b in range(4)] == \
        [(1, False), (2, True), (0, False), (4, True)]
    assert expected_image(VOL, [1, 2, 0, 4], bs) != img  # without the set: all text


def test_workload_encrypts_and_adopts(tmp_path: Path) -> None:
    bs, n = 4096, 6
    vol = tmp_path / "site-a" / f"{VOL}.img"
    site = SimpleNamespace(volume_path=lambda volume=VOL: vol)
    cluster = SimpleNamespace(n_blocks=n, block_size_bytes=bs, sites={"site-a": site})
    h = History(tmp_path / "history.jsonl")
    import random
    w = Workload(cluster, h, random.Random(1))  # type: ignore[arg-type]
    w.init_image("site-a")
    gens = w.encrypt("site-a", [1, 4])
    w.write("site-a", [4])
    h.close()
    assert gens == [2, 2] and w.gens["site-a"] == [1, 2, 1, 1, 3, 1] and w.crypt == {(1, 2), (4, 2)}
    data = vol.read_bytes()
    assert data == w.expected(w.gens["site-a"])
    assert parse_image(vol, VOL, n, bs) == w.gens["site-a"]
    assert parse_block_kind(data[bs:2 * bs], VOL, 1) == (2, True)
    assert parse_block_kind(data[4 * bs:5 * bs], VOL, 4) == (3, False)  # overwritten by text again
    ev = read_history(tmp_path / "history.jsonl")
    assert crypt_gens(ev) == w.crypt
    assert [e.get("crypt") for e in ev if e["op"] == "write" and e["type"] == "ok"] == [None, True, None]
