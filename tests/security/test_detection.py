"""Detection that an attacker holding the primary cannot walk around (issue 14).

The attacker is site-a, the volume's primary: a real daemon process whose own config sets
``[volumes.anomaly] min_score = 1.0`` (applied by SIGHUP), so its commits call everything
clean. On its own volume it encrypts every other 16 bytes of each data block
(LockFile/BlackCat style: the whole-block randomness test scores it 0.0) and snapshots. Then,
with its daemon down, a real attacker process with site-a's key and Raft password
(``command_attacker.py claim-clean``) records "clean" opinions, clears the verdicts and
weakens the detection policy, in its own name.

The honest replicas site-b and site-c judge every snapshot themselves from the bytes they
store, with the cluster's policy: they record ``suspect`` through Raft, never apply the
encrypted snapshots to their standbys (standby bytes = the last clean image), do not call the
primary's commit-time screen a disagreement (every site's own opinion is suspect), serve the
evidence, refuse the attacker's clearing and weakening (``approval_required``), and a forced
promotion at site-b restores the last clean snapshot.

The same attacker primary then writes every text block as the hex encoding of its ciphertext
(same length, 4 bits/byte: the entropy *falls*, lz4 stays at 1.0): the honest replicas judge it
suspect from the repeat structure the old blocks had and the new ones lack, and never apply it.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from replicad.core.errors import RetentionLockedError
from replicad.lab.localcluster import NO_FLOOR_TOML, LocalCluster
from tests.integration.conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image
from tests.security import lying_site
from tests.security.test_holders import metric
from tests.security.test_signed_commands import attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HONEST = ("site-b", "site-c")
N_BLOCKS = 48


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encrypt_intermittently(path: Path, blocks: list[int], rng: random.Random, stripe: int = 16) -> None:
    """Every other ``stripe`` bytes of each block replaced by random bytes, in place, fsynced."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            data = bytearray(f.read(BLOCK))
            for i in range(0, len(data), 2 * stripe):
                data[i:i + stripe] = rng.randbytes(len(data[i:i + stripe]))
            f.seek(b * BLOCK)
            f.write(bytes(data))
        f.flush()
        os.fsync(f.fileno())


def snaps(c: LocalCluster, site: str) -> dict[int, dict]:
    return {s["seq"]: s for s in c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}


def opinion(c: LocalCluster, site: str, seq: int, of: str) -> str | None:
    return ((snaps(c, site).get(seq) or {}).get("opinions") or {}).get(of, {}).get("verdict")


def standby_seq(c: LocalCluster, site: str) -> int | None:
    return c.status(site)["volumes"][VOL].get("standby_seq")


