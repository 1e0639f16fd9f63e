"""The OpenAPI 3.1 description of the admin API, served at ``GET /v1/openapi.json``.

Written by hand next to the routes of :mod:`replicad.ops.admin`; the role of each operation
(``x-required-role``) comes from :data:`replicad.ops.auth.ROUTE_ROLES`. Response schemas are
JSON Schema 2020-12 (OpenAPI 3.1): they pin the keys and types clients rely on and allow
additional keys, so the API can grow without breaking them. The integration test
``tests/integration/test_admin_api.py`` checks the document against the live routes
(every route documented, every documented operation exists) and every answer of a real
site against its documented status codes and schema.
"""

from __future__ import annotations

import copy
from typing import Any

from replicad.ops import auth
from replicad.core.state import REQUEST_ACTIONS

API_VERSION = "1.0.0"

_INT = {"type": "integer"}
_NINT = {"type": ["integer", "null"]}
_NUM = {"type": "number"}
_NNUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict:
    return {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})}}


_RETENTION = _object({"keep_all_s": _INT, "hourly_s": _INT, "daily_s": _INT, "lock_s": _INT})

_CONFIRMED = ("true: this site's Raft view is current and says the same as role (primary/restoring: Raft names "
              "this site at its acting epoch; other roles: Raft names another site). false: role is this site's "
              "belief only (a stale view: cut off, restarted alone; or a role change in progress); "
              "'replicad status' prints it as 'primary?'")
_LAG = ("replica standby: snapshot seqs behind the newest clean snapshot; null when not confirmed (a stale view "
        "knows no newer snapshot and would read 0), not a replica, or while the standby is being rewritten")

