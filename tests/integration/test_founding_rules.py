"""A new cluster is founded under this release's rules, on real daemons: the sites' ``found``
proposals carry them (``state.founding_rules``), so the state is at ``RULES_MAX`` from the founding
on, with no later raise; a site whose Raft state is rebuilt from an empty log (journal and dump
moved aside, the runbook "Raft dump damaged") replays the log from its first entry, founding
included, and vouches the same checkpoint digests as the others (checkpoints every few commands
through ``REPLICAD_LAB_CHECKPOINT_EVERY``; the log is far from being compacted, so it is replayed,
not received as a dump).
"""

from __future__ import annotations

import random
import signal

import pytest

from replicad.core.state import RULES_MAX
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EVERY = 8
SITES = ("site-a", "site-b", "site-c")
FOUNDED = f"the cluster is founded under rules {RULES_MAX} ("


def _lines(c: LocalCluster, site: str, text: str) -> list[str]:
    return [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines() if text in line]


class Vouches:
    """The checkpoint digests every site vouched, gathered over polls of site-a's view (the state
    keeps each site's last two vouches only): ``{n: {site: digest}}``."""

    def __init__(self, c: LocalCluster) -> None:
        self.c, self.seen = c, {}

    def agreed_after(self, applied: int) -> int | None:
        """The first checkpoint after ``applied`` commands that all three sites vouched; None while
        there is none. AssertionError on two digests for one checkpoint."""
        for site, kept in self.c.status("site-a")["rules"]["vouches"].items():
            for n, digest in kept.items():
                self.seen.setdefault(int(n), {})[site] = digest
        for n, digests in self.seen.items():
            assert len(set(digests.values())) == 1, (n, digests)
        common = sorted(n for n, d in self.seen.items() if n > applied and set(d) == set(SITES))
        return common[0] if common else None

    def commit_and_agree(self, rng: random.Random) -> int:
        """Snapshots at site-a until a checkpoint after now is vouched alike by every site."""
        applied = self.c.status("site-a")["rules"]["applied"]
        polls = iter(range(10**6))

        def agreed() -> int | None:
            n = self.agreed_after(applied)
            if n is None and next(polls) % 4 == 0:
                with open(self.c.sites["site-a"].volume_path(VOL), "r+b") as f:
                    f.seek(rng.randrange(32) * 65536)
                    f.write(bytes([rng.randrange(256)]) * 4096)
                snapshot(self.c, "site-a")
            return n
        return self.c.wait_for("a checkpoint vouched alike by every site", agreed, 90, interval_s=0.5)


def test_a_new_cluster_is_founded_under_this_releases_rules_and_a_rebuilt_site_replays_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", str(EVERY))
    c = LocalCluster(tmp_path / "cluster", n_data=3)
    for s in SITES:
        cfg = c.sites[s].config_path
        cfg.write_text(cfg.read_text().replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1))
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(1))
    rng = random.Random(2)
    try:
        c.start_all()
        c.wait_ready(90)
        # 1. the founding carried the rules: every site under RULES_MAX, said once, no raise after it
        assert {s: c.status(s)["rules"]["version"] for s in SITES} == dict.fromkeys(SITES, RULES_MAX)
        founded = {s: _lines(c, s, FOUNDED) for s in SITES}
        assert all(len(lines) == 1 for lines in founded.values()), founded
        assert not any(_lines(c, s, "rules raised") for s in SITES)
        assert not any(c.status(s)["rules"]["waiting"] for s in SITES)
        vouches = Vouches(c)
        vouches.commit_and_agree(rng)
        # 2. site-c's Raft state rebuilt from an empty log: it replays the founding from the first entry
        c.kill("site-c", signal.SIGTERM)
        raft_dir = c.sites["site-c"].dir / "data" / "raft"
        for name in ("raft.journal", "raft.dump"):
            if (raft_dir / name).exists():
                (raft_dir / name).rename(raft_dir / f"{name}.aside")
        c.start("site-c")
        c.wait_ready(90)
        assert len(_lines(c, "site-c", FOUNDED)) == 2  # the founding applied again, from the log
        assert c.status("site-c")["rules"]["version"] == RULES_MAX
        vouches.commit_and_agree(rng)
        for s in SITES:
            refused = c.status(s)["raft"]["refused"]
            assert refused["checkpoint_divergent"] == 0 and refused["dump_not_vouched"] == 0, (s, refused)
    finally:
        c.stop_all()