def test_an_attacker_primary_cannot_make_the_replicas_apply_intermittent_encryption(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(3))
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        overwrite_blocks(img, [4, 7], random.Random(4))  # a benign edit of text by text
        clean_seq = snapshot(c, "site-a")["seq"]
        clean_hash = sha(img)
        for s in HONEST:
            c.wait_for(f"{s} judged #{clean_seq} clean and applied it",
                       lambda s=s: opinion(c, s, clean_seq, s) == "clean" and standby_seq(c, s) == clean_seq, 90)
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, s

        # the attacker: its own thresholds at 1.0 (SIGHUP), then intermittent encryption
        with open(c.sites["site-a"].config_path, "a") as f:
            f.write("[volumes.anomaly]\nmin_score = 1.0\nfactor = 1000.0\n")
        c.kill("site-a", signal.SIGHUP)
        c.wait_for("site-a reloaded its config", lambda: "reload" in c.log_tail("site-a", 200).lower(), 30)
        text_blocks = [b for b in range(N_BLOCKS) if b % 3 == 1]  # write_image: the other data blocks are random
        encrypt_intermittently(img, text_blocks, random.Random(5))
        bad = snapshot(c, "site-a")
        assert bad["committed"] and bad["verdict"] == "clean" and bad["score"] == 0.0, bad  # the primary's claim
        overwrite_blocks(img, [10], random.Random(6))  # the application goes on writing over the ciphertext
        after = snapshot(c, "site-a")
        assert after["committed"] and after["verdict"] == "clean", after
        bad_seqs = [bad["seq"], after["seq"]]

        for s in HONEST:
            for q in bad_seqs:
                c.wait_for(f"{s} judged #{q} suspect itself", lambda s=s, q=q: opinion(c, s, q, s) == "suspect", 90)
        time.sleep(1.0)  # one more replica tick: nothing may be applied
        for s in HONEST:
            catalog = snaps(c, s)
            for q in bad_seqs:
                assert catalog[q]["verdict"] == "suspect", (s, q, catalog[q])
            assert catalog[bad["seq"]]["verdict_reason"].startswith("judged suspect by site-"), catalog[bad["seq"]]
            assert standby_seq(c, s) == clean_seq, s
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, f"{s}'s standby is not the clean image"
            # every site's own opinion is suspect (the primary's too): its commit-time screen is no
            # opinion, so nothing disagrees (issue 17, item 4)
            assert opinion(c, s, bad["seq"], "site-a") in (None, "suspect"), s
            assert metric(c, s, "replicad_anomaly_verdict_disagreements") == 0, s
            assert "VERDICTS DISAGREE" not in c.log_tail(s, 2000), s
            assert metric(c, s, "replicad_anomaly_judged_total") >= 3, s

        ev = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots/{bad['seq']}/evidence")
        assert ev["disagreement"] is False and ev["opinions"]["site-b"]["verdict"] == "suspect", ev
        here = ev["here"]
        assert here["verdict"] == "suspect" and here["base_seq"] == clean_seq, here
        assert here["first_suspect_seq"] == bad["seq"] and here["restore_seq"] == clean_seq, here
        assert here["signals"]["turned_random"] == len(text_blocks), here["signals"]
        assert {b["index"] for b in here["blocks"]} == set(text_blocks)
        assert all(b["entropy_after"] - b["entropy_before"] > 2.0 for b in here["blocks"]), here["blocks"]
        # the descendant is judged against the last clean snapshot too: the encryption is still there
        ev2 = c.api("site-c", "GET", f"/v1/volumes/{VOL}/snapshots/{after['seq']}/evidence")["here"]
        assert ev2["base_seq"] == clean_seq and ev2["verdict"] == "suspect", ev2

        # site-a, down, speaks once more in its own name: "clean", cleared, weakest thresholds
        c.kill("site-a")
        results = attack(c, "claim-clean", tmp_path / "attacker", "--from-seq", str(bad["seq"]))
        got = {(r["op"], r.get("seq")): r["error"] for r in results}
        assert got[("mark_verdict", bad["seq"])] == "approval_required", results
        assert got[("set_detection", None)] == "approval_required", results
        for s in HONEST:
            catalog = snaps(c, s)
            assert all(catalog[q]["verdict"] == "suspect" for q in bad_seqs), (s, catalog)
            policy = c.api(s, "GET", f"/v1/volumes/{VOL}/detection")["detection"]
            assert policy["min_score"] == 0.02, policy

        # a promotion at an honest site restores the last clean snapshot
        res = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 90}, timeout_s=120)
        assert res["restored_seq"] == clean_seq, res
        assert sorted(res["restore"]["skipped_seqs"]) == [], res  # suspect snapshots are never candidates
        assert sha(c.sites["site-b"].volume_path(VOL)) == clean_hash
    finally:
        c.stop_all()