SCHEMAS: dict[str, dict] = {
    "Error": _object({"error": _STR, "message": _STR, "evidence": _OBJ}),
    "Health": _object({"ok": _BOOL, "site_id": _STR}),
    "Ready": _object({"ready": _BOOL, "leader": _NSTR}, {"has_quorum": _BOOL, "why": _NSTR}),
    "Member": _object({"site_id": _STR, "kind": {"enum": ["data", "witness"]}, "raft": _STR, "peer_url": _STR,
                       "admin_url": _STR, "self": _BOOL, "registered": _BOOL, "leader": _BOOL,
                       "reachable": {**_BOOL, "description": (
                           "connected over Raft and its clock reports not stopped (see silent_s)")}},
                      {"silent_s": {**_NUM, "description": (
                          "present when its clock reports trail the majority's clock by more than 25 s: a "
                          "paused or hung site keeps its Raft connection open; then reachable is false")}}),
    "Members": _object({"members": {"type": "array", "items": _ref("Member")}, "leader": _NSTR,
                        "term": _NINT, "has_quorum": _BOOL}),
    "RaftStatus": _object({"leader": _NSTR, "term": _INT, "commit_index": _INT, "has_quorum": _BOOL,
                           "partners": _OBJ, "synced": _BOOL}),
    "ViewStatus": {**_object({"current": _BOOL, "age_s": _NNUM, "why": _NSTR}), "description": (
        "How far this site's Raft view can be believed. current: a leader is known, a majority is connected and "
        "the leader's commits are applied here (raft.synced). age_s: seconds since this site's own newest command "
        "(its clock report, every 5 s) was applied here, by this site's clock: about 0-10 while current, the time "
        "since it last committed when cut off or restarted alone; null before its first report. why: null when "
        "current, else the reason. While current is false every figure read from the Raft state (roles, epochs, "
        "newest snapshots, RPO) may be old")},
    "VolumeStatus": _object({"role": _STR, "acting_epoch": _NINT, "last_error": _NSTR, "standby_seq": _NINT,
                             "divergent": {"type": "array"},
                             "confirmed": {**_BOOL, "description": _CONFIRMED},
                             "standby_lag_snapshots": {**_NINT, "description": _LAG}},
                            {"primary": _NSTR, "epoch": _INT, "newest_committed": _NINT, "newest_clean": _NINT,
                             "suspect": {"type": "array", "items": _INT},
                             "rpo_s": {**_NNUM, "description": "recovery point: seconds since the newest CLEAN "
                                       "committed snapshot was taken (what a restore would lose); null without one"},
                             "newest_age_s": {**_NNUM, "description": "seconds since the newest committed snapshot, "
                                              "suspect or clean, was taken (replication liveness)"},
                             "standby": _object({"seq": _NINT, "state": {"enum": ["none", "unverified", "verified",
                                                                                  "damaged", "repairing"]},
                                                 "verified": _BOOL, "damaged_blocks": _INT},
                                                {"verified_at_ns": _NINT, "check_block": _INT}),
                             "retry": _object({"failures": _INT, "delay_s": _NUM, "in_s": _NUM})}),
    "Status": _object({"site_id": _STR, "raft": _ref("RaftStatus"), "view": _ref("ViewStatus"),
                       "volumes": {"type": "object", "additionalProperties": _ref("VolumeStatus")},
                       "members": {"type": "array", "items": _ref("Member")}, "raft_sites": _OBJ, "sites": _OBJ,
                       "interrupted_restores": {"type": "array", "items": _STR}},
                      {"release": {**_object({"version": _STR, "rules": _STR, "rules_max": _INT, "source": _STR,
                                              "commit": _NSTR, "python": _STR}), "description": (
                          "the release this site runs (replicad.release): the rules range it applies and the first "
                          "12 hex digits of a SHA-256 of its .py sources; the same at every site after an upgrade")},
                       "joined": {"type": ["boolean", "null"], "description": (
                          "this site entered the cluster's incarnation (before it no volume acts and a snapshot "
                          "is refused not_joined)")},
                       "identity": _object({"cluster_id": _STR, "signed": _BOOL, "unsafe_unsigned": _BOOL,
                                            "public_key": {"type": "array", "items": _STR}},
                                           {"revoked": {**_OBJ, "description": (
                                               "site -> {at_ns, by, keys (count), rejoined, rejoined_ns}: revoked "
                                               "through Raft; rejoined: rebuilt with a new key and registered again "
                                               "(a member again; its revoked keys stay refused)")},
                                            "signing_key": {**_NSTR, "description": "the key this site signs with"},
                                            "keys": {"type": "array", "description": (
                                                "each key pinned for this site: {key, signs (this site signs with "
                                                "it), revoked (the cluster revoked it)}"), "items": _OBJ}}),
                       "requests": {"type": "array", "items": _ref("Request")},
                       "rules": _object({"version": _INT, "max": _INT, "reported_max": _NINT, "waiting": _BOOL,
                                         "waiting_since": _NNUM, "members": _OBJ},
                                        {"applied": _NINT, "vouches": _OBJ}) | {"description": (
                           "the rules version the cluster state is decided under (version), the highest this "
                           "release applies (max), what this site reports (reported_max, null: none), and while "
                           "waiting to raise it (a rolling upgrade), each member's last release report {rules_max, "
                           "problem}; applied and vouches (site -> {n: digest}) compare the sites' states")},
                       "degraded": {**_BOOL, "description": "true when replicad status calls this site degraded"},
                       "degraded_reasons": {"type": "array", "description": (
                           "why the site is degraded (empty: healthy); reason is one of "
                           "core.health.DEGRADED_REASONS, also counted by replicad_site_degraded_reasons"),
                           "items": _object({"reason": _STR, "message": _STR},
                                            {"volume": _STR, "site": _STR, "target": _STR})}}),
    "Volumes": _object({"volumes": {"type": "object", "additionalProperties": _object(
        {"primary": _NSTR, "epoch": _INT, "block_size": _INT, "size_bytes": _INT, "min_copies": _INT,
         "retention": _RETENTION, "snapshots": _INT, "last_seq": _INT},
        {"max_size_bytes": {"type": "integer", "description": (
            "the volume's agreed maximum size (state.max_size_bytes; absent: derived from size_bytes, "
            "or not known before the first commit of a volume registered without a size)")}})}}),
    "Snapshot": _object({"seq": _INT, "root": _STR, "epoch": _INT, "created_at_ns": _INT,
                         "holders": {"type": "array", "items": _STR}, "verdict": {"enum": ["clean", "suspect"]}},
                        {"parent_seq": _NINT, "stats": _OBJ, "verdict_reason": _STR,
                         "held_here": {**_STR, "description": (
                             "clean for the cluster, but this site holds its takeovers and restores back from it: "
                             "why (a person here marked it or an ancestor suspect, or this site's detector judged "
                             "it suspect; site.promotion.held_here)")}}),
    "Snapshots": _object({"volume": _STR, "epoch": _INT, "primary": _NSTR,
                          "snapshots": {"type": "array", "items": _ref("Snapshot")},
                          "divergent": {"type": "array", "items": _object(
                              {"epoch": _INT, "seq": _INT, "root": _STR, "created_at_ns": _INT})},
                          "kept_locally": {"type": "array", "items": _object(
                              {"epoch": _INT, "seq": _INT, "root": _STR, "state": _STR, "created_at_ns": _INT})}},
                         {"previous": {"type": "array", "items": _object(
                             {"incarnation": _STR, "epoch": _INT, "seq": _INT, "root": _STR, "state": _NSTR,
                              "created_at_ns": _INT}, {"judged_here": _NSTR})},
                          "restore_default_here": {**_NINT, "description": (
                              "the snapshot a restore at this site picks without --snapshot: the newest clean one "
                              "it does not hold back (null: none)")}}),
    "Readopt": _object({}, {"incarnation": _STR, "epoch": _NINT, "seq": _NINT, "confirm_suspect": _BOOL}),
    "Membership": _object({"members": {"type": "array", "items": _object(
        {"site_id": _STR, "raft": _STR, "kind": _STR, "keys": {"type": "array", "items": _STR}})}},
        {"reason": _STR}),
    "ReadoptResult": _object({"volume": _STR, "readopted": _OBJ, "blocks_written": _INT, "epoch": _INT,
                              "committed": _BOOL}, {"seq": _NINT, "verdict": _NSTR}),
    "CycleReport": _object({"seq": _INT, "changed_blocks": _INT, "verdict": _STR, "score": _NUM,
                            "holders": {"type": "array", "items": _STR},
                            "committed": {**_BOOL, "description": (
                                "false: stored at fewer than min_copies sites (holders) while this site could "
                                "commit; it stays local here (O2). A site that cannot commit answers 503 "
                                "no_quorum instead")}},
                           {"baseline": _NUM, "bytes_shipped": _INT, "peers": _OBJ, "cycle_s": _NUM}),
    "PromoteResult": _object({"volume": _STR, "primary": _STR, "epoch": _NINT},
                             {"final_seq": _NINT, "restored_seq": _NINT, "rto_s": _NUM, "elapsed_s": _NUM,
                              "ready": {**_BOOL, "description": (
                                  "true: the new primary restored and verified its image and serves the volume "
                                  "(start the application); false: not yet after the wait, see not_ready")},
                              "ready_after_s": _NUM, "not_ready": _STR}),
    "DemoteResult": _object({"volume": _STR, "epoch": _NINT}),
    "RestoreResult": _object({"volume": _STR, "seq": _INT, "verdict": _STR, "target": _STR, "root": _STR,
                              "verified": {"const": True}, "blocks_written": _INT, "bytes_written": _INT,
                              "seconds": _NUM}, {"drill": _BOOL, "kept": _BOOL, "rto_s": _NUM, "phases": _OBJ,
                                                 # a drill's evidence (issue 16, site/drills.py)
                                                 "outcome": {"enum": ["passed", "failed"]}, "report": _OBJ,
                                                 "signature": _NSTR, "html": _STR, "report_path": _STR,
                                                 "held_here": _OBJ}),  # {seq: why} the default passed over
    "Operation": _object({"id": _STR, "kind": _STR, "volume": _STR,
                          "state": {"enum": ["running", "done", "failed", "cancelled"]}, "phase": _STR,
                          "done_blocks": _INT, "total_blocks": _INT,
                          "result": {"oneOf": [{"type": "null"}, _ref("RestoreResult")]},
                          "error": {"oneOf": [{"type": "null"}, _ref("Error")]},
                          "started_at": _NUM, "finished_at": _NNUM}),
    "VerifyReport": _object({"volume": _STR, "seq": _INT, "checked": _INT, "corrupt": {"type": "array",
                                                                                        "items": _STR},
                             "healed": _INT, "lost": _INT, "seconds": _NUM},
                            {"standby": {"oneOf": [{"type": "null"}, _object(
                                {"seq": _INT, "state": _STR, "bad_blocks": _INT, "repaired": _BOOL, "bytes_read": _INT},
                                {"first_block": _INT, "next_block": _INT, "blocks": _INT, "seconds": _NUM,
                                 "repair_error": _NSTR, "damaged_blocks": {"type": "array", "items": _INT}})]}}),
    "Retention": _object({"volume": _STR, "retention": _RETENTION}),
    "RetentionSet": _object({"volume": _STR, "retention": _RETENTION, "previous": _RETENTION}, {"status": _STR}),
    "RetentionReport": _object({"pruned": {"type": "array", "items": _INT}, "forgotten": _INT,
                                "refused": {"type": "array", "items": _INT}, "gc": {"type": ["object", "null"]}}),
    "VerdictResult": _object({"volume": _STR, "seq": _INT, "verdict": {"enum": ["clean", "suspect"]}},
                             {"warning": _STR, "marked": _STR, "held_here": _BOOL,
                              "cluster_verdict": {**_STR, "description": (
                                  "suspect marks: the cluster's verdict after this site's vote (suspect once "
                                  "'needed' sites' words agree: opinions or persons' marks)")},
                              "suspect_sites": {"type": "array", "items": _STR}, "needed": _INT, "next": _STR,
                              "changed": _BOOL, "withdrawn": {**_BOOL, "description": (
                                  "clean: this site's own suspect mark was taken back")},
                              "confirmed": _BOOL, "note": {**_STR, "description": (
                                  "nothing to do (the snapshot is confirmed clean already): said in words")}}),
    "PruneResult": _object({"volume": _STR, "pruned": {"type": "array", "items": _INT},
                            "local": _ref("RetentionReport")}),
    "PruneRequest": _object({"volume": _STR, "pruned": {"type": "array", "items": _INT}, "request": _STR,
                             "status": _STR, "kept_by_retention": {"type": "array", "items": _INT}},
                            {"approvals": {"type": "array", "items": _STR}, "needed": _INT, "next": _STR}),
    "RaftAudit": _object({"audit": {"type": "array", "items": _OBJ}, "rules": _INT}, {"dropped": {
        "type": "object", "description": "rules 4: records dropped per share {signer or '': [count, newest n]}"}}),
    "RulesConsent": _object({"consent": {"type": ["object", "null"], "description": (
        "this site's consent in force: {leave_behind, reason, by, at_ns, expires_ns}, or null")},
        "withdrawn": {"type": ["object", "null"], "description": "the consent withdrawn (cancel), or null"},
        "rules": {**_OBJ, "description": "the rules version and the wait to raise it (as GET /v1/status rules)"}}),
    "AdminAuditRecord": _object({"seq": _INT, "at": _STR, "who": _STR, "role": _NSTR, "remote": _NSTR,
                                 "method": _STR, "path": _STR, "body": {},
                                 "outcome": {"enum": ["ok", "accepted", "refused", "failed"]}, "status": _INT,
                                 "error": _NSTR, "prev": _STR, "hash": _STR}),
    "AdminAudit": _object({"records": {"type": "array", "items": _ref("AdminAuditRecord")},
                           "head": _object({"seq": _INT, "hash": _STR}),
                           "chain": _object({"ok": _BOOL, "n_records": _INT, "first_bad_seq": _NINT})}),
    "OpenAPI": _object({"openapi": _STR, "info": _OBJ, "paths": _OBJ}),
    "Request": _object({"id": _STR, "by": _STR, "action": {"enum": list(REQUEST_ACTIONS)},
                        "args": _OBJ, "reason": _STR, "approvals": {"type": "array", "items": _STR},
                        "needed": _INT, "created_ns": _INT, "expires_ns": _INT,
                        "status": {"enum": ["pending", "approved", "applied", "failed", "vetoed", "expired"]},
                        "result": {}},
                       {"approved_ns": _INT, "effective_ns": _INT, "applied_ns": _INT,
                        "previous": {"type": ["object", "integer"], "description": (
                            "set_retention, once applied: the policy it replaced; set_max_size: the agreed "
                            "maximum in bytes it replaces (the volume's now while it waits, once applied the "
                            "one it replaced)")},
                        "changes": {**_object({"against": {"enum": ["now", "before"]},
                                               "changes": {"type": "array", "items": _OBJ}, "unchanged": _INT}),
                                    "description": (
                            "the keys of the args' document (detection policy, retention, maximum size, "
                            "membership, primary, verdict) that differ from what they replace: each "
                            "{key, old, new}, or {key, added, removed} for a list; 'now': the agreed state "
                            "now (the request waits), 'before': what it replaced (applied); absent when "
                            "there is nothing to compare with")},
                        "moot": {**_STR, "description": (
                            "a request still waiting (pending, approved) whose effect is in force already, "
                            "why, in words (a revocation of a site revoked already, a document equal to the "
                            "one in force, a volume or snapshots no longer in the state): applied, it would "
                            "change nothing; absent otherwise (display only)")},
                        "vetoed_by": _STR}),
    "Requests": _object({"requests": {"type": "array", "items": _ref("Request")}, "site_id": _STR}),
    "Evidence": _object({"volume": _STR, "seq": _INT, "verdict": _STR, "verdict_reason": _STR, "confirmed": _BOOL,
                         "disagreement": _BOOL, "opinions": _OBJ, "marks": _OBJ, "policy": _OBJ},
                        {"here": {"type": ["object", "null"]}, "suspect_before_first": {
                            "type": "array", "items": _INT, "description": (
                                "the snapshots just before here.first_suspect_seq that the cluster calls suspect, "
                                "newest first: the incident began there or earlier")}}),
    "Detection": _object({"volume": _STR, "detection": _OBJ, "effective_here": _OBJ}),
    "DetectionSet": _object({"volume": _STR, "detection": _OBJ, "previous": _OBJ}, {"status": _STR}),
    "RequestState": _object({"request": _STR, "status": {"enum": ["pending", "approved", "applied", "vetoed",
                                                                  "withdrawn", "failed", "expired"]},
                             "approvals": {"type": "array", "items": _STR}, "needed": _INT},
                            {"expires_ns": _INT, "effective_ns": _INT, "result": _OBJ, "action": _STR,
                             "volume": _STR, "site_id": _STR, "next": _STR,
                             "previous": {"type": ["object", "integer"], "description": (
                                 "what the request would change: the policy (retention, detection) or the "
                                 "maximum size in bytes (set_max_size)")},
                             "vetoed_by": _STR, "changes": _OBJ,
                             "existing": {"type": "boolean", "description": (
                                 "true: an identical (action, args) request was pending already (this site's, "
                                 "else another site's: own false); it is answered, nothing new was proposed")},
                             "by": {"type": "string", "description": (
                                 "with existing: the site that made the pending request")},
                             "own": {"type": "boolean", "description": (
                                 "with existing: true when this site made it; false: approve it with "
                                 "replicad approve REQ (this site's approval is not counted yet)")},
                             "reason": {"type": "string", "description": (
                                 "with existing: the pending request's reason (a new reason is not recorded)")},
                             "identical": {"type": "array", "items": _OBJ, "description": (
                                 "with existing: every identical pending request, oldest first ({request, by, "
                                 "approvals, needed, expires_ns, reason}); the answer is this site's own, else the "
                                 "oldest: a copy filed later by another site is listed, never preferred")},
                             "already": {"type": "boolean", "description": (
                                 "true: approve of an applied request, or veto of a vetoed, failed or expired "
                                 "one, answered from this site's current view; nothing was proposed (the "
                                 "contradicting cases are 409 conflict)")},
                             "warning": {"type": "string", "description": (
                                 "a revocation requested or approved while the cluster's rules are 1: the target's "
                                 "own requests can erase it before its cooling-off ends; raise the rules first "
                                 "(replicad raise-rules --leave-behind SITE), then revoke")}}),
    # snapshot exports over NBD (issue 16, site/exports.py)
    "Export": _object({"export_id": _STR, "volume": _STR, "seq": _INT, "epoch": _INT, "root": _STR, "socket": _STR,
                       "uri": _STR, "name": _STR, "size_bytes": _INT, "block_size_bytes": _INT, "writable": _BOOL,
                       "auto_close": _BOOL, "connections": _INT, "bytes_read": _INT, "bytes_written": _INT,
                       "read_errors": _INT}, {"closed": _BOOL, "overlay": _STR, "overlay_blocks": _INT,
                                              "created_at_ns": _INT, "verdict": {"enum": ["clean", "suspect"]},
                                              # the idle limit (ops/exportlimits.py); null: none
                                              "idle_ttl_s": _NNUM, "idle_s": _NNUM}),
    "Exports": _object({"exports": {"type": "array", "items": _ref("Export")}, "site_id": _STR}),
}

