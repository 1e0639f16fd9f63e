"""Whether a site is degraded, and why: one pure reading of its status document, shared by
``GET /v1/status`` (``degraded``, ``degraded_reasons``), ``/metrics``
(``replicad_site_degraded``, ``replicad_site_degraded_reasons{reason}``) and ``replicad status``
(its exit code and the sentences it prints), so the three never disagree."""

from __future__ import annotations


DEGRADED_REASONS = ("unsafe_unsigned", "no_leader", "no_quorum", "view_not_current", "member_unreachable",
                    "repairs_pending", "restore_interrupted", "volume_error", "volume_suspect", "volume_resync",
                    "role_unconfirmed", "replica_not_stored", "no_primary")
"""Every ``reason`` code :func:`degraded_reasons` gives (``replicad_site_degraded_reasons{reason}``)."""


def cut_off_sites(data: dict) -> set[str]:
    """The sites the status document ``data`` names revoked and not rebuilt since
    (``identity.revoked`` entries without ``rejoined``): cut off as intended, so neither a
    degraded member (:func:`degraded_reasons`) nor an unreachable Raft peer
    (``replicad_raft_peer_revoked``, which ReplicadRaftPeerUnreachable leaves out). Pure; never
    raises on a partial document."""
    identity = data.get("identity") if isinstance(data.get("identity"), dict) else {}
    revoked = identity.get("revoked") if isinstance(identity.get("revoked"), dict) else {}
    return {str(site) for site, rec in revoked.items() if not (isinstance(rec, dict) and rec.get("rejoined"))}


def degraded_reasons(data: dict) -> list[dict]:
    """Why the status document ``data`` (``GET /v1/status``, or :meth:`Status.report`) shows a
    degraded site: a list of ``{"reason": code, "message": sentence, "volume"?: name,
    "site"?: site id}`` (empty: healthy; codes in :data:`DEGRADED_REASONS`). Degraded means:
    the site runs without identity; it knows no Raft leader or no quorum, or its view is not
    current; a member is unreachable (``members``, else the Raft partners; a revoked site,
    ``identity.revoked`` without ``rejoined``, is cut off as intended and not counted); chunks lost here
    await repair; a restore was interrupted; or a volume's last step failed (``last_error``),
    its newest committed snapshot is not its newest clean one (suspect: an incident), this
    site is ``fenced``/``divergent`` for it, its role is not confirmed by a current Raft view,
    it has no primary (``primary`` present and None: demoted, so nothing is replicated; an
    unknown volume, without the key, is not counted; or its primary is revoked, ``identity.revoked``
    without ``rejoined``: nothing it sends is accepted), or its last snapshot was not stored at a replica (``last_report.peers``; a straggler still
    shipping is not counted, nor a replica that holds that snapshot or a newer one since:
    ``last_report_caught_up``). Pure; never raises on a partial document."""
    out: list[dict] = []

    def add(reason: str, message: str, **where: str) -> None:
        out.append({"reason": reason, "message": message, **where})

    raft = data.get("raft") or {}
    if (data.get("identity") or {}).get("unsafe_unsigned"):
        add("unsafe_unsigned", "this site runs without identity (identity.unsafe_unsigned): commands are not signed")
    if raft.get("leader") is None:
        add("no_leader", "no Raft leader")
    if not raft.get("has_quorum"):
        add("no_quorum", "no Raft quorum")
    if raft.get("synced") is False:
        add("view_not_current", "this site's Raft view is not current")
    revoked = cut_off_sites(data)
    silent: dict[str, object] = {}
    if data.get("members") is not None:
        down = [str(m.get("site_id")) for m in data["members"] if not m.get("self") and not m.get("reachable")]
        silent = {str(m.get("site_id")): m.get("silent_s") for m in data["members"] if m.get("silent_s") is not None}
    else:
        names = data.get("raft_sites") or {}
        down = [str(names.get(addr, addr)) for addr, up in sorted((raft.get("partners") or {}).items()) if not up]
    for site in down:
        if site in revoked:  # cut off as intended: not a fault (the status shows it under revoked)
            continue
        add("member_unreachable", f"site {site} unreachable" + (
            f" (its Raft connection is open, but its clock reports stopped {silent[site]} s ago by the majority's "
            f"clock: paused, hung or still catching up)" if site in silent else ""), site=site)
    pending = (data.get("store") or {}).get("repairs_pending")
    if pending:
        add("repairs_pending", f"{pending} chunks lost here are being re-fetched from the other sites (new "
                               "snapshots are refused here until then)")
    for target in data.get("interrupted_restores") or []:
        add("restore_interrupted", f"a restore into {target} was interrupted: that file is incomplete (restore "
                                   "into it again with --overwrite if it is to be used)", target=str(target))
    for name, v in sorted((data.get("volumes") or {}).items()):
        if v.get("last_error"):
            add("volume_error", f"{name}: last error: {v['last_error']}", volume=name)
        if v.get("newest_committed") is not None and v.get("newest_committed") != v.get("newest_clean"):
            add("volume_suspect", f"{name}: newest snapshot #{v['newest_committed']} is suspect (newest clean: "
                                  f"{v.get('newest_clean') if v.get('newest_clean') is not None else 'none'})",
                volume=name)
        if "primary" in v and v["primary"] is None:  # demoted: nothing is replicated, nobody serves it
            add("no_primary", f"{name}: no primary (demoted, epoch {v.get('epoch')}): no snapshots are taken; run "
                              f"'replicad promote {name} --force' AT the site to promote", volume=name)
        elif v.get("primary") and v["primary"] in revoked:  # its commands and peer writes are refused now
            add("no_primary", f"{name}: its primary {v['primary']} is revoked: nothing it sends is accepted, so "
                              f"nobody serves the volume; run 'replicad promote {name} --force' AT the site to "
                              "promote (the newest clean snapshot, or --snapshot N)", volume=name)
        if v.get("role") in ("fenced", "divergent"):
            add("volume_resync", f"{name}: this site is {v['role']} (resync pending)", volume=name)
        if v.get("confirmed") is False:
            if v.get("primary") and v["primary"] == data.get("site_id"):  # never 'Raft names <itself>'
                acting = v.get("acting_epoch")
                seen = (f"Raft names this site primary at epoch {v.get('epoch')} in this site's view; this site "
                        + (f"acts at epoch {acting}" if acting is not None else "has not acted at it yet"))
            elif v.get("primary"):
                seen = f"Raft names {v['primary']} primary at epoch {v.get('epoch')} in this site's view"
            else:
                seen = "this site's view holds no Raft record of it yet"
            add("role_unconfirmed", f"{name}: role {v.get('role')} is this site's belief, not confirmed by a "
                                    f"current Raft view ({seen})", volume=name)
        caught_up = set(v.get("last_report_caught_up") or ())
        for peer, rep in sorted(((v.get("last_report") or {}).get("peers") or {}).items()):
            if isinstance(rep, dict) and not rep.get("ok") and rep.get("error") != "straggler" \
                    and peer not in caught_up:
                add("replica_not_stored", f"{name}: the last snapshot was not stored at {peer}: {rep.get('error')}: "
                                          f"{rep.get('message', '')}".rstrip(": "), volume=name, site=str(peer))
    return out
