"""Anomaly scoring: per-block randomness and per-snapshot verdict against the own baseline."""

from __future__ import annotations

import random
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from replicad.core import anomaly
from replicad.core.anomaly import Verdict, byte_entropy_bits, judge, looks_random
from replicad.storage.chunkstore import encode_chunk

BLOCK = 65536
WORDS = [b"patient", b"admission", b"dose", b"mg", b"cardiology", b"result", b"normal",
         b"2026-11-03", b"ward", b"B12", b"note:", b"follow-up", b"\n"]


def text_block(rng: random.Random) -> bytes:
    out = bytearray()
    while len(out) < BLOCK:
        out += rng.choice(WORDS) + b" "
    return bytes(out[:BLOCK])


def encrypt(block: bytes, rng: random.Random) -> bytes:
    enc = Cipher(algorithms.AES(rng.randbytes(32)), modes.CTR(rng.randbytes(16))).encryptor()
    return enc.update(block) + enc.finalize()


def stats_of(old: list[bytes] | None, new: list[bytes]) -> dict:
    """What the scan computes: changed blocks vs old, random share among changed non-zero."""
    zero = bytes(BLOCK)
    changed = [i for i, b in enumerate(new) if (old is None and b != zero)
               or (old is not None and b != old[i])]
    random_changed = 0
    for i in changed:
        if new[i] != zero:
            random_changed += looks_random(new[i], len(encode_chunk(new[i])[1]))
    return {"total_blocks": len(new), "zero_blocks": sum(b == zero for b in new),
            "changed_blocks": len(changed), "changed_bytes": len(changed) * BLOCK,
            "random_changed_blocks": random_changed, "new_chunks": len(changed),
            "has_parent": int(old is not None)}


def run_history(volume: list[bytes], mutate, rounds: int) -> tuple[list[bytes], list[dict]]:
    history = [stats_of(None, volume)]
    for _ in range(rounds):
        new = mutate(list(volume))
        stats = stats_of(volume, new)
        verdict = judge(stats, history)
        assert verdict.verdict == "clean", verdict
        history.append(stats)
        volume = new
    return volume, history


# --------------------------------------------------------------------------- blocks


def test_byte_entropy_bounds() -> None:
    assert byte_entropy_bits(b"") == 0.0
    assert byte_entropy_bits(bytes(4096)) == 0.0
    assert byte_entropy_bits(bytes(range(256)) * 64) == pytest.approx(8.0)
    assert byte_entropy_bits(b"ab" * 100) == pytest.approx(1.0)
    assert byte_entropy_bits(text_block(random.Random(1))) < 5.0


def test_entropy_fallback_without_numpy_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    samples = [rng.randbytes(BLOCK), text_block(rng), bytes(100), b"abcabcab"]
    with_numpy = [byte_entropy_bits(s) for s in samples]
    monkeypatch.setattr(anomaly, "_np", None)
    assert [byte_entropy_bits(s) for s in samples] == pytest.approx(with_numpy)


def test_looks_random_flags_ciphertext_not_text() -> None:
    rng = random.Random(3)
    text = text_block(rng)
    cipher = encrypt(text, rng)
    assert looks_random(cipher, len(encode_chunk(cipher)[1]))
    assert not looks_random(text, len(encode_chunk(text)[1]))
    assert not looks_random(b"", 0)
    # incompressible for lz4 but low entropy: 16 symbols in random order (4 bits/byte)
    sixteen = bytes(rng.choice(b"0123456789abcdef") for _ in range(BLOCK))
    assert not looks_random(sixteen, len(sixteen))


def test_deflate_output_is_what_lz4_cannot_shrink() -> None:
    rng = random.Random(4)
    packed = zlib.compress(b"".join(text_block(rng) for _ in range(8)), 9)[:BLOCK]
    assert encode_chunk(packed)[1] == packed  # lz4 alone cannot tell it from random


# --------------------------------------------------------------------------- verdicts


def test_first_snapshot_is_clean_and_establishes_the_baseline() -> None:
    rng = random.Random(5)
    volume = [rng.randbytes(BLOCK) for _ in range(20)]
    stats = stats_of(None, volume)
    assert stats["random_changed_blocks"] == 20
    verdict = judge(stats, [])
    assert verdict.verdict == "clean" and "baseline" in verdict.reason