_BODIES: dict[str, dict] = {
    "Promote": _object({}, {"to": _NSTR, "force": _BOOL, "snapshot": _NINT, "instant": _BOOL}),
    "Restore": _object({"target": _STR}, {"seq": _NINT, "last_clean": _BOOL, "overwrite": _BOOL, "wait": _BOOL,
                                         "divergent_epoch": _NINT}),
    "Verify": _object({}, {"seq": _NINT}),
    "Drill": _object({"sandbox": _STR}, {"seq": _NINT, "keep": _BOOL}),
    "Prune": _object({"seqs": {"type": "array", "items": _INT, "minItems": 1}},
                     {"reason": {**_STR, "maxLength": 1024, "description": (
                         "why (shown to the operators asked to approve a request)")}}),
    "Verdict": _object({"verdict": {"enum": ["clean", "suspect"]}}, {"reason": _STR}),
    "DetectionPut": _object({"detection": _OBJ}, {"reason": _STR}),
    "RetentionPut": _object({"retention": {"type": "object", "description": (
        "any of keep_all_s, hourly_s, daily_s, lock_s (seconds) or keep_all, hourly, daily, lock "
        "(durations such as \"48h\"); missing keys keep their value")}},
        {"reason": {"type": "string", "description": "why (shown to the operators asked to approve a shortening)"}}),
    "MaxSizePut": _object({"max_size_bytes": {"description": (
        "the new agreed maximum: bytes, or a size such as \"200GiB\"; at least the volume's size, at most 1 PiB")}},
        {"reason": {"type": "string", "description": "why (shown to the operators asked to approve)"}}),
    "MaxSizeSet": _object({"volume": _STR, "max_size_bytes": _INT, "previous": _INT, "status": _STR}),
    "Revoke": _object({}, {"reason": _STR}),
    "Veto": _object({}, {"reason": {**_STR, "maxLength": 1024, "description": (
        "why (the veto command carries none: kept in this site's log and admin audit log)")}}),
    "RulesRaise": _object({}, {"leave_behind": {"type": "array", "items": _STR, "minItems": 1, "description": (
        "the members to leave behind (unrevoked members of the agreed membership, not this site)")},
        "reason": {**_STR, "maxLength": 1024, "description": "why they are left behind (required with leave_behind)"},
        "cancel": {**_BOOL, "description": "withdraw this site's consent instead"}}),
    "RemoveVolume": _object({}, {"reason": {"type": "string", "description": (
        "why (shown to the operators asked to approve)")}}),
    "ExportCreate": _object({"snapshot": _INT}, {"writable": _BOOL, "auto_close": _BOOL,  # issue 16
                                                 "idle_ttl_s": {"type": "number", "exclusiveMinimum": 0, "description": (
                                                     "close after this many seconds without use (at most, and "
                                                     "by default, the site's [admin] export_idle_ttl)")}}),
    "Empty": {"type": "object"},
}

