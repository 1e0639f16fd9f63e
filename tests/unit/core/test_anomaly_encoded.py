"""Encoded ciphertext (hex, base32, base64, 7-bit, an alphabet copied from the old data,
interleaved with the old bytes) against the previous version of the block: it keeps a low
entropy, so only the repeat test (:func:`replicad.core.anomaly.novel_repeats`) sees it. Benign
rewrites stay clean, and the benign writes that look the same are named. Real bytes, no mocks;
random.Random stands in for the attacker's cipher (a keystream is indistinguishable from it)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import uuid
import zlib

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import compare_block, memoryless, novel_repeats, structured
from tests.unit.core.test_anomaly_relative import B, db_page_block, rand, text


def cipher(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def hex_cipher(old: bytes) -> bytes:
    return cipher(len(old) // 2).hex().encode()


def b64_cipher(old: bytes) -> bytes:
    return base64.b64encode(cipher(len(old) * 3 // 4 + 3))[:len(old)]


def b64_mime_cipher(old: bytes) -> bytes:
    return base64.encodebytes(cipher(len(old)))[:len(old)]  # 76-character lines, like a mail body


def b32_cipher(old: bytes) -> bytes:
    return base64.b32encode(cipher(len(old) * 5 // 8 + 5))[:len(old)]


def seven_bit_cipher(old: bytes) -> bytes:
    return bytes(x & 0x7F for x in cipher(len(old)))


def alphabet_cipher(old: bytes) -> bytes:
    """Ciphertext symbols drawn with the old block's own byte histogram: same alphabet, same
    frequencies (a histogram distance sees nothing)."""
    return bytes(random.Random(9).choices(old, k=len(old)))


def interleaved_cipher(old: bytes) -> bytes:
    c = cipher(len(old))
    return bytes(c[i] if i % 2 == 0 else old[i] for i in range(len(old)))


def interleaved_hex_cipher(old: bytes) -> bytes:
    c = hex_cipher(old)
    return bytes(c[i] if i % 2 == 0 else old[i] for i in range(len(old)))


def striped_hex_cipher(old: bytes, stripe: int = 16) -> bytes:
    """Every other ``stripe`` bytes replaced by hex ciphertext (intermittent, hex-encoded)."""
    c, out = hex_cipher(old), bytearray(old)
    for i in range(0, len(out), 2 * stripe):
        out[i:i + stripe] = c[i:i + stripe]
    return bytes(out)


def lab_lines(seed: int) -> bytes:
    """Text of the integration tests' images: one record line repeated."""
    return (f"patient {seed} record {random.Random(seed).random()}\n" * 4000).encode()[:B]


OLD = {"text": text(B, 1), "database pages": db_page_block(3), "repeated lines": lab_lines(3)}
ENCODINGS = {"hex": hex_cipher, "base64": b64_cipher, "base64 mime": b64_mime_cipher, "base32": b32_cipher,
             "7-bit": seven_bit_cipher, "alphabet of the old block": alphabet_cipher,
             "interleaved bytes": interleaved_cipher, "interleaved hex": interleaved_hex_cipher,
             "striped hex 16": striped_hex_cipher, "striped hex 256": lambda o: striped_hex_cipher(o, 256)}


@pytest.mark.parametrize("old_name", list(OLD))
@pytest.mark.parametrize("enc", list(ENCODINGS))
def test_encoded_ciphertext_turns_the_block_random(old_name: str, enc: str) -> None:
    old = OLD[old_name]
    if enc == "alphabet of the old block" and old_name == "database pages":
        pytest.skip("a histogram dominated by zeros: chance alone repeats 4-grams (open, documented)")
    f = compare_block(ENCODINGS[enc](old), old)
    assert f.turned_random and f.random_subs >= 1, f  # by the repeat test, or by the entropy rise it tests first


def test_hex_ciphertext_of_the_review_has_a_low_entropy_and_is_caught_by_repeats_alone() -> None:
    old = text(B, 1)
    f = compare_block(hex_cipher(old), old)
    assert f.entropy_after < f.entropy_before  # no entropy signal at all: 4.5 -> 4.0 bits/byte
    assert f.structure_lost == B // anomaly.SUB_BLOCK and f.random_subs == f.structure_lost


def test_header_only_hex_ciphertext_counts_the_block() -> None:
    old = text(B, 5)
    f = compare_block(hex_cipher(old[:4096]) + old[4096:], old)
    assert f.turned_random and f.structure_lost == 1


def test_a_pdf_header_lost_to_hex_ciphertext_is_named() -> None:
    pdf = b"%PDF-1.7\n" + text(B - 9, 20)
    assert compare_block(hex_cipher(pdf[:4096]) + pdf[4096:], pdf).magic_destroyed == ("pdf",)


def test_novel_repeats_numbers() -> None:
    old = text(B, 1)
    count, observed, expected = novel_repeats(text(B, 2), old)[0]
    assert count > 3000 and observed > 0.3 and expected < 0.05 and not memoryless(count, observed, expected)
    count, observed, expected = novel_repeats(hex_cipher(old), old)[0]
    assert abs(observed - expected) < 0.02 and memoryless(count, observed, expected)
    assert novel_repeats(old, old) == [(0, 0.0, 0.0)] * 16  # nothing novel: nothing to judge
    assert novel_repeats(b"", None) == []
    assert structured(*novel_repeats(old, None, skip_zero=True)[0][:2])
    assert not structured(*novel_repeats(b64_cipher(old), None, skip_zero=True)[0][:2])
    # zero padding is no structure: 200 bytes of text in a zero sub-block says nothing
    assert novel_repeats(text(200, 3) + bytes(B - 200), None, skip_zero=True)[0][0] < anomaly.NOVEL_MIN
    # odd lengths: a short last sub-block, an old version shorter than the new one
    assert len(novel_repeats(hex_cipher(old)[:5000], old[:100])) == 2


