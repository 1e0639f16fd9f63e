"""Is a file's first block ciphertext-like? (issue 14: copy-encrypt-delete split over snapshots)

A file's first bytes say what it is: imported scans, archives, databases and programs start with
a format's signature and a header; ciphertext written as a new file is uniform bytes from its
first block on, or an encryption format's header. :func:`ciphertext_like` judges the first
bytes of a file (its logical block 0, read through the ext4 maps: ``ext4alloc.Ext4Allocation.heads``):

* an **encryption format** (OpenSSL ``enc``'s ``Salted__``, age, ASCII-armoured OpenPGP, LUKS;
  a zip entry with its encryption flag or WinZip AES, method 99) is ciphertext-like by
  declaration (what the user encrypts is, in the bytes, what ransomware writes);
* a **compression container** is peeled and its payload judged again (at most two levels):
  gzip (RFC 1952) and a zip entry (PKWARE APPNOTE 4.3.7: stored, or deflate, RFC 1951) through
  ``zlib``, xz through ``lzma``; a container that does not decode is judged as unknown bytes
  (the ``.gz`` attacker's level-0 gzip around AES output decodes to the AES output);
* a **media or opaque format** with a checkable start is trusted when the check passes: PNG
  (IHDR's CRC-32, its IDAT inflates, each scanline starts with a filter type 0-4: PNG 1.2
  §§ 5.3, 9.2), JPEG (a marker chain up to SOS, then byte stuffing: in entropy-coded data 0xFF
  is followed by 0x00 or a restart marker, ITU-T T.81 B.1.1.5; at most
  :data:`STUFFING_SLIPS_MAX` other pairs), JPEG 2000 (the same after SOD: no 0xFF followed by
  a byte >= 0x90 inside packet data, ITU-T T.800 A.1.1), 7z (its start header's CRC-32),
  bzip2 (the block magic ``1AY&SY`` after ``BZh1-9``), DICOM (``DICM`` at 128, then a File Meta
  element of group 0002 with an explicit VR, PS3.10 7.1), PDF (a version, then `` obj`` within
  the first bytes, ISO 32000 7.5), ISO-BMFF (an ``ftyp`` box of a sane size, then a box with a
  printable type, ISO/IEC 14496-12 4.3), RIFF (printable form and chunk types) and a PostgreSQL
  relation file's first page (``pd_pagesize_version`` 0x2004 and ``pd_lower <= pd_upper <=
  pd_special <= 8192``, ``src/include/storage/bufpage.h``: a TOAST file of image ``bytea`` values is
  compressed data behind page and tuple headers); a failed check is judged as unknown bytes;
* other well-known signatures (TIFF, GIF, ELF, PE, OLE, SQLite, tar's ``ustar`` at 257, Ogg,
  FLAC, Matroska, MP3's ID3, zstd, rar, qcow2, ...) are trusted as they are;
* anything else is ciphertext-like when its bytes after the first quarter (at most 1 KiB: room
  for a header of the attacker's own) look uniform: plug-in entropy within
  :data:`ENTROPY_SLACK` bit of the Miller-Madow expectation for that many uniform bytes (Miller
  1955) and Pearson's chi-square under :data:`CHI2_MAX`; or, printable, hold independent symbols
  and nothing more (hex, base32/64, octal and binary digits of ciphertext: the judge's own
  repeat tests, ``anomaly.memoryless`` and the narrow-alphabet test).

What this cannot see, by construction: ciphertext behind a header whose format's body is
legitimately uniform and that passes the checks above (a real MP4, DICOM or PDF header copied in
front of it; a zstd or rar signature; a JPEG or JPEG 2000 header with stuffed ciphertext), ciphertext after an original first block kept in plain text, compression
before encryption inside an opaque container (a password-protected 7z). Pure functions (zlib,
lzma, numpy); inputs are at most a few KiB.
"""

from __future__ import annotations

import lzma
import math
import struct
import zlib

import numpy as np

from replicad.core import anomaly