# operation id, method, path, summary, request body schema, {status: schema}, error statuses
_OPS: list[tuple[str, str, str, str, str | None, dict[str, str], tuple[int, ...]]] = [
    ("statusPage", "GET", "/", "The status page: read-only HTML for a browser (role viewer; the token also as "
     "the password of HTTP Basic authentication, any user name; 401 answers carry WWW-Authenticate: Basic)",
     None, {"200": "html"}, ()),
    ("healthz", "GET", "/healthz", "Process is up", None, {"200": "Health"}, ()),
    ("readyz", "GET", "/readyz", "Ready: the store is open, a Raft leader and a quorum are known and this site's "
     "view is current; 503 otherwise (why), e.g. a site cut off in a minority", None,
     {"200": "Ready", "503": "Ready"}, ()),
    ("metrics", "GET", "/metrics", "Prometheus text exposition", None, {"200": "text"}, ()),
    ("openapi", "GET", "/v1/openapi.json", "This document", None, {"200": "OpenAPI"}, ()),
    ("status", "GET", "/v1/status", "Site, Raft view, members, per-volume role, epoch and RPO", None,
     {"200": "Status"}, ()),
    ("volumes", "GET", "/v1/volumes", "The cluster's volumes as Raft records them", None, {"200": "Volumes"}, ()),
    ("snapshots", "GET", "/v1/volumes/{volume}/snapshots",
     "Committed snapshots (verdict, holders, epoch) and this site's divergent branch", None,
     {"200": "Snapshots"}, (404,)),
    ("snapshot", "POST", "/v1/volumes/{volume}/snapshot", "Take, ship and commit a snapshot now (primary only). "
     "200 with committed false: the snapshot was stored at fewer than min_copies sites while this site could commit "
     "(kept local here). 503 no_quorum: this site cannot commit (its Raft view is not current: no leader, no "
     "majority, or the leader's commits not applied here); nothing is taken, or, if the view was lost during the "
     "cycle, the snapshot is kept local here (evidence seq). 409 not_primary: Raft names another primary",
     "Empty", {"200": "CycleReport"}, (400, 404, 409, 502, 503, 507)),
    ("membership", "POST", "/v1/membership",
     "Request to change the cluster's agreed membership (set_members); applies once a majority of the sites "
     "approved it", "Membership", {"202": "RequestState", "200": "RequestState"}, (400, 404, 409, 503)),
    ("readopt", "POST", "/v1/volumes/{volume}/readopt",
     "At the primary: write a snapshot of a previous cluster incarnation held here into the live image, verify "
     "its root (O5), then take, ship and commit it as the next snapshot", "Readopt", {"200": "ReadoptResult"},
     (400, 404, 409, 502, 503)),
    ("verify", "POST", "/v1/volumes/{volume}/verify",
     "Re-read every chunk of a held snapshot (default: the newest); heal corrupt ones from holders", "Verify",
     {"200": "VerifyReport"}, (400, 404, 503)),
    ("drill", "POST", "/v1/volumes/{volume}/drill",
     "Recovery drill: restore into a new image under sandbox, verify its root (O5), delete it unless keep; "
     "runs as an operation", "Drill", {"202": "Operation"}, (400, 404)),
    ("restore", "POST", "/v1/volumes/{volume}/restore",
     "Restore a committed snapshot (default: newest clean this site does not hold back: not marked or judged "
     "suspect here, the passed-over ones in held_here) into target; overwrite needs role admin; "
     "wait=false answers 202 with an operation", "Restore", {"200": "RestoreResult", "202": "Operation"},
     (400, 404, 409, 502, 503, 507)),
    ("operation", "GET", "/v1/operations/{op_id}", "Progress and outcome of a restore or drill", None,
     {"200": "Operation"}, (404,)),
    ("operationCancel", "DELETE", "/v1/operations/{op_id}",
     "Cancel a running restore or drill: 200 with state cancelled once it stopped (202 while it is stopping); a "
     "new target's partial image is removed, an in-place target stays listed as interrupted. An operation that "
     "already ended is answered as it is (200, nothing cancelled)", None, {"200": "Operation", "202": "Operation"},
     (404,)),
    ("promote", "POST", "/v1/volumes/{volume}/promote",
     "Planned switchover (to, at or forwarded to the primary) or forced failover (force, at the site to promote; "
     "snapshot: restore that committed clean snapshot instead of the newest clean one; instant: answer once it "
     "is served as a writable NBD export, the image written behind, issue 16)",
     "Promote", {"200": "PromoteResult"}, (400, 404, 409, 503, 507)),
    ("demote", "POST", "/v1/volumes/{volume}/demote", "Leave the volume without a primary (epoch + 1)", "Empty",
     {"200": "DemoteResult"}, (400, 404, 409, 503)),
    ("retentionGet", "GET", "/v1/volumes/{volume}/retention", "The Raft-agreed retention policy", None,
     {"200": "Retention"}, (404,)),
    ("retentionPut", "PUT", "/v1/volumes/{volume}/retention",
     "Change the retention policy through Raft: any change becomes a request (202) that operators of other "
     "sites approve (longer: no cooling-off; any key shorter: and the cooling-off, O4); every key at most ten "
     "years; the same policy again: 200 with status unchanged",
     "RetentionPut", {"200": "RetentionSet", "202": "RequestState"}, (400, 404, 409, 503)),
    ("maxSizePut", "PUT", "/v1/volumes/{volume}/max-size",
     "Change the volume's agreed maximum size (state.max_size_bytes): a set_max_size request (202) that an "
     "operator of another site approves, applied without cooling-off; the same maximum answers unchanged",
     "MaxSizePut", {"200": "MaxSizeSet", "202": "RequestState"}, (400, 404, 409, 503)),
    ("retentionRun", "POST", "/v1/volumes/{volume}/retention/run", "Apply the retention policy at this site now",
     "Empty", {"200": "RetentionReport"}, (400, 404, 409, 503)),
    ("prune", "POST", "/v1/volumes/{volume}/prune",
     "Prune snapshots now ({\"seqs\": [int]}); refused inside the lock window (O4; the refusal says in how many "
     "seconds it ends), for the newest ones and pinned ones; a snapshot the agreed retention grid keeps becomes "
     "a prune_snapshots request (202) that operators of other sites approve, then the cooling-off",
     "Prune", {"200": "PruneResult", "202": "PruneRequest"}, (400, 404, 409, 503)),
    ("removeVolume", "POST", "/v1/volumes/{volume}/remove",
     "Request to forget a volume from the cluster state (remove_volume, 202): operators of other sites approve "
     "it, then it cools off (vetoable by any site); at the approvals for a volume a revoked site registered. "
     "Refused (409 retention_locked) while any of its snapshots is inside the lock window, its newest is suspect "
     "or its primary is in an instant recovery; each site keeps its own copies (its floor decides)",
     "RemoveVolume", {"202": "RequestState", "200": "RequestState"}, (400, 404, 409, 503)),
    ("verdict", "POST", "/v1/volumes/{volume}/snapshots/{seq}/verdict",
     "Operator verdict on a committed snapshot; suspect is this site's vote (holds its standby at once, "
     "suspect for every site once a second site agrees); clean withdraws this site's own suspect mark, else it "
     "is a person's confirmation, a request (202, confirms true on a clean snapshot) that operators of other "
     "sites approve: it clears a suspect snapshot, and on a clean one the slow windows then measure from it; "
     "on a snapshot confirmed already: 200, changed false, note", "Verdict", {"200": "VerdictResult", "202": "RequestState"},
     (400, 404, 409, 503)),
    ("evidence", "GET", "/v1/volumes/{volume}/snapshots/{seq}/evidence",
     "Detection evidence of a committed snapshot: every site's own verdict (Raft) and this site's judgement "
     "(base, signals, the blocks that turned random with before/after statistics, the first suspicious snapshot "
     "and the one to restore)", None, {"200": "Evidence"}, (400, 404)),
    ("detectionGet", "GET", "/v1/volumes/{volume}/detection",
     "The Raft-agreed detection policy and the one this site applies (its config may only tighten it)", None,
     {"200": "Detection"}, (404,)),
    ("detectionPut", "PUT", "/v1/volumes/{volume}/detection",
     "Change detection thresholds through Raft: a request (202) that operators of other sites approve, "
     "then cools off (vetoable; stricter too); 200 status unchanged when nothing changes", "DetectionPut", {"200": "DetectionSet", "202": "RequestState"},
     (400, 404, 409, 503)),
    ("requests", "GET", "/v1/requests", "Protection-weakening requests: pending, applied, expired", None,
     {"200": "Requests"}, ()),
    ("approve", "POST", "/v1/requests/{request_id}/approve",
     "This site approves a request (a command signed by this site); it applies once enough sites approved. "
     "A request already applied answers 200 already; a vetoed, failed or expired one 409; an id this site's "
     "current view does not hold 404; nothing is proposed for these",
     "Empty", {"200": "RequestState"}, (400, 403, 404, 409, 503)),
    ("revoke", "POST", "/v1/sites/{site_id}/revoke",
     "Request to revoke a site's identity: once a majority of the sites approved, it applies when the membership "
     "cooling-off ends (at once if every other member approved); from then on every command signed by its keys is "
     "refused. Under the cluster's rules 1 the answer carries a warning (the target can erase it). A site "
     "cannot ask for its own revocation, nor for one of a site already revoked (409); a revocation another "
     "site asked for already answers that request (existing, own false)", "Revoke", {"202": "RequestState",
                                                                            "200": "RequestState"},
     (400, 404, 409, 503)),
    ("veto", "POST", "/v1/requests/{request_id}/veto",
     "This site stops a request (pending, or approved and cooling off) before it takes effect; its own request "
     "is withdrawn (status withdrawn: the record goes, no veto is counted). A request already vetoed, failed "
     "or expired answers 200 already; an applied one 409; nothing is proposed for either",
     "Veto", {"200": "RequestState"}, (400, 403, 404, 409, 503)),
    ("members", "GET", "/v1/members", "Sites of the Raft group and their reachability", None,
     {"200": "Members"}, ()),
    ("membersAdd", "POST", "/v1/members",
     "Not supported: edit every site's config and restart one site at a time", "Empty", {}, (501,)),
    ("membersRemove", "DELETE", "/v1/members/{site_id}",
     "Not supported: edit every site's config and restart one site at a time", None, {}, (501,)),
    ("exportCreate", "POST", "/v1/volumes/{volume}/exports",
     "Serve a committed snapshot as a block device over NBD on a unix socket of this site (nbd+unix:///?socket="
     "PATH); missing chunks are fetched from holders first; reads verify every chunk (EIO, never wrong data); "
     "writable: writes go to a copy-on-write overlay, never the store; auto_close: closed after its last NBD "
     "connection. Pinned against prune and GC while open, closed once idle for idle_ttl_s", "ExportCreate", {"200": "Export"},
     (400, 404, 409, 502, 503)),
    ("exports", "GET", "/v1/exports", "The snapshot exports open at this site", None, {"200": "Exports"}, ()),
    ("exportDelete", "DELETE", "/v1/exports/{export_id}", "Close an export: its socket, overlay and pin go",
     None, {"200": "Export"}, (404,)),
    ("rulesRaise", "POST", "/v1/rules/raise",
     "This site's operator consents to raise the cluster's rules leaving the named members behind (each still on "
     "an older release, or withholding its release report); the consent is signed into this site's release "
     "report for 24 h; once a majority of the members reported and a majority of the operators consented, the "
     "sites raise. cancel: withdraw it", "RulesRaise", {"200": "RulesConsent"}, (400, 409)),
    ("audit", "GET", "/v1/audit", "The newest kept Raft audit records (limit, default 200); signer: only that "
     "site's share (rules 4: the records whose signature was checked as that site's; empty: the unattributed "
     "claims)", None, {"200": "RaftAudit"}, (400,)),
    ("adminAudit", "GET", "/v1/audit/admin", "This site's admin audit log (newest records) and its chain check",
     None, {"200": "AdminAudit"}, (400,)),
]

