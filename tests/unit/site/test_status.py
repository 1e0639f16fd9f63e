"""Status and Cluster.view_freshness: a role read from a stale Raft view is shown unconfirmed,
the standby lag is withheld, and the view's age is this site's own (issue 13, item 10)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from replicad.core.health import degraded_reasons
from replicad.site.cluster import Cluster
from replicad.site.runner import VolumeRunner
from replicad.site.status import Status



def now_ns() -> int:
    """This instant (read per test: a module-level instant is minutes old by the time a long
    suite runs the test, and the ages measured here would grow with it)."""
    return time.time_ns()


class _Raft:
    """What Cluster and Status read from the Raft node: status() and the applied state."""

    def __init__(self, status: dict, state: dict) -> None:
        self._status, self.state = status, state

    def status(self) -> dict:
        return dict(self._status)

    def view(self) -> dict:
        return self.state


class _Catalog:
    def __init__(self, standby_seq: int | None) -> None:
        self._sb = SimpleNamespace(seq=standby_seq, root=b"r" * 32) if standby_seq is not None else None

    def standby(self, name: str):
        return self._sb

    def list(self, name: str, state: str | None = None) -> list:
        return []


CURRENT = {"leader": "127.0.0.1:1", "has_quorum": True, "commit_index": 9, "last_applied": 9, "caught_up": True}
CUT_OFF = {"leader": None, "has_quorum": False, "commit_index": 9, "last_applied": 9, "caught_up": False}


def _state(primary: str, epoch: int, clock_age_s: float | None) -> dict:
    now = now_ns()
    snaps = {1: {"verdict": "clean", "created_at_ns": now - 600 * 10**9, "holders": ["site-a", "site-b"],
                 "root": b"r" * 32}}
    clocks = {} if clock_age_s is None else {"site-b": now - int(clock_age_s * 1e9)}
    return {"volumes": {"ehr": {"primary": primary, "epoch": epoch, "snapshots": snaps, "last_seq": 1}},
            "sites": {}, "clocks": clocks}


def _status(raft: _Raft, role: str, acting_epoch: int | None, standby_seq: int | None = 1) -> dict:
    cfg = SimpleNamespace(sites=(), cluster_id="lab", identity=SimpleNamespace(unsafe_unsigned=True),
                          self_ref=lambda: SimpleNamespace(public_key=()))
    cluster = Cluster("site-b", raft, lambda: cfg)
    vcfg = SimpleNamespace(name="ehr", source=SimpleNamespace(kind="file"))
    runner = VolumeRunner(vcfg, role=role, acting_epoch=acting_epoch)  # type: ignore[arg-type]
    store = SimpleNamespace(stats=lambda: {})
    return Status(cluster, _Catalog(standby_seq), store, {"ehr": runner}, []).report()


def test_a_current_view_confirms_the_role_and_reports_the_lag() -> None:
    st = _status(_Raft(CURRENT, _state("site-a", 2, 3.0)), "replica", None, standby_seq=0)
    assert st["view"]["current"] is True and st["raft"]["synced"] is True and st["view"]["why"] is None
    assert 2.5 < st["view"]["age_s"] < 60
    assert st["volumes"]["ehr"]["confirmed"] is True
    assert st["volumes"]["ehr"]["standby_lag_snapshots"] == 1


def test_a_stale_view_leaves_the_role_unconfirmed_and_the_lag_unknown() -> None:
    # the old primary, cut off: its view still names it at its acting epoch
    st = _status(_Raft(CUT_OFF, _state("site-b", 1, 312.0)), "primary", 1)
    assert st["view"]["current"] is False and st["raft"]["synced"] is False
    assert st["view"]["why"] == "no Raft leader known" and st["view"]["age_s"] > 300
    assert st["volumes"]["ehr"]["role"] == "primary" and st["volumes"]["ehr"]["confirmed"] is False
    # a replica cut off: its view's newest clean is what its standby holds; the lag is not 0 but unknown
    st = _status(_Raft(CUT_OFF, _state("site-a", 1, None)), "replica", None, standby_seq=1)
    assert st["volumes"]["ehr"]["confirmed"] is False and st["volumes"]["ehr"]["standby_lag_snapshots"] is None
    assert st["view"]["age_s"] is None  # no report of its own in its view


def test_a_current_view_that_disagrees_with_the_role_is_not_a_confirmation() -> None:
    # Raft moved the volume to site-a at epoch 2; site-b has not fenced yet
    st = _status(_Raft(CURRENT, _state("site-a", 2, 1.0)), "primary", 1)
    assert st["view"]["current"] is True and st["volumes"]["ehr"]["confirmed"] is False
    # granted primary, takeover not run yet
    st = _status(_Raft(CURRENT, _state("site-b", 2, 1.0)), "replica", None)
    assert st["volumes"]["ehr"]["confirmed"] is False
    st = _status(_Raft(CURRENT, _state("site-b", 2, 1.0)), "primary", 2)
    assert st["volumes"]["ehr"]["confirmed"] is True and st["volumes"]["ehr"]["standby_lag_snapshots"] is None


# --------------------------------------------------------------------------- issue 17
def _custom(state: dict, role: str = "replica", acting_epoch: int | None = None, *, pinned: tuple = (),
            signing_key: str | None = None) -> dict:
    cfg = SimpleNamespace(sites=(), cluster_id="lab", identity=SimpleNamespace(unsafe_unsigned=False),
                          self_ref=lambda: SimpleNamespace(public_key=pinned))
    cluster = Cluster("site-b", _Raft(CURRENT, state), lambda: cfg)
    vcfg = SimpleNamespace(name="ehr", source=SimpleNamespace(kind="file"))
    runner = VolumeRunner(vcfg, role=role, acting_epoch=acting_epoch)  # type: ignore[arg-type]
    return Status(cluster, _Catalog(1), SimpleNamespace(stats=lambda: {}), {"ehr": runner}, [],
                  signing_key=signing_key).report()


def test_the_rpo_is_the_age_of_the_newest_clean_snapshot() -> None:
    """Item 10: a suspect snapshot 1 min old does not make the RPO 1 min: a restore loses 10 min."""
    state = _state("site-a", 2, 1.0)
    now = now_ns()
    state["volumes"]["ehr"]["snapshots"] = {
        1: {"verdict": "clean", "created_at_ns": now - 600 * 10**9, "holders": ["site-a"], "root": b"r" * 32},
        2: {"verdict": "suspect", "created_at_ns": now - 60 * 10**9, "holders": ["site-a"], "root": b"s" * 32}}
    v = _custom(state)["volumes"]["ehr"]
    assert 600 <= v["rpo_s"] < 660 and 60 <= v["newest_age_s"] < 120
    state["volumes"]["ehr"]["snapshots"][1]["verdict"] = "suspect"  # no clean one: no recovery point
    v = _custom(state)["volumes"]["ehr"]
    assert v["rpo_s"] is None and v["newest_age_s"] >= 60


def test_a_volume_without_primary_is_degraded() -> None:
    """Item 7: after 'replicad demote' Raft names no primary; status says so and what to run."""
    st = _custom(_state(None, 3, 1.0))  # type: ignore[arg-type]
    reasons = [r for r in st["degraded_reasons"] if r["reason"] == "no_primary"]
    assert st["degraded"] and reasons and reasons[0]["volume"] == "ehr", st["degraded_reasons"]
    assert "replicad promote ehr --force" in reasons[0]["message"] and "AT the site to promote" in reasons[0]["message"]
    assert not [r for r in _custom(_state("site-a", 2, 1.0))["degraded_reasons"] if r["reason"] == "no_primary"]


def test_a_rejoined_site_is_shown_rejoined_and_the_signing_key_is_marked() -> None:
    """Item 8: site-b was revoked (old key), rebuilt with a new key and registered again."""
    import base64

    old, new = b"\x01" * 32, b"\x02" * 32
    old_s, new_s = (f"ed25519:{base64.b64encode(k).decode()}" for k in (old, new))
    state = _state("site-a", 2, 1.0)
    state["revoked"] = {"site-b": {"keys": [old], "at_ns": 1, "by": "site-a", "rejoined_ns": 2},
                        "site-c": {"keys": [b"\x03" * 32], "at_ns": 1, "by": "site-a"}}
    ident = _custom(state, pinned=(old_s, new_s), signing_key=new_s)["identity"]
    assert ident["revoked"]["site-b"]["rejoined"] is True and ident["revoked"]["site-c"]["rejoined"] is False
    assert ident["signing_key"] == new_s
    assert ident["keys"] == [{"key": old_s, "signs": False, "revoked": True},
                             {"key": new_s, "signs": True, "revoked": False}]


def test_a_replica_that_missed_the_last_snapshot_is_degraded_until_it_holds_it_or_a_newer_one() -> None:
    """A new operator's finding: after site-c came back and stored the newer snapshot, the
    primary stayed degraded until its next snapshot (with a long interval, for hours)."""
    state = _state("site-b", 2, 1.0)
    now = now_ns()
    cfg = SimpleNamespace(sites=(), cluster_id="lab", identity=SimpleNamespace(unsafe_unsigned=False),
                          self_ref=lambda: SimpleNamespace(public_key=()))
    vcfg = SimpleNamespace(name="ehr", source=SimpleNamespace(kind="file"))
    runner = VolumeRunner(vcfg, role="primary", acting_epoch=2)  # type: ignore[arg-type]
    runner.last_report = {"seq": 1, "peers": {"site-c": {"ok": False, "error": "peer_unavailable",
                                                         "message": "cannot connect"}}}

    def reasons() -> list[str]:
        st = Status(Cluster("site-b", _Raft(CURRENT, state), lambda: cfg), _Catalog(1),
                    SimpleNamespace(stats=lambda: {}), {"ehr": runner}, []).report()
        return [r["site"] for r in st["degraded_reasons"] if r["reason"] == "replica_not_stored"]

    assert reasons() == ["site-c"]
    state["volumes"]["ehr"]["snapshots"][2] = {"verdict": "clean", "created_at_ns": now, "root": b"t" * 32,
                                               "holders": ["site-a", "site-b", "site-c"]}  # caught up since
    assert reasons() == []


def test_a_takeover_in_progress_is_confirmed_and_never_named_as_another_site() -> None:
    # promote --force (--instant): Raft granted site-b epoch 2; the takeover runs (role restoring),
    # the acting epoch is still the previous one until it ends: the cluster agrees, nothing degraded
    for acting in (None, 1):
        st = _status(_Raft(CURRENT, _state("site-b", 2, 1.0)), "restoring", acting)
        assert st["volumes"]["ehr"]["confirmed"] is True, acting
        assert "role_unconfirmed" not in {r["reason"] for r in st["degraded_reasons"]}
    # restoring while Raft names another site: not confirmed, and said so
    st = _status(_Raft(CURRENT, _state("site-a", 3, 1.0)), "restoring", None)
    assert st["volumes"]["ehr"]["confirmed"] is False
    # a primary whose acting epoch is not Raft's: the sentence says this site, not 'Raft names site-b'
    from replicad.core.health import degraded_reasons
    st = _status(_Raft(CURRENT, _state("site-b", 3, 1.0)), "primary", 2)
    msg = next(r["message"] for r in degraded_reasons(st) if r["reason"] == "role_unconfirmed")
    assert "Raft names this site primary at epoch 3" in msg and "acts at epoch 2" in msg, msg
    assert "names site-b" not in msg


def test_a_revoked_primary_says_to_promote() -> None:
    # operator trial: after revoking the primary, status said only "site site-b unreachable"
    st = {"raft": {"leader": "x", "has_quorum": True, "synced": True}, "site_id": "site-c",
          "identity": {"revoked": {"site-b": {"at_ns": 1, "by": "site-a", "keys": 1}}},
          "volumes": {"ehr": {"primary": "site-b", "epoch": 3, "role": "replica", "confirmed": True}}}
    [r] = [r for r in degraded_reasons(st) if r["reason"] == "no_primary"]
    assert "its primary site-b is revoked" in r["message"] and "replicad promote ehr --force" in r["message"], r
    st["identity"]["revoked"]["site-b"]["rejoined"] = True  # rebuilt with a new key and registered again
    assert not [r for r in degraded_reasons(st) if r["reason"] == "no_primary"]
