"""The founding's key reference across a key rotation, on real daemons (attacker review r14, A1).

A ``found`` before the founding counts only signed with the key the ``[[sites]]`` config pinned for
its proposer when the site's Raft log started (``state.founding_keys``, pinned in ``raft.limits``).
The key of the site whose proposal founded the cluster is rotated and its old key retired the
README way ("Rotate a site's key", steps 1-6):

* every site restarts with configs that no longer pin the key a signed the founding with, and
  replays its log from its first entry: the founding is decided as before (the keys pinned with the
  log), no checkpoint diverges;
* another site's Raft state is then rebuilt from an empty log while the leader's log still holds
  the founding: its log starts under today's config and it refuses that proposal. When its replay
  founds another incarnation it stops (``membership_mismatch``, exit 2, naming the incarnation the
  others report) instead of acting on another state; when it founds none it waits, acting on no
  incarnation, with an ERROR every 20 s naming both possible causes (a leader forging a founder's
  found, attacker review r2 F2, or the retired key, with its remedy).
"""

from __future__ import annotations

import re
import signal

import pytest

from replicad.config import load_config
from replicad.lab.localcluster import write_site_keys

from .test_membership_changes import _change_members, _no_divergence, _raft, _restart, _snap, bench  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

THREE = ("site-a", "site-b", "site-c")
FOUNDED = "the cluster is founded under rules"


def test_a_retired_founding_key_replays_alike_and_a_rebuilt_site_that_cannot_stops(bench) -> None:  # noqa: F811
    c, _ = bench
    # the site whose found proposal founded the cluster (the first found carrying the rules: always
    # one of the agreeing proposals) has its key rotated; another site is rebuilt at the end
    founded = [line for s in THREE for line in c.sites[s].log_path.read_text().splitlines() if FOUNDED in line]
    x = re.search(r"\((site-[a-c])'s found proposal carried them\)", founded[0]).group(1)
    at, y = (s for s in THREE if s != x)
    site = c.sites[x]
    old = load_config(site.config_path).self_ref().public_key[0]
    new = write_site_keys({x: site.dir}, name="site.new.key")[x]

    def both(text: str) -> str:
        return text.replace(f'public_key = "{old}"', f'public_key = ["{old}", "{new}"]')

    def only_new(text: str) -> str:
        return text.replace(f'public_key = ["{old}", "{new}"]', f'public_key = "{new}"')

    # steps 1-5: the new key pinned in the cluster and the files, the site signing with it
    _change_members(c, both(c.sites[at].config_path.read_text()), at, (x, y))
    for s in THREE:
        c.sites[s].config_path.write_text(both(c.sites[s].config_path.read_text()))
        _restart(c, s)
    site.config_path.write_text(site.config_path.read_text().replace('key_file = "site.key"',
                                                                     'key_file = "site.new.key"'))
    _restart(c, x)
    # step 6: the old key (which signed its founding proposal) retired from the cluster and every file
    _change_members(c, only_new(c.sites[at].config_path.read_text()), at, (x, y))
    past = {s: _raft(c, s)["checkpoint"]["n"] for s in THREE}
    for s in THREE:
        c.sites[s].config_path.write_text(only_new(c.sites[s].config_path.read_text()))
        _restart(c, s)  # replays its log from the first entry, the founding under the keys pinned with it
    assert _snap(c)["committed"]
    _no_divergence(c, THREE, past)
    for s in THREE:
        assert _raft(c, s)["commands_refused"].get("bad_signature", 0) == 0, (s, _raft(c, s))
        assert "replay of the Raft log" not in c.sites[s].log_path.read_text(), c.log_tail(s)

    # site y rebuilt from an empty log: it starts under today's config, which no longer pins x's old key
    proc = c.sites[y].proc
    c.kill(y, signal.SIGTERM)
    proc.wait(timeout=60)
    raft_dir = c.sites[y].dir / "data" / "raft"
    assert (raft_dir / "raft.journal").exists() and not (raft_dir / "raft.dump").exists()  # nothing compacted
    (raft_dir / "raft.journal").rename(raft_dir / "raft.journal.aside")
    # it stops when its replay founded another incarnation (it would act on it); when it founded
    # none it never stops (a leader can forge a founder's found: attacker review r2, F2) and says
    # both causes, the retired key among them (the lab minimum withheld_after, 20 s, for a shorter test)
    config = c.sites[y].config_path.read_text()
    assert "lab = true" in config and "withheld_after" not in config
    c.sites[y].config_path.write_text(config.replace("[raft]\n", '[raft]\nwithheld_after = "20s"\n', 1))
    c.start(y)
    said = "founding not applied here"
    c.wait_for(f"{y} stops or says why it waits", lambda: c.sites[y].proc.poll() is not None
               or said in c.sites[y].log_path.read_text(), 150)
    log = c.sites[y].log_path.read_text()
    assert f"in the name of site '{x}', not signed with the key" in log, c.log_tail(y)
    assert "founding withheld?" not in log, c.log_tail(y)
    if c.sites[y].proc.poll() is None:
        assert f"in the name of site {x} that would count among their founders" in log, c.log_tail(y)
        assert "Rotate a site's key" in log and "report the cluster founded as" in log, c.log_tail(y)
        return
    assert c.sites[y].proc.returncode == 2, c.log_tail(y)
    assert "report the cluster founded as" in log and "replay of the Raft log founded" in log, c.log_tail(y)
    # the gap's signature, not a withholding leader: it refused a founder's found
    assert f"it refused site {x}'s found proposal, which counts among the founders of" in log, c.log_tail(y)