def hex_encrypt(path: Path, blocks: list[int], rng: random.Random) -> None:
    """Each block replaced by the hex encoding of ciphertext of its size (half its plaintext: the
    attacker keeps the rest elsewhere), in place, fsynced. ``rng`` stands in for the cipher."""
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rng.randbytes(BLOCK // 2).hex().encode())
        f.flush()
        os.fsync(f.fileno())


def test_an_attacker_primary_cannot_make_the_replicas_apply_hex_encoded_ciphertext(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(13))
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        overwrite_blocks(img, [4, 7], random.Random(14))  # a benign edit of text by text
        clean_seq = snapshot(c, "site-a")["seq"]
        clean_hash = sha(img)
        for s in HONEST:
            c.wait_for(f"{s} judged #{clean_seq} clean and applied it",
                       lambda s=s: opinion(c, s, clean_seq, s) == "clean" and standby_seq(c, s) == clean_seq, 90)
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, s

        with open(c.sites["site-a"].config_path, "a") as f:
            f.write("[volumes.anomaly]\nmin_score = 1.0\nfactor = 1000.0\n")
        c.kill("site-a", signal.SIGHUP)
        c.wait_for("site-a reloaded its config", lambda: "reload" in c.log_tail("site-a", 200).lower(), 30)
        text_blocks = [b for b in range(N_BLOCKS) if b % 3 == 1]
        hex_encrypt(img, text_blocks, random.Random(15))
        bad = snapshot(c, "site-a")
        assert bad["committed"] and bad["verdict"] == "clean" and bad["score"] == 0.0, bad  # the primary's claim

        for s in HONEST:
            c.wait_for(f"{s} judged #{bad['seq']} suspect itself",
                       lambda s=s: opinion(c, s, bad["seq"], s) == "suspect", 90)
        time.sleep(1.0)  # one more replica tick: nothing may be applied
        for s in HONEST:
            assert snaps(c, s)[bad["seq"]]["verdict"] == "suspect", s
            assert standby_seq(c, s) == clean_seq, s
            assert sha(c.sites[s].volume_path(VOL)) == clean_hash, f"{s}'s standby is not the clean image"
            here = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{bad['seq']}/evidence")["here"]
            assert here["verdict"] == "suspect" and here["base_seq"] == clean_seq, here
            assert here["signals"]["turned_random"] == len(text_blocks), here["signals"]
            assert {b["index"] for b in here["blocks"]} == set(text_blocks)
            # no entropy signal: the hex is *less* varied than the text it replaced
            assert all(b["entropy_after"] <= b["entropy_before"] + 0.5 and b["structure_lost"] >= 1
                       for b in here["blocks"]), here["blocks"]
    finally:
        c.stop_all()


SHORT_RETENTION = '[volumes.retention]\nkeep_all = "1m"\nhourly = "1m"\ndaily = "1m"\nlock = "1s"\n'


def test_a_site_voting_suspect_on_every_snapshot_holds_no_other_sites_standby(tmp_path: Path) -> None:
    """The reverse attacker: site-a, the primary, is a real daemon (:mod:`tests.security.lying_site`
    ``--suspect``) that records every snapshot ``suspect`` in its own name. One site's word is
    not the cluster's (``state.SUSPECT_SITES_MIN``): site-b and site-c judge each snapshot clean
    themselves and apply it (standby = the primary's image at that snapshot, byte for byte), the
    cluster's verdict stays clean, each snapshot is a logged, counted disagreement, and pruning
    is not frozen: an operator's prune of a snapshot the votes name or point back to is refused
    as pinned by site-a's opinion (for keep_all after the vote, 1 min here: that the pin ends is
    the unit tests' ``test_one_sites_suspect_opinion_pins_pruning_for_the_keep_all_window_only``,
    on the majority's clock), where a frozen volume answers "pruning is frozen". Then a person's
    verdict in site-a's name (review R3: ``command_attacker.py mark-suspect``, a real process
    with site-a's key, its daemon down) marks every snapshot suspect: still one site's word, so
    the cluster's verdict stays clean, site-b and site-c log each mark at WARNING naming site-a,
    and both apply the primary's next snapshot."""
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, extra_volume_toml=SHORT_RETENTION,
                     extra_site_toml=NO_FLOOR_TOML)
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, N_BLOCKS, random.Random(23))
        for s in HONEST:
            c.start(s)
        lying_site.start(c, "site-a", "--suspect")
        c.wait_ready(60)
        seqs = []
        for step in range(2):
            if step:
                overwrite_blocks(img, [4, 7], random.Random(24))  # a benign edit of text by text
            seq = snapshot(c, "site-a")["seq"]
            seqs.append(seq)
            image = sha(img)
            c.wait_for(f"site-a's suspect vote on #{seq}", lambda: opinion(c, "site-b", seq, "site-a") == "suspect", 60)
            if step:  # #1, neither the newest nor the newest clean: pinned by the votes, not frozen
                with pytest.raises(RetentionLockedError, match="suspect opinion") as refused:
                    c.api("site-b", "POST", f"/v1/volumes/{VOL}/prune", {"seqs": [seqs[0]]})
                assert "site-a" in str(refused.value.evidence.get("pinned_by")), refused.value.evidence
                assert "frozen" not in str(refused.value), refused.value
            for s in HONEST:
                c.wait_for(f"{s} judged #{seq} clean and applied it though site-a says suspect",
                           lambda s=s: opinion(c, s, seq, s) == "clean" and standby_seq(c, s) == seq, 90)
                assert sha(c.sites[s].volume_path(VOL)) == image, f"{s}'s standby is not the primary's #{seq}"
        for s in HONEST:
            catalog = snaps(c, s)
            assert all(catalog[q]["verdict"] == "clean" for q in seqs), (s, catalog)
            c.wait_for(f"{s} to count {len(seqs)} disagreements", lambda s=s: metric(
                c, s, "replicad_anomaly_verdict_disagreements") == len(seqs) and "VERDICTS DISAGREE" in c.log_tail(
                s, 2000), 30)
        ev = c.api("site-c", "GET", f"/v1/volumes/{VOL}/snapshots/{seqs[-1]}/evidence")
        assert ev["disagreement"] is True and ev["verdict"] == "clean", ev
        assert ev["opinions"]["site-a"]["verdict"] == "suspect", ev["opinions"]

        # review R3: a person's verdict in site-a's name, signed with its own key by a real attacker
        # process (its daemon down): mark_verdict suspect of every snapshot, no approval asked. It
        # flipped the cluster at once; now it is site-a's vote, counted once with its opinion
        c.kill("site-a", signal.SIGTERM)
        marks = attack(c, "mark-suspect", tmp_path / "attacker")
        assert [(m["seq"], m["error"], m["verdict"], m["flipped"], m["suspect_sites"]) for m in marks] == \
            [(q, "ok", "clean", False, ["site-a"]) for q in seqs], marks
        for s in HONEST:
            c.wait_for(f"{s} to log site-a's {len(seqs)} marks at WARNING", lambda s=s: c.log_tail(s, 4000).count(
                f"WARNING replicad.site.daemon: AUDIT mark_verdict of volume {VOL} by site-a") == len(seqs), 30)
            assert all(snaps(c, s)[q]["verdict"] == "clean" for q in seqs), (s, snaps(c, s))
            ev = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots/{seqs[-1]}/evidence")  # a person sees the mark
            assert list(ev["marks"]) == ["site-a"] and ev["marks"]["site-a"]["verdict"] == "suspect", ev["marks"]
        lying_site.start(c, "site-a", "--suspect")  # the honest standbys go on applying the primary's snapshots
        c.wait_ready(60)
        overwrite_blocks(img, [9], random.Random(25))
        seq = snapshot(c, "site-a")["seq"]
        image = sha(img)
        for s in HONEST:
            c.wait_for(f"{s} applied #{seq} after site-a's marks", lambda s=s: standby_seq(c, s) == seq, 90)
            assert sha(c.sites[s].volume_path(VOL)) == image, f"{s}'s standby is not the primary's #{seq}"
            assert snaps(c, s)[seq]["verdict"] == "clean", snaps(c, s)[seq]
    finally:
        c.stop_all()
