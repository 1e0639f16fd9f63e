"""The attacker of the detection tests that holds the primary's host (root on ONE site): that
site's own daemon, a real ``replicad run`` process with its config, key, Raft password and data
dir, whose detection the attacker replaced. A site's ``[volumes.anomaly]`` config may only make
the cluster's policy stricter (:meth:`replicad.site.detection.Detection.policy`), so an attacker
who wants the site to *say* clean changes the code it runs instead.

Run as ``python3 -m tests.security.lying_site CONFIG`` (in place of ``python3 -m replicad run
CONFIG``). Everything is replicad's code (scans, shipping, acknowledgements, Raft, the admin
API) except two functions, replaced before the daemon starts:

* :meth:`~replicad.site.detection.Detection.judge`: every snapshot this site judges, its own
  and any other, it records at once through Raft as ``clean`` with score 0 (a ``site_verdict``
  in its own name, signed with its own key) without reading a byte of it;
* :func:`replicad.core.anomaly.judge` (the primary's commit-time screen): every snapshot is
  ``clean`` with score 0, so the primary's ``commit_snapshot`` claims clean.
"""

from __future__ import annotations

import sys

from replicad.core import anomaly
from replicad.site import detection


async def _lying_judge(self: detection.Detection, volume: str, seq: int, vs: dict) -> dict:
    snap = vs["snapshots"][seq]
    self._own[(volume, seq, snap["root"])] = "clean"
    await self.cluster.propose("site_verdict", volume=volume, seq=seq, verdict="clean", score_ppm=0,
                               cumulative_ppm=0, first_seq=None, reason="")
    return {"site": self.site_id, "volume": volume, "seq": seq, "verdict": "clean", "score": 0.0, "reasons": []}


def _lying_screen(stats: dict, history, **_kw) -> anomaly.Verdict:
    return anomaly.Verdict(anomaly.VERDICT_CLEAN, 0.0, 0.0, "commit-time screen: nothing newly random")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m tests.security.lying_site CONFIG", file=sys.stderr)
        return 2
    detection.Detection.judge = _lying_judge  # type: ignore[method-assign]
    anomaly.judge = _lying_screen  # type: ignore[assignment]
    from replicad.cli import main as replicad_main
    return replicad_main(["run", argv[0]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