HEAD_MAX = 4096
"""Bytes of a file's start judged at most (the first 4 KiB: one sub-block of the judge)."""
HEAD_MIN = 512
"""Fewest bytes of a file (or of a peeled payload) judged: below, a file says too little (and
weighs at most a few hundred bytes in any signal)."""
ENTROPY_SLACK = 0.15
"""Bits/byte under the Miller-Madow expectation of uniform bytes still called uniform (the
judge's tail test, ``anomaly._filled_share``)."""
CHI2_MAX = 400.0
"""Pearson chi-square (255 degrees of freedom) under which bytes are uniform (``anomaly.CHI2_RANDOM_MAX``)."""
STUFFING_SLIPS_MAX = 3
"""0xFF pairs a JPEG / JPEG 2000 entropy-coded stretch of a file's first 4 KiB may hold that
byte stuffing forbids (a marker between scans, a tile-part boundary); uniform bytes give about
one per 260 bytes (~12 in 3 KiB)."""
PEEL_DEPTH_MAX = 2

ENCRYPTED: tuple[tuple[str, int, bytes], ...] = (
    ("openssl enc", 0, b"Salted__"), ("age", 0, b"age-encryption.org/"),
    ("age armor", 0, b"-----BEGIN AGE ENCRYPTED FILE-----"), ("openpgp armor", 0, b"-----BEGIN PGP MESSAGE-----"),
    ("luks", 0, b"LUKS\xba\xbe"),
)
"""``(name, offset, bytes)``: formats whose content is ciphertext (openssl ``enc`` salt header,
age v1 (age-encryption.org/v1), RFC 4880 armour, LUKS1/2)."""
TRUSTED: tuple[tuple[str, int, bytes], ...] = (
    ("pdf", 0, b"%PDF-"), ("dicom", 128, b"DICM"), ("tiff", 0, b"II*\x00"), ("tiff", 0, b"MM\x00*"),
    ("gif", 0, b"GIF8"), ("elf", 0, b"\x7fELF"), ("pe", 0, b"MZ"), ("ole/office", 0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    ("sqlite", 0, b"SQLite format 3\x00"), ("tar", 257, b"ustar"), ("iso-bmff", 4, b"ftyp"), ("riff", 0, b"RIFF"),
    ("ogg", 0, b"OggS"), ("flac", 0, b"fLaC"), ("matroska", 0, b"\x1a\x45\xdf\xa3"), ("mp3", 0, b"ID3"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"), ("rar", 0, b"Rar!\x1a\x07"), ("qcow2", 0, b"QFI\xfb"),
    ("zip end", 0, b"PK\x05\x06"), ("rtf", 0, b"{\\rtf"), ("xml/html", 0, b"<?xml"), ("iso9660", 32769, b"CD001"),
    ("lz4 frame", 0, b"\x04\x22\x4d\x18"), ("vhdx", 0, b"vhdxfile"), ("vmdk", 0, b"KDMV"),
    ("ar/deb", 0, b"!<arch>\n"), ("jmod", 0, b"JM\x01\x00"), ("rpm", 0, b"\xed\xab\xee\xdb"), ("cpio", 0, b"070701"), ("java class", 0, b"\xca\xfe\xba\xbe"),
    ("squashfs", 0, b"hsqs"), ("webassembly", 0, b"\x00asm"), ("icc profile", 36, b"acsp"), ("woff", 0, b"wOFF"),
    ("woff2", 0, b"wOF2"), ("lzip", 0, b"LZIP"), ("lzma alone", 0, b"\x5d\x00\x00"), ("cab", 0, b"MSCF"),
    ("python bytecode", 2, b"\r\n"), ("matlab", 0, b"MATLAB 5.0 MAT-file"), ("hdf5", 0, b"\x89HDF\r\n\x1a\n"), ("mach-o", 0, b"\xcf\xfa\xed\xfe"), ("nifti", 344, b"n+1\x00"),
)
"""Signatures trusted as they are (their formats' published signatures: PDF 1.7 §7.5.2, DICOM
PS3.10 §7.1, TIFF 6.0, ELF, PE/COFF, MS-CFB, sqlite.org/fileformat, POSIX ustar, ISO/IEC 14496-12,
RIFF, RFC 3533, FLAC, EBML, ID3v2, RFC 8878, RAR 5, QEMU qcow2, APPNOTE end record, RTF, XML,
ECMA-119, LZ4 frame, MS-VHDX, VMware VMDK)."""


def uniform(raw: bytes) -> bool:
    """True when ``raw`` (at least :data:`HEAD_MIN` bytes) looks like uniform random bytes:
    entropy within :data:`ENTROPY_SLACK` of ``8 - 255 / (2 n ln 2)`` and chi-square under
    :data:`CHI2_MAX`."""
    n = len(raw)
    if n < HEAD_MIN:
        return False
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256).astype(np.float64)
    p = counts[counts > 0] / n
    h = float(-(p * np.log2(p)).sum())
    e = n / 256.0
    chi2 = float(((counts - e) ** 2 / e).sum())
    return h >= 8.0 - 255.0 / (2.0 * n * math.log(2.0)) - ENTROPY_SLACK and chi2 < CHI2_MAX


def _at(raw: bytes, table: tuple[tuple[str, int, bytes], ...]) -> str | None:
    for name, off, magic in table:
        if raw[off:off + len(magic)] == magic:
            return name
    return None


def _inflate(data: bytes, wbits: int) -> bytes | None:
    """Up to :data:`HEAD_MAX` bytes decoded from the start of a deflate/zlib stream; None when the
    start does not decode (a stream cut short by the head's end is no error)."""
    try:
        return zlib.decompressobj(wbits).decompress(data, HEAD_MAX)
    except zlib.error:
        return None


def _gzip_payload(raw: bytes) -> bytes | None:
    """RFC 1952: the header (FEXTRA, FNAME, FCOMMENT, FHCRC) skipped, the deflate stream's start."""
    if len(raw) < 10 or raw[2] != 8:
        return None
    flags, at = raw[3], 10
    if flags & 0xE0:
        return None
    if flags & 4:
        if at + 2 > len(raw):
            return None
        at += 2 + struct.unpack_from("<H", raw, at)[0]
    for bit in (8, 16):
        if flags & bit:
            end = raw.find(b"\0", at)
            if end < 0:
                return None
            at = end + 1
    if flags & 2:
        at += 2
    return _inflate(raw[at:], -15) if at < len(raw) else None


def _zip_entry(raw: bytes) -> tuple[str, bytes | None]:
    """APPNOTE 4.3.7: ``("encrypted", None)`` (flag bit 0, or method 99: WinZip AES),
    ``("payload", bytes)`` (stored or deflated: the entry's first bytes), ``("opaque", None)``
    (another method), ``("bad", None)`` (not a local header)."""
    if len(raw) < 30:
        return "bad", None
    flags, method = struct.unpack_from("<HH", raw, 6)
    nlen, xlen = struct.unpack_from("<HH", raw, 26)
    if flags & 1 or method == 99:
        return "encrypted", None
    at = 30 + nlen + xlen
    if at >= len(raw):
        return "opaque", None
    if method == 0:  # stored: the entry's own bytes (its size when the header gives it: a 39-byte ODF mimetype)
        (size,) = struct.unpack_from("<I", raw, 18)
        return "payload", raw[at:at + (min(size, HEAD_MAX) if size and not flags & 8 else HEAD_MAX)]
    if method == 8:
        out = _inflate(raw[at:], -15)
        return ("payload", out) if out is not None else ("bad", None)
    return "opaque", None


def _xz_payload(raw: bytes) -> bytes | None:
    try:
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(raw, HEAD_MAX)
    except lzma.LZMAError:
        return None


def _png_ok(raw: bytes) -> bool:
    """PNG 1.2: IHDR first with a matching CRC-32, the IDAT bytes within ``raw`` inflate, and every
    scanline decoded there starts with a filter type 0-4."""
    if len(raw) < 33 or raw[8:16] != b"\x00\x00\x00\x0dIHDR":
        return False
    if zlib.crc32(raw[12:29]) & 0xFFFFFFFF != struct.unpack_from(">I", raw, 29)[0]:
        return False
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", raw, 16)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16) or not 0 < width < 1 << 24:
        return False
    row = (width * channels * depth + 7) // 8 + 1
    at, idat = 33, b""
    while at + 8 <= len(raw):
        (n,), kind = struct.unpack_from(">I", raw, at), raw[at + 4:at + 8]
        if not kind.isalpha():
            return False
        if kind == b"IDAT":
            idat += raw[at + 8:at + 8 + n]
        at += 12 + n
    if not idat:
        return True  # the first IDAT lies beyond the head (large ancillary chunks): the header checked out
    out = _inflate(idat, 15)
    if out is None:
        return False
    if interlace:  # Adam7: each pass has rows of its own length; the first pass's are checked
        row = ((width + 7) // 8 * channels * depth + 7) // 8 + 1
        out = out[:row * ((height + 7) // 8)]
    return all(b <= 4 for b in out[::row])


def _stuffing_ok(data: bytes, forbidden_from: int) -> bool:
    """At most :data:`STUFFING_SLIPS_MAX` pairs ``0xFF x`` in ``data`` with ``x`` a value byte
    stuffing forbids: JPEG (``forbidden_from`` 0: anything but 0x00 and RST0-7 0xD0-0xD7),
    JPEG 2000 (0x90: a byte >= 0x90)."""
    a = np.frombuffer(data, dtype=np.uint8)
    nxt = a[1:][a[:-1] == 0xFF]
    if forbidden_from:
        bad = int(np.count_nonzero(nxt >= forbidden_from))
    else:
        bad = int(np.count_nonzero((nxt != 0) & ((nxt < 0xD0) | (nxt > 0xD7)) & (nxt != 0xFF)))
    return bad <= STUFFING_SLIPS_MAX


def _jpeg_ok(raw: bytes) -> bool:
    """ITU-T T.81: marker segments from SOI up to the first SOS; after it, byte stuffing."""
    at = 2
    while at + 4 <= len(raw):
        if raw[at] != 0xFF:
            return False
        while at + 1 < len(raw) and raw[at + 1] == 0xFF:  # fill bytes
            at += 1
        marker = raw[at + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        if marker in (0x00, 0xD8, 0xD9) or at + 4 > len(raw):
            return False
        (n,) = struct.unpack_from(">H", raw, at + 2)
        if n < 2:
            return False
        if marker == 0xDA:
            return _stuffing_ok(raw[at + 2 + n:], 0)
        at += 2 + n
    return True  # headers (EXIF thumbnails) fill the head: nothing to check beyond them


def _j2k_ok(raw: bytes) -> bool:
    """ITU-T T.800: the main header's SIZ, then after the first SOD (0xFF93) no 0xFF followed by
    a byte >= 0x90 (but a few: markers between tile-parts) in the head."""
    start = raw.find(b"\xff\x4f\xff\x51")
    if start < 0:
        return True  # a JP2 file whose codestream starts beyond the head: its boxes checked out
    sod = raw.find(b"\xff\x93", start)
    return sod < 0 or _stuffing_ok(raw[sod + 2:], 0x90)


def _jp2_boxes_ok(raw: bytes) -> bool:
    """ISO/IEC 15444-1 annex I: a chain of boxes (big-endian length, four printable type bytes)."""
    at = 0
    while at + 8 <= len(raw):
        n, kind = struct.unpack_from(">I", raw, at)[0], raw[at + 4:at + 8]
        if not all(0x20 <= c < 0x7F for c in kind) or (n != 0 and n < 8 and n != 1):
            return False
        if kind == b"jp2c" or n in (0, 1):
            return True
        at += n
    return True


def _printable_type(code: bytes) -> bool:
    """A four-character code (box, chunk or form type): four printable ASCII bytes."""
    return len(code) == 4 and all(0x20 <= c < 0x7F for c in code)


def _checked(raw: bytes) -> tuple[str, bool] | None:
    """``(name, passes)`` for the signatures this module checks beyond their magic, else None."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png", _png_ok(raw)
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpeg", _jpeg_ok(raw)
    if raw.startswith(b"\xff\x4f\xff\x51"):
        return "jpeg 2000", _j2k_ok(raw)
    if raw.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        return "jp2", _jp2_boxes_ok(raw) and _j2k_ok(raw)
    if raw.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z", len(raw) >= 32 and zlib.crc32(raw[12:32]) & 0xFFFFFFFF == struct.unpack_from("<I", raw, 8)[0]
    if raw[128:132] == b"DICM":  # PS3.10 7.1: the File Meta group (0002) follows, explicit VR little endian
        return "dicom", raw[132:134] == b"\x02\x00" and raw[136:138].isalpha() and raw[136:138].isupper()
    if raw.startswith(b"%PDF-"):  # ISO 32000: a version, then objects ("n g obj") in the first KiB or so
        return "pdf", raw[5:6] in (b"1", b"2") and raw[6:7] == b"." and b" obj" in raw
    if raw[4:8] == b"ftyp":  # ISO/IEC 14496-12 4.3: the ftyp box, then another box with a printable type
        (n,) = struct.unpack_from(">I", raw, 0)
        return "iso-bmff", 16 <= n <= len(raw) - 8 and n % 4 == 0 and _printable_type(raw[n + 4:n + 8]) \
            and _printable_type(raw[8:12])
    if raw.startswith(b"RIFF"):  # RIFF: a form type and a first chunk with printable four-character codes
        return "riff", _printable_type(raw[8:12]) and _printable_type(raw[12:16])
    if len(raw) >= 24 and raw[18:20] == b"\x04\x20":  # a PostgreSQL page (bufpage.h: 8 KiB, layout 4)
        lower, upper, special = struct.unpack_from("<HHH", raw, 12)
        return "postgresql page", 24 <= lower <= upper <= special <= 8192
    if raw.startswith(b"BZh") and len(raw) >= 10 and 0x31 <= raw[3] <= 0x39:
        return "bzip2", raw[4:10] == b"1AY&SY" or raw[4:10] == b"\x17\x72\x45\x38\x50\x90"
    return None


def ciphertext_like(head: bytes, _depth: int = 0) -> str | None:
    """Why the first bytes of a file (``head``: up to :data:`HEAD_MAX` of them, cut at the file's
    size) read as ciphertext, or None when they do not (a trusted or checked format, structured
    bytes, fewer than :data:`HEAD_MIN` bytes). See the module docstring for the rules and what
    they cannot see. Pure; never raises on any input."""
    head = head[:HEAD_MAX]
    if len(head) < HEAD_MIN:
        return None
    name = _at(head, ENCRYPTED)
    if name is not None:
        return f"encryption format ({name})"
    payload: bytes | None = None
    peeled = None
    if head.startswith(b"\x1f\x8b"):
        payload, peeled = _gzip_payload(head), "gzip"
    elif head.startswith(b"PK\x03\x04"):
        kind, payload = _zip_entry(head)
        if kind == "encrypted":
            return "encryption format (encrypted zip entry)"
        if kind == "opaque":
            return None
        peeled = "zip"
    elif head.startswith(b"\xfd7zXZ\x00"):
        payload, peeled = _xz_payload(head), "xz"
    if peeled is not None:
        if payload is not None:
            if _depth >= PEEL_DEPTH_MAX:
                return None
            inner = ciphertext_like(payload, _depth + 1)
            return f"{peeled} around {inner}" if inner is not None else None
        # a container that does not decode: its bytes are judged as unknown ones
    else:
        checked = _checked(head)
        if checked is not None and checked[1]:
            return None
        if checked is None and _at(head, TRUSTED) is not None:
            return None
    tail = head[min(1024, len(head) // 4):]
    if uniform(tail):
        what = "uniform bytes, no known format" if peeled is None and _checked(head) is None \
            else f"uniform bytes behind a {peeled or _checked(head)[0]} header that does not check out"
        return what if _depth == 0 else f"({what})"
    if _printable(tail) and _encoded_random(tail):
        what = "memoryless encoded symbols (hex, base32/64, octal or binary digits), no known format"
        return what if _depth == 0 else f"({what})"
    return None


def _encoded_random(text: bytes) -> bool:
    """``text`` is independent symbols and nothing more, as the judge asks of novel bytes
    (``anomaly.memoryless``: its 4-grams repeat no more than chance with its histogram, where
    chance rarely repeats them: hex, base32, base64 with its line breaks; else a narrow core
    alphabet used nearly evenly whose ~24-bit n-grams and 4-grams repeat no more than chance:
    octal and binary digits, ``anomaly.narrow_uniform``, ``anomaly.memoryless_long``). Not the
    separator-stripping test: stripped of punctuation, text and source code look memoryless."""
    runs = anomaly.novel_repeats(text, None, len(text))
    if not runs:
        return False
    count, observed, expected = runs[0]
    if anomaly.memoryless(count, observed, expected):
        return True
    if expected <= anomaly.MEMORYLESS_EXPECTED_MAX or observed > expected + anomaly.MEMORYLESS_MARGIN:
        return False
    size, bits, uniformity = anomaly.alphabet_stats(text)
    return anomaly.narrow_uniform(size, bits, uniformity) and anomaly.memoryless_long(*anomaly.long_repeats(text, bits))


PRINTABLE_MIN = 0.95
"""Share of printable ASCII (and line breaks) above which a file's start is judged as encoded
text (:func:`ciphertext_like`)."""


def _printable(raw: bytes) -> bool:
    a = np.frombuffer(raw, dtype=np.uint8)
    return bool(len(a)) and float(np.count_nonzero(((a >= 0x20) & (a < 0x7F)) | (a == 0x0A) | (a == 0x0D))) \
        >= PRINTABLE_MIN * len(a)