_PARAMS = {
    "volume": {"name": "volume", "in": "path", "required": True, "schema": _STR, "description": "volume name"},
    "op_id": {"name": "op_id", "in": "path", "required": True, "schema": _STR, "description": "operation id"},
    "site_id": {"name": "site_id", "in": "path", "required": True, "schema": _STR, "description": "site id"},
    "seq": {"name": "seq", "in": "path", "required": True, "schema": _INT, "description": "snapshot number"},
    "export_id": {"name": "export_id", "in": "path", "required": True, "schema": _STR, "description": "export id"},
    "request_id": {"name": "request_id", "in": "path", "required": True, "schema": _STR,
                   "description": "request id (r1, r2 ...)"},
}

_STATUS_TEXT = {400: "bad request", 401: "no or unknown bearer token", 403: "role too low", 404: "not found",
                409: "conflict (state machine refusal, stale epoch, not primary, retention lock)",
                500: "internal error", 501: "not supported", 502: "integrity error", 503: "unavailable (no quorum, "
                "peer down)", 507: "a file system is full: the data dir's (store_full) or a restore target's "
                "(target_full)"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def build_document() -> dict:
    """The OpenAPI 3.1 document of the admin API (a fresh dict each call)."""
    paths: dict[str, dict] = {}
    for op_id, method, path, summary, body, answers, errors in _OPS:
        role = auth.ROUTE_ROLES[(method, path)]
        op: dict[str, Any] = {"operationId": op_id, "summary": summary, "x-required-role": role, "responses": {}}
        params = [copy.deepcopy(_PARAMS[name]) for name in _PARAMS if "{" + name + "}" in path]
        if op_id == "adminAudit":
            params.append({"name": "limit", "in": "query", "required": False,
                           "schema": {"type": "integer", "minimum": 1, "maximum": 10000}})
        if op_id == "audit":  # the kept Raft audit: one share (state.audit_share), the newest limit
            params += [{"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 2000}},
                       {"name": "signer", "in": "query", "required": False, "schema": _STR}]
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {"required": body not in ("Empty",), "content": _json(_ref(body))}
        for status, schema in answers.items():
            if schema == "text":
                op["responses"][status] = {"description": "ok", "content": {"text/plain": {"schema": _STR}}}
            elif schema == "html":  # the status page (issue 16)
                op["responses"][status] = {"description": "ok", "content": {"text/html": {"schema": _STR}}}
            else:
                op["responses"][status] = {"description": "ok" if status < "300" else "see schema",
                                           "content": _json(_ref(schema))}
        codes = set(errors) | {500}
        if role == auth.OPEN:
            op["security"] = []
        else:
            codes |= {401, 403}
        if (method, path) in auth.BASIC_ROUTES:  # the status page: a browser's Basic login too
            op["security"] = [{"bearer": []}, {"basic": []}]
        for code in sorted(codes):
            op["responses"][str(code)] = {"description": _STATUS_TEXT[code], "content": _json(_ref("Error"))}
        paths.setdefault(path, {})[method.lower()] = op
    schemas = copy.deepcopy(SCHEMAS)
    schemas.update({f"{name}Request": copy.deepcopy(s) for name, s in _BODIES.items()})
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "replicad admin API", "version": API_VERSION, "description": (
            "Admin API of one replicad site. Bearer tokens with roles viewer < operator < admin "
            "(x-required-role on each operation); without configured tokens the API is open and listens on "
            "loopback only. Errors are {error, message, evidence}; error codes map to CLI exit codes.")},
        "servers": [{"url": "http://127.0.0.1:7301"}],
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a token of [[admin.tokens]]"},
                                           "basic": {"type": "http", "scheme": "basic", "description": (
                                               "the status page only: any user name, a token of "
                                               "[[admin.tokens]] as the password")}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
    _point_bodies(doc)
    return doc


def _point_bodies(doc: dict) -> None:
    """Request bodies reference ``<Name>Request`` schemas (kept apart from answers)."""
    for item in doc["paths"].values():
        for op in item.values():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                name = content["schema"]["$ref"].rsplit("/", 1)[1]
                content["schema"] = _ref(f"{name}Request")