def test_text_edits_stay_clean() -> None:
    rng = random.Random(6)
    volume = [text_block(rng) for _ in range(150)] + [bytes(BLOCK)] * 50

    def edit(v: list[bytes]) -> list[bytes]:
        for i in rng.sample(range(150), 5):
            v[i] = text_block(rng)
        return v

    _, history = run_history(volume, edit, rounds=4)
    assert all(h["random_changed_blocks"] == 0 for h in history[1:])


def test_encrypting_30_percent_of_files_is_suspect() -> None:
    rng = random.Random(7)
    volume = [text_block(rng) for _ in range(150)] + [bytes(BLOCK)] * 50

    def edit(v: list[bytes]) -> list[bytes]:
        for i in rng.sample(range(150), 4):
            v[i] = text_block(rng)
        return v

    volume, history = run_history(volume, edit, rounds=3)
    attacked = list(volume)
    for i in rng.sample(range(150), 45):  # 30 % of the data blocks
        attacked[i] = encrypt(attacked[i], rng)
    stats = stats_of(volume, attacked)
    verdict = judge(stats, history)
    assert verdict.verdict == "suspect"
    assert verdict.score == pytest.approx(45 / 150)
    assert verdict.baseline == 0.0


def test_jpeg_like_volume_with_ordinary_changes_is_clean_against_its_own_baseline() -> None:
    rng = random.Random(8)
    volume = [rng.randbytes(BLOCK) for _ in range(200)]

    def new_images(count: int):
        def mutate(v: list[bytes]) -> list[bytes]:
            for i in rng.sample(range(200), count):
                v[i] = rng.randbytes(BLOCK)
            return v
        return mutate

    volume, history = run_history(volume, new_images(2), rounds=4)  # 1 % churn each
    busy = new_images(7)(list(volume))  # 3.5 %: above the 2 % floor, within 4 x baseline
    stats = stats_of(volume, busy)
    assert judge(stats, history[:1]).verdict == "suspect"  # no baseline yet: floor only
    verdict = judge(stats, history)
    assert verdict.verdict == "clean" and verdict.baseline == pytest.approx(0.01)
    attacked = list(volume)
    for i in rng.sample(range(200), 60):
        attacked[i] = encrypt(attacked[i], rng)
    assert judge(stats_of(volume, attacked), history).verdict == "suspect"


def test_full_snapshots_are_excluded_from_the_baseline() -> None:
    full = {"total_blocks": 100, "zero_blocks": 0, "random_changed_blocks": 100,
            "has_parent": 0}
    quiet = {"total_blocks": 100, "zero_blocks": 0, "random_changed_blocks": 1,
             "has_parent": 1}
    attack = dict(quiet, random_changed_blocks=50)
    verdict = judge(attack, [full, quiet, quiet])
    assert verdict == Verdict("suspect", 0.5, 0.01, verdict.reason)


def test_missing_has_parent_is_judged_as_incremental() -> None:
    everything = {"total_blocks": 10, "zero_blocks": 0, "random_changed_blocks": 10}
    assert judge(everything, []).verdict == "suspect"


def test_threshold_is_max_of_floor_and_factor_times_baseline() -> None:
    def s(random_blocks: int) -> dict:
        return {"total_blocks": 1000, "zero_blocks": 0, "random_changed_blocks": random_blocks,
                "has_parent": 1}

    history = [s(10), s(10), s(10)]  # baseline 0.01 -> threshold max(0.02, 0.04) = 0.04
    assert judge(s(40), history).verdict == "clean"
    assert judge(s(41), history).verdict == "suspect"
    assert judge(s(20), []).verdict == "clean"
    assert judge(s(21), []).verdict == "suspect"
    assert judge(s(41), history, factor=5.0).verdict == "clean"
    assert judge(s(21), history, window=0).verdict == "suspect"  # window 0: no baseline
    assert judge(s(41), history + [s(200)], window=1).verdict == "clean"  # last one only