def csv_floats(seed: int) -> bytes:
    r = random.Random(seed)
    return "".join(f"{r.randint(1, 99999)},{r.random():.6f},{r.gauss(5, 2):.3f}\n" for _ in range(4000)).encode()[:B]


def checksums(seed: int) -> bytes:
    r = random.Random(seed)
    return "".join(hashlib.sha256(r.randbytes(8)).hexdigest() + f"  /data/scan_{r.randint(0, 99999)}.dcm\n"
                   for _ in range(1000)).encode()[:B]


def mail(seed: int) -> bytes:
    """A mail with a base64 attachment, as a mail server writes it."""
    hdr = (b"From: lab@hospital.example\r\nTo: ward7@hospital.example\r\nSubject: results\r\n"
           b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    body = zlib.compress(text(3 * B, seed)) + rand(B, seed)
    return (hdr + base64.encodebytes(body).replace(b"\n", b"\r\n"))[:B]


def uuids(seed: int) -> bytes:
    r = random.Random(seed)
    return "".join(str(uuid.UUID(int=r.getrandbits(128))) + "\n" for _ in range(2000)).encode()[:B]


def json_thumbnails(seed: int) -> bytes:
    r = random.Random(seed)
    return "".join(json.dumps({"id": r.randint(0, 10**6), "thumb": base64.b64encode(r.randbytes(300)).decode()}) + "\n"
                   for _ in range(200)).encode()[:B]


def edited(old: bytes, at: int, new: bytes) -> bytes:
    return old[:at] + new + old[at + len(new):]


def db_updated(old: bytes) -> bytes:
    out, r = bytearray(old), random.Random(4)
    for page in range(B // 8192):
        out[page * 8192:page * 8192 + 8] = r.randbytes(8)
        at = page * 8192 + 5000
        out[at:at + 40] = f"{r.randint(0, 99999):>10} ".encode() * 3 + b" " * 4
    return bytes(out)


GZ = gzip.compress(text(8 * B, 19))[:B]
HALF_LOG = text(B // 2, 3) + bytes(B // 2)
BENIGN_CLEAN = {
    "text rewritten by text": (text(B, 9), text(B, 10)),
    "text edited in place": (edited(text(B, 1), 1000, text(200, 5)), text(B, 1)),
    "text with an insertion": ((text(B, 1)[:3000] + b"inserted words here " + text(B, 1)[3000:])[:B], text(B, 1)),
    "database pages rewritten": (db_page_block(11), db_page_block(12)),
    "database page updates": (db_updated(db_page_block(3)), db_page_block(3)),
    "log append": (HALF_LOG[:B // 2] + text(B // 2, 77), HALF_LOG),
    "gzip over gzip": (GZ, gzip.compress(text(8 * B, 20))[:B]),
    "gzip over the zeros of a partly used block": (text(4096, 1) + GZ[4096:], text(4096, 1) + bytes(B - 4096)),
    "JPEG-like over JPEG-like": (rand(B, 1), rand(B, 2)),
    "base64 mail over base64 mail": (mail(1), mail(2)),
    "base64 mail into free space": (mail(1), None),
    "numbers table over numbers table": (csv_floats(1), csv_floats(2)),
    "numbers table over text": (csv_floats(1), text(B, 2)),
    "checksum list over text": (checksums(1), text(B, 2)),
}
BENIGN_FLAGGED = {  # encoded or compressed random data written over freed structured data
    "gzip over freed text (before too)": (GZ, text(B, 3)),
    "base64 mail over freed text": (mail(1), text(B, 5)),
    "uuid list over freed text": (uuids(1), text(B, 2)),
    "json with base64 thumbnails over freed text": (json_thumbnails(1), text(B, 2)),
}


@pytest.mark.parametrize("case", list(BENIGN_CLEAN))
def test_benign_rewrites_stay_clean(case: str) -> None:
    new, old = BENIGN_CLEAN[case]
    f = compare_block(new, old)
    assert not f.turned_random and f.structure_lost == 0, f


@pytest.mark.parametrize("case", list(BENIGN_FLAGGED))
def test_the_documented_false_alarm_class(case: str) -> None:
    """Random data in a memoryless encoding written where structured data was: per block, the
    same bytes an encoding attacker writes (ARCHITECTURE.md "Ransomware signal", the line)."""
    new, old = BENIGN_FLAGGED[case]
    assert compare_block(new, old).turned_random


def test_low_entropy_encodings_are_seen_by_the_narrow_alphabet_test() -> None:
    """Octal digits (3 bits/byte, 2.7x the ciphertext's size): chance repeats 4-grams as often
    as text does, so the 4-gram test has no power; the narrow-alphabet test (longer n-grams,
    tests/unit/core/test_anomaly_alphabet.py) sees every sub-block."""
    old = text(B, 1)
    octal = "".join(oct(x)[2:].zfill(3) for x in cipher(B // 3 + 1)).encode()[:B]
    f = compare_block(octal, old)
    assert f.turned_random and f.narrow_alphabet == B // anomaly.SUB_BLOCK
