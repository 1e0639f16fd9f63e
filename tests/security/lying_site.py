"""The attacker of the detection tests that holds the primary's host (root on ONE site): that
site's own daemon, a real ``replicad run`` process with its config, key, Raft password and data
dir, whose detection the attacker replaced. A site's ``[volumes.anomaly]`` config may only make
the cluster's policy stricter (:meth:`replicad.site.detection.Detection.policy`), so an attacker
who wants the site to *say* clean changes the code it runs instead.

Run as ``python3 -m tests.security.lying_site [--suspect] CONFIG`` (in place of ``python3 -m
replicad run CONFIG``; :func:`start` does it for a :class:`LocalCluster` site). Everything is
replicad's code (scans, shipping, acknowledgements, Raft, retention, the admin API) except what
the mode replaces before the daemon starts:

* default, the lying *clean* site: :meth:`~replicad.site.detection.Detection.judge`: every
  snapshot this site judges, its own and any other, it records at once through Raft as ``clean``
  with score 0 (a ``site_verdict`` in its own name, signed with its own key) without reading a
  byte of it; and :func:`replicad.core.anomaly.judge` (the primary's commit-time screen): every
  snapshot is ``clean`` with score 0, so the primary's ``commit_snapshot`` claims clean;
* ``--suspect``, the *suspect-voting* site: ``Detection.judge`` records every snapshot it
  judges as ``suspect`` (score 100 %, first suspicious snapshot: that one), without reading a
  byte of it, to hold every site's standby and freeze every site's pruning; the commit-time
  screen stays replicad's own.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from replicad.core import anomaly
from replicad.site import detection


async def _lying_judge(self: detection.Detection, volume: str, seq: int, vs: dict) -> dict:
    snap = vs["snapshots"][seq]
    self._own[(volume, seq, snap["root"])] = "clean"
    await self.cluster.propose("site_verdict", volume=volume, seq=seq, verdict="clean", score_ppm=0,
                               cumulative_ppm=0, first_seq=None, reason="")
    return {"site": self.site_id, "volume": volume, "seq": seq, "verdict": "clean", "score": 0.0, "reasons": []}


async def _suspect_judge(self: detection.Detection, volume: str, seq: int, vs: dict) -> dict:
    snap = vs["snapshots"][seq]
    self._own[(volume, seq, snap["root"])] = "suspect"
    await self.cluster.propose("site_verdict", volume=volume, seq=seq, verdict="suspect", score_ppm=1_000_000,
                               cumulative_ppm=1_000_000, first_seq=seq, reason="every block turned random (says the "
                               "suspect-voting site)")
    return {"site": self.site_id, "volume": volume, "seq": seq, "verdict": "suspect", "score": 1.0,
            "reasons": ["suspect-voting site"]}


def _lying_screen(stats: dict, history, **_kw) -> anomaly.Verdict:
    return anomaly.Verdict(anomaly.VERDICT_CLEAN, 0.0, 0.0, "commit-time screen: nothing newly random")


def start(c: Any, site: str, *options: str) -> None:
    """Stop ``site``'s daemon of the LocalCluster ``c`` if it runs (SIGTERM, by PID) and start it
    as this module with ``options`` on the same config and data dir; the cluster stops it by PID
    like any of its sites."""
    c.kill(site, signal.SIGTERM)
    c.start(site, module="tests.security.lying_site", args=options)


def main(argv: list[str]) -> int:
    suspect = argv[:1] == ["--suspect"]
    args = argv[1:] if suspect else argv
    if len(args) != 1:
        print("usage: python3 -m tests.security.lying_site [--suspect] CONFIG", file=sys.stderr)
        return 2
    if suspect:
        detection.Detection.judge = _suspect_judge  # type: ignore[method-assign]
    else:
        detection.Detection.judge = _lying_judge  # type: ignore[method-assign]
        anomaly.judge = _lying_screen  # type: ignore[assignment]
    from replicad.cli import main as replicad_main
    return replicad_main(["run", args[0]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
