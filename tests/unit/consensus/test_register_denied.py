"""A site's registration refused at the leader's door for good is not retried for ever.

A revoked site, or a site that is not a member, is refused at an honest leader's door
(``forwarded_bad_signature``, point 17); the proposer sees only ``NoQuorumError`` reason
``request_denied``, which is transient (a spent forwarding budget passes). The daemon's
registration (``SiteDaemon._register``) looks at its applied view: its key revoked, or not a
member, is an ERROR once and the end of the tries.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from replicad.core import errors
from replicad.core.identity import Signer, generate_private_key, public_key_raw
from replicad.site.daemon import SiteDaemon
from tests.unit.consensus.test_depose import CLUSTER, KEYS, door, packed, signed


class DoorCluster:
    """Proposes through the door of a real leader's RaftNode as a follower's forwarded command:
    a door refusal raises what ``RaftNode.propose`` raises for pysyncobj's REQUEST_DENIED."""

    def __init__(self, leader, site: str) -> None:
        self.leader, self.site, self.tries, self.reasons = leader, site, 0, []

    async def propose(self, op: str, **args) -> dict:
        self.tries += 1
        reason = door(self.leader, packed(signed(self.site, op, **args)), self.site)
        self.reasons.append(reason)
        if reason is not None:
            raise errors.NoQuorumError("raft did not commit the command: the leader refused it",
                                       reason="request_denied", op=op, op_id="x")
        raise AssertionError(f"the door let {op} by {self.site} pass")


def daemon(leader, site: str, key=None) -> SiteDaemon:
    d = object.__new__(SiteDaemon)
    d.site_id, d.raft, d.fatal = site, leader, None
    d._signer = Signer(site, key or KEYS[site], CLUSTER)
    d.cluster = DoorCluster(leader, site)
    return d


def revoke(leader, site: str, *, rejoined: bool = False) -> None:
    entry = {"keys": [public_key_raw(KEYS[site])], "at_ns": 1, "by": "a"}
    state = leader._consumer.cluster
    leader._consumer.cluster = {**state, "revoked": {site: {**entry, **({"rejoined_ns": 2} if rejoined else {})}}}


def register(d: SiteDaemon) -> None:
    asyncio.run(asyncio.wait_for(d._register(SimpleNamespace(peer_url="http://127.0.0.1:1", kind="data")), 30))


def test_a_revoked_site_stops_registering_at_the_first_door_refusal(leader, caplog):
    caplog.set_level(logging.WARNING)
    revoke(leader, "c")
    d = daemon(leader, "c")
    register(d)
    assert d.cluster.tries == 1 and d.cluster.reasons == ["forwarded_bad_signature"]
    errs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errs) == 1 and "is revoked in the cluster state" in errs[0] and "new key" in errs[0], errs
    assert not [r for r in caplog.records if r.levelno == logging.WARNING], caplog.text


def test_a_site_that_is_not_a_member_stops_registering(leader, caplog):
    caplog.set_level(logging.WARNING)
    d = daemon(leader, "z")
    register(d)
    assert d.cluster.tries == 1 and d.cluster.reasons[0] is not None
    errs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errs) == 1 and "'z' is not a member of the agreed membership (a, b, c)" in errs[0], errs


def test_a_door_refusal_of_a_member_in_good_standing_stays_transient(leader):
    denied = errors.NoQuorumError("refused", reason="request_denied", op="register_site", op_id="x")
    assert errors.is_transient(denied)
    assert daemon(leader, "b")._denied_for_good(denied) is None  # a spent budget: tried again
    revoke(leader, "b")
    assert daemon(leader, "b")._denied_for_good(denied) is not None
    # rebuilt with a new key (pinned everywhere) after its revocation: its old key only is refused
    assert daemon(leader, "b", generate_private_key())._denied_for_good(denied) is None
    revoke(leader, "b", rejoined=True)
    assert daemon(leader, "b", generate_private_key())._denied_for_good(denied) is None
    # another refusal than the door's is judged as before
    timeout = errors.NoQuorumError("raft did not commit the command in time", reason="timeout")
    revoke(leader, "b")
    assert daemon(leader, "b")._denied_for_good(timeout) is None
