"""A site that catches up by installing the leader's full state: the steps the security tests take
to bring it about on a :class:`~replicad.lab.localcluster.LocalCluster` of site-a, site-b and
site-c whose daemons compact their Raft log often (``REPLICAD_LAB_CHECKPOINT_EVERY`` /
``REPLICAD_LAB_COMPACTION_ENTRIES``), site-b stopped meanwhile."""

from __future__ import annotations

from replicad.lab.localcluster import LocalCluster
from tests.integration.test_incarnation import _leader


def leader_compacted(c: LocalCluster, since: float, timeout: float, after: str = "") -> str:
    """Waits (at most 30 s) for a leader among site-a and site-c, then (at most ``timeout``
    seconds) for its Raft dump written after ``since`` (epoch seconds): that leader's site id.
    ``after``: the wait's words, as " after the flood". Raises
    :class:`~replicad.core.errors.UnavailableError` on a timeout."""
    leader = c.wait_for("a leader", lambda: _leader(c, ("site-a", "site-c")), 30)
    dump = c.sites[leader].dir / "data" / "raft" / "raft.dump"
    c.wait_for(f"{leader} compacted its log{after}", lambda: dump.exists() and dump.stat().st_mtime > since,
               timeout)
    return leader


def start_from_full_state(c: LocalCluster, timeout: float, site: str = "site-b") -> None:
    """Starts ``site`` and waits (at most ``timeout`` seconds) until its status counts an installed
    full state (``raft.dump_installs``). Raises :class:`~replicad.core.errors.UnavailableError` on a
    timeout."""
    c.start(site)
    c.wait_for(f"{site} installed the leader's full state",
               lambda: c.status(site)["raft"].get("dump_installs", 0) >= 1, timeout)
