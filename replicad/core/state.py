"""The replicated cluster state machine: ``apply(state, command) -> (state, result)``.

Pure code: no I/O, no clock, no randomness, and :func:`apply` never raises. Every Raft
node applies the same committed commands in the same order to the same state, so every
decision here must depend on the state and the command only. An exception escaping a
replicated method wedges every pysyncobj node, hence the last-resort guard in
:func:`apply` that turns any bug into an ``internal`` refusal.

State shape (plain msgpack-able data: dict/list/str/int/bytes/bool/None only)::

    {"v": 1,
     "sites": {site_id: {"peer_url": str, "kind": "data" | "witness"}},
     "volumes": {name: {"primary": site_id | None, "epoch": int, "block_size": int,
                        "size_bytes": int, "min_copies": int,
                        "max_size_bytes": int,                              # agreed bound, max_size_bytes()
                        "retention": {"keep_all_s", "hourly_s", "daily_s", "lock_s": int},
                        "snapshots": {seq: {"root": bytes(32), "epoch": int,
                                            "parent_seq": int | None, "created_at_ns": int,
                                            "holders": [site_id, ...],
                                            "verdict": "clean" | "suspect",
                                            "verdict_reason": str, "stats": dict,
                                            "opinions": {site_id: {...}},   # site_verdict (issue 14)
                                            "confirmed": bool,              # cleared by approved request
                                            "committed_ns": int}},          # quorum_now_ns at commit
                        "detection": {...},                                 # set_detection, optional
                        "epoch_changes_ns": {site_id: int},                 # _check_epoch_rate, optional
                        "restore_pin": {"epoch", "seq"},                    # RESTORE_PIN, optional
                        "instant": {"epoch", "site", "seq", "since_ns"},    # INSTANT, optional
                        "max_size_base": {"bytes", "at_ns"},                # MAX_SIZE_BASE, optional
                        "last_seq": int,
                        "registered_by": site_id}},                         # add_volume's signer
     "audit": [{"op", "by", "volume", "ok", "error", "at_ns"}, ...],   # last AUDIT_MAX; rules >= 4: also
                                                                       # "signer", "n"; shares (audit_trim)
     "audit_dropped": {share: [count, newest n]},                      # rules >= 4: AUDIT_DROPPED
     "audit_uncounted": int,                                           # rules >= 4: AUDIT_UNCOUNTED
     "applied_ops": {op_id: result},                                   # last APPLIED_OPS_MAX; rules >= 3:
                                                                       # {applied_key(by, op_id): result};
                                                                       # rules >= 4: shares (applied_trim)
     "clocks": {site_id: now_ns},                                      # registered sites only
     "seen": {site_id: {"ops": {op_id: now_ns}, "floor_ns": int}},     # replay memory, see below
     "requests": {req_id: {...}}, "request_seq": int,                  # see list_requests
     "revoked": {site_id: {"keys": [bytes(32)], "at_ns": int, "by": site_id}},  # revoke_site
     "applied": int,                                                   # commands applied (counted by the Raft node)
     "vouches": {site_id: [[n, bytes(32)], ...]},                      # vouch: last VOUCHES_PER_SITE
     "vetoes": {site_id: int},                                         # vetoes applied per vetoing site
     "removed_volumes": {volume: {"epoch", "last_seq", "registered_by", "removed_ns"}},  # remove_volume
     "rules": int,                                                     # rules version, absent = 1 (RULES)
     "limits": {"members": [site_id, ...] | None, "max_sites": int,   # optional, until found adopts a list
                "keys": {site_id: [str, ...]} | None},                   # optional: FOUNDING_KEYS
     "incarnation": {"id": bytes(16), "members": [member, ...], "by": site_id, "at_ns": int,
                     "founders": [site_id, ...]},                      # found, once adopted
     "founding": {site_id: {"members": [member, ...], "incarnation": bytes(16), "at_ns": int}}}
                                                                       # found proposals, until adopted

Bounds (the state is replicated to and kept by every site; a member holding the Raft
password must not be able to grow it without limit): ``audit`` keeps the last
:data:`AUDIT_MAX` records (rules 4 and later: at most :data:`AUDIT_KEPT_MAX`, cut by signing site:
:func:`audit_trim`), ``applied_ops`` the last :data:`APPLIED_OPS_MAX` results (rules 4 and later:
at most :data:`APPLIED_KEPT_MAX`, cut by signing site: :func:`applied_trim`); at most
``max_sites`` (default :data:`SITES_MAX`) sites and, when ``members`` is set, only those
site ids (the configured ``[[sites]]``, given to :func:`initial_state` by the Raft node);
at most :data:`VOLUMES_MAX` volumes, :data:`VOLUMES_PER_SITE_MAX` of them registered by one
site (volumes registered by a revoked site do not count against :data:`VOLUMES_MAX`, up to
:data:`VOLUMES_HARD_MAX`), :data:`SNAPSHOTS_MAX` snapshot records per volume (each with at most
:data:`STATS_MAX_KEYS` stats of at most :data:`STATS_MAX_CHARS` characters and
:data:`STATS_BYTES_PER_RECORD` bytes, :func:`stats_bytes`), and ``clocks`` only for registered
sites. Every bound on snapshot records is the volume's own: no site's records count against
another volume, so neither a site's junk volumes nor another volume's history ever refuse the
commit of a volume (review R10, F2: a budget per registering site let a site fill it with junk
and stop the honest primary of a volume it had registered). What one site adds is
:data:`SITE_RECORDS_BOUND` (:data:`VOLUMES_PER_SITE_MAX` x :data:`SNAPSHOTS_MAX` = 1,280,000
records of at most :data:`STATS_BYTES_PER_RECORD` bytes of stats and ~200 bytes besides plus
its holders' ids: about 0.8 GB of state in a three-site cluster at most as msgpack bytes, ~3.8 GB
of RSS in memory at 3.0 KB a record, review R13 F2); the default settings
(a cycle every 10 s, :data:`DEFAULT_RETENTION`) keep ~8,850 records per volume at steady state
(tests/unit/core/test_state_share_records.py), under :data:`SNAPSHOTS_MAX`. A snapshot needs
``min_copies`` holders (:func:`copies_needed`). A command that would pass a bound is refused
with ``conflict`` (and audited). Names, site ids, request ids and reasons
are printable text (:func:`_str`: no control or other non-printable character, ``bad_request``):
they are written into every site's log.

``apply`` never mutates its input: it returns a new top-level dict that shares every
unchanged sub-structure with the old one (copy on write along the changed path). Callers
must treat states as immutable values.

Command: ``{"v": 1, "op": str, "op_id": str, "by": site_id, "now_ns": int, "cluster": str,
"sig": bytes(64), ...args}``. Unknown keys, wrong types, missing keys or another version give
``bad_request``.

Identity (when :func:`apply` is given a :class:`~replicad.core.identity.Trust`, as every Raft
node does): ``sig`` must be the Ed25519 signature, by a key pinned for the site named in
``by``, of the command's canonical encoding (:func:`replicad.core.identity.canonical_bytes`),
and ``cluster`` the trusted cluster id; else ``bad_signature``. Then, per signing site, a
replay memory (``seen``: the op ids of its last :data:`SEEN_PER_SITE_MAX` applied or refused
commands, and ``floor_ns``, the newest stamp it forgot) refuses an op id seen again or a
stamp at or below the floor (``replayed``); a command stamped more than
``trust.replay_window_ns`` before :func:`quorum_now_ns` is ``expired``. These three refusals
are audited but neither remembered as results nor in the replay memory (a forged command
cannot take an honest command's op id). An op id already in ``applied_ops`` is answered with
its stored result before the replay checks (exactly-once retries); under rules 3 and later the
memory is keyed by the signing site and the op id (:func:`applied_key`), so one site's command
never answers for another site's, and only a command whose signature was checked enters it or the
replay memory (a command refused for its envelope names a site nobody verified).

Result: ``{"ok": True, ...}`` or ``{"ok": False, "error": code, "message": str,
"evidence": dict}`` where ``code`` is the ``code`` of a class of :mod:`replicad.core.errors`
(``bad_request``, ``not_found``, ``conflict``, ``stale_epoch``, ``not_primary``,
``retention_locked``, ``approval_required``, ``snapshot_suspect``, ``internal``); ``errors.from_dict(result)``
rebuilds the error.

Rules shared by all ops:

* Everything is validated before anything changes: a refused command leaves the
  cluster data (sites, volumes) exactly as it was.
* Every command, accepted or refused, appends one audit record (but an accepted ``clock`` and an
  answer from the exactly-once memory). Under rules 1..3 the list keeps the last :data:`AUDIT_MAX`
  of every command: one site's flood of cheap signed commands (refused or harmless) pushed every
  other site's records out within seconds (attack review R15, F2). Under
  :data:`RULES_AUDIT_BY_SIGNER` and later each record is attributed to the site whose signature and
  freshness were checked (``signer``; None for a forged, replayed, stale, revoked or malformed claim:
  :func:`audit_signer`) and carries its command's count (``n``); past :data:`AUDIT_KEPT_MAX` the list
  is cut by shares (:func:`audit_trim`: each signer's records one share, the unattributed ones one
  more; the largest shares cut to one level, routine and refused records before notable ones), so
  a flood pushes out only its own share's records; :data:`AUDIT_DROPPED` counts what each share lost.
* Exactly-once: a command whose ``op_id`` is already in ``applied_ops`` returns the stored
  result and changes nothing (not even the audit). Refusals are stored too, so a retried
  command always gets the answer of its first application. Under rules 3 and later the key is
  ``(by, op_id)`` (:func:`applied_key`): under rules 1 and 2 a Raft leader that appended a
  command of its own, signed by itself, with the op id of another site's forwarded command just
  before it had that command answered with its own stored result and never applied (attacker
  review r13, F5: revocations, vetoes and verdicts cancelled unseen).

Rules version (:data:`RULES`, :func:`rules`): each site rebuilds its state at start from its own
last checkpoint plus the log entries after it, applied by the code it runs now, and the sites'
checkpoints are at different indexes; a command that two releases decide differently would leave
the sites with different states (``checkpoint divergent``). So the rules that decide a command are
the state's, not the code's: a state without :data:`RULES` is decided under rules 1, every rule as
release b976d0a decided it, results and state contents alike (:mod:`replicad.core.state_rules1`,
that release's state machine frozen: the digest of any log applied under rules 1 is b976d0a's);
rules 2, 3 and 4 are this module's (rules 3 differ from 2 only where ``rules >= 3`` is tested:
:data:`RULES_SIGNER_KEYED`; rules 4 from 3 only where :data:`RULES_AUDIT_BY_SIGNER` is tested).
What rules 2 change: a requester's veto of its own request is a
withdrawal; an approved ``set_max_size`` past :func:`max_size_at_once` cools off (results carry
``at_once``, the volume :data:`MAX_SIZE_BASE`); finished requests are bounded per requester
(:func:`_bounded_requests`) instead of 64 in all oldest first; one site registers at most
:data:`VOLUMES_PER_SITE_MAX` volumes; a commit's stats are checked (:func:`stats_problem`,
:data:`STATS_BYTES_PER_RECORD`); names, reasons and stats text are printable (:func:`printable`)
and evidence escapes what is not; an instant recovery turns other sites' forced role changes into
requests (:func:`_check_instant`); ``remove_volume`` exists (under rules 1 it is an unknown op, as
b976d0a refused it). What rules 3 change: the exactly-once memory (``applied_ops``) is keyed by
the signing site and the op id (:func:`applied_key`); the raise (or a founding) to rules 3 keys
the answers kept from before by the one site whose replay memory holds their op id, and drops
the others (:func:`applied_by_signer`). What rules 4 change: the audit is kept per signing site
(:func:`_with_audit`, :func:`audit_trim`); the raise (or a founding) to rules 4 attributes the
records kept from before (:func:`audit_by_signer`: an accepted one to its site, a refused one to
nobody; their commands' counts are not known, :data:`AUDIT_UNCOUNTED` bounds them), and so is the
exactly-once memory (:func:`_with_applied`, :func:`applied_trim`: one site's flood of remembered
commands no longer pushes another site's stored answers out, attack review R16, R-a); its keys
carry the signing site since rules 3 (:func:`applied_key`), so the raise (or a founding) to rules 4
converts nothing there. Only the
``rules`` command (``to``, ``reports``, :func:`_op_rules`) changes
the version: by a registered site, only upward, at most :data:`RULES_MAX` (the highest this code
applies), in a founded cluster with a majority clock, and only with signed release reports
(:func:`rules_reports_problems`: ``[rules_max, at_ns, sig]``, "I run a release applying rules
1..rules_max", within :data:`RULES_REPORT_TTL_NS` of the majority clock, signed under the keys
the state records for the member) of every unrevoked member of the agreed membership, or of a
majority of them with the consent of a majority of the members' operators to leave the others
behind (:func:`rules_consents`: ``[rules_max, at_ns, sig, leave_behind]``, the consent signed
inside the report); refused otherwise. Under rules 1 only a raise accepted by this module is decided
here: every other ``rules`` command (refused, or naming the version the state has) is decided by
:mod:`replicad.core.state_rules1`, an unknown op as b976d0a answered it, so a ``rules`` command
that fails (a hostile site's, or an honest one racing a report) leaves a site still on b976d0a
and an upgraded one with the same state. Under rules 2 likewise only a raise accepted by this
module (to 3) is this module's: every other ``rules`` command is decided as releases 84f7f0f and
74f9f08 (whose :data:`RULES_MAX` was 2) decided it, with the bound frozen at :data:`RULES2_MAX`
(``rules 3`` ``out_of_range`` "1..2", whatever its reports), and a ``found`` carrying ``rules``
that founds nothing as release 84f7f0f decided it (``bad_request`` for the unknown key), but in
a state founded under rules by this code (:data:`FOUNDED_RULES`: a lab cluster founded under
rules 2, whose honest members' founds carry rules 2; no 84f7f0f site ever joins it) as 74f9f08
decided it (past 2 ``out_of_range`` "1..2"); so one registered site (a hostile one too) cannot
part sites of the previous release from upgraded ones during a rolling upgrade under rules 2.
Under rules 3 likewise only a raise accepted by this module (to 4) is this module's: every other
``rules`` command, and a ``found`` carrying ``rules`` in a founded state, is decided as release
64af970 (whose :data:`RULES_MAX` was 3) decided it, with the bound frozen at :data:`RULES3_MAX`
(:data:`_OPS_RULES3`). Under rules 4 and later it is decided by this module
(the version the state has is answered ``changed`` false), so a log with it replays alike at
every site that runs this code, and every entry before the raise stays decided under the rules
it was first decided by.

Every Raft log starts under rules 1, a new cluster's too: a node that joins a cluster or whose log
was rebuilt replays the log from its first entry (when the leader has not compacted it), and only
what the log itself carries can tell it the rules of those entries; a start under this release's
rules pinned in a local file (tried) parted every joining and every rebuilt node from the others.
So the founding carries them: this release's daemons propose ``found`` with ``rules`` (their
:data:`RULES_MAX`), and the first such ``found`` this code accepts in a state never founded (no
``incarnation``) founds it under those rules (:func:`founding_rules`): it is applied to
:func:`founding_start`, the initial state under them keeping only the state's limits and records
(:data:`FOUNDING_KEPT`), so what any member had applied before it under rules 1 (a hostile member's
registrations in the seconds before the founding: 256 volumes in an attacker review) is dropped,
and the result says so (``rules``, ``previous``, ``dropped``: counts of sites, volumes and found
proposals). A ``found`` carrying rules that this code refuses, or that names rules outside
``rules(state) + 1 .. RULES_MAX`` or comes after the founding, is decided by the state's rules as
any command (under rules 1, b976d0a's refusal of a key it does not know). Release b976d0a refuses
every such ``found``: a b976d0a site in a cluster founded so never sees it founded (its own found
proposals never make a majority), so it never joins and never acts, instead of acting on a state
decided under other rules; a cluster founded by b976d0a and upgraded is never refounded.

Rolling upgrades: the daemons propose a raise by themselves only once every unrevoked member
said, under its own key, that it runs a release applying the new rules; a member still on
b976d0a has no such report (its peer API does not serve one), so the raise waits for it, and the
sites decide every command alike meanwhile (rules 1: this code decides as b976d0a). The daemon
collects the reports over the peer API (``GET /v1/peer/release``,
:mod:`replicad.site.rules_raise`). A member that cannot be upgraded soon, or is suspected
hostile and withholds its report, is left behind only by a majority of the operators: each runs
``replicad raise-rules --leave-behind SITE`` at their own site, whose report then carries the
consent, signed; the state machine accepts the raise with a majority's reports and a majority's
consents covering every member without a report. One hostile member withholding its report
cannot keep the cluster under rules 1 (whose request table it can flood until an approved
revocation of itself is forgotten): a majority of operators leaves it behind. One hostile member
cannot hasten a raise past an honest member still on the previous release (with its own lying
report and one honest site's served report it has a majority of reports, but one consent: an
honest report carries none unless its operator gave it). A member left behind on the previous
release parts from the others until it is upgraded and its Raft state rebuilt; a member that
lies "2" while it runs b976d0a parts only its own state. A site whose state is at a rules version
above its own :data:`RULES_MAX` (it runs an older release than the cluster's rules, and received
the state whole) cannot decide like the others and stops at start.

Authority rules (threat model: root on one site speaks with that site's identity):

* ``commit_snapshot`` only by the primary at the current epoch (fencing, O3); only with
  ``len(holders) >= min_copies`` (O2); every holder but the proposer must have signed its
  "stored" acknowledgement (``acks: {site_id: bytes(64)}``, checked against its pinned keys:
  else ``bad_ack``); each acknowledgement covers the commit's ``size_bytes`` (and the block
  count it gives at the volume's block size): a commit whose size differs from what its holders
  stored is ``bad_ack`` too. Seq at most ``last_seq +`` :data:`SEQ_STEP_MAX` and size at most
  the volume's agreed maximum (:func:`max_size_bytes`, never above :data:`SIZE_BYTES_MAX`; else
  ``out_of_range``, evidence ``refusal`` ``max_size``).
* Agreed maximum size: ``add_volume`` records ``max_size_bytes``, at most
  :func:`default_max_size_bytes` of its size (a larger one is ``approval_required``; the
  default when absent). A volume recorded without one (registered by an older release) has the
  default of its ``size_bytes`` (:func:`max_size_bytes`), written into the volume by its next
  commit, so commits never ratchet it up; one registered with size 0 (not known) and no
  commit yet takes the default of its first commit's size. ``set_max_size`` (``volume``, ``max_size_bytes``,
  at least the volume's ``size_bytes``) runs only as the action of an approved request: a smaller
  maximum, or a larger one up to :func:`max_size_at_once` (twice the maximum, at most once per
  :data:`MAX_SIZE_WINDOW_NS`), without cooling-off and not vetoable (a grown volume replicates
  nothing until it applies); a larger one after the cooling-off, vetoable, unless every unrevoked
  member approved it (one site and one stolen admin token of another lifted every replica's chunk
  quota at once).
* ``add_holder`` only by the holder itself (a site cannot name another as holding a copy).
* ``register_site`` only by the site it registers (``not_self``, counted like the identity
  refusals: a site that names another a witness or moves its peer address speaks for it), and,
  once a membership is agreed, only as a member and with the ``kind`` the agreed membership
  records for it (``conflict``; ``set_members`` changes a kind). The agreed membership decides a
  member's kind (:func:`site_kind`): ``set_members`` and the adoption of a ``found`` rewrite
  the kinds of the registered members, so ``sites`` never says otherwise.
* ``promote`` is a compare-and-set on the epoch. Planned (``force`` false): asked by the
  current primary. Forced: asked by any registered data site for itself (``to`` = ``by``:
  never another site, whose live image a named ``snapshot`` would roll back); the Raft majority that
  commits the command is what prevents a minority from promoting. A forced one may name the
  ``snapshot`` to restore (committed, held, clean: else ``not_found`` / ``snapshot_suspect``);
  the volume then records it as :data:`RESTORE_PIN` for the new epoch, and pruning keeps it.
  With ``instant`` (force and ``snapshot`` required, else ``bad_request``) the new primary serves
  that snapshot at once through an overlay while it restores: the volume records
  :data:`INSTANT` until the primary's first commit at that epoch.
* ``demote``: by the current primary, or by any data site with ``force`` (not of a volume
  without a primary: ``conflict``, it would only move the epoch).
* Instant-recovery rule (:func:`_check_instant`): while the primary is in an instant recovery
  (:func:`instant_recovery`), a forced ``promote`` or ``demote`` by any other site is
  ``approval_required`` (evidence ``refusal`` ``instant_recovery``, counted) unless it runs as an
  approved role-change request (no cooling-off, no veto): the overlay at the primary holds the
  only copy of the application's writes, and another primary in between sets it aside.
* Epoch-change rule (:func:`_check_epoch_rate`): each site has one disruptive change
  (any forced promotion or demotion, whether the primary is live or silent) per volume per
  :data:`EPOCH_WINDOW_NS` by the majority clock; a second is ``approval_required`` (evidence
  ``refusal`` ``epoch_rate``) unless it runs as an approved ``request`` (action ``promote`` or
  ``demote``, no cooling-off, at most a majority of the voters' approvals:
  :func:`_needed`). A planned switchover or demotion by the primary is free. A role-change
  request cannot be vetoed (``conflict``, evidence ``refusal`` ``not_vetoable``, counted):
  it has no cooling-off to stop, only approvals.
* ``add_volume`` only by the volume's ``primary`` (``not_self``, counted: a site registering a
  name nobody registered yet with another site as primary made that site a standby of its own
  live volume), with ``min_copies`` at most :data:`SITES_MAX` and a retention no longer than
  :data:`DEFAULT_RETENTION` (``approval_required``: the registering daemon requests a longer
  one). An existing name is answered ``created`` false (another ``block_size``: ``conflict``);
  every daemon compares a registered volume with its own config (``registered_by``).
* Retention: every duration at most :data:`RETENTION_MAX_S` (``bad_request``). ``set_retention``
  runs only as the action of an approved request: a shorter key (:func:`retention_weakened`)
  after approvals and the cooling-off, a longer one once approved (no cooling-off).
* Approvals (O4): a ``set_retention`` (any change, see above), and a
  ``mark_verdict`` that turns a ``suspect`` snapshot back to ``clean``, are refused
  (``approval_required``) unless they run as the action of a request: op ``request``
  (``action``, ``args``, ``reason``) records it (checked at once against the current state;
  at most :data:`REQUESTS_PENDING_PER_SITE` pending per site; :func:`_bounded_requests` keeps
  every pending and approved record and forgets finished ones per requester),
  op ``approve`` (``request``) adds the signing site; when :func:`approvals_needed` sites
  (the requester counted) agreed, the action runs as the requester. A request expires
  ``trust.request_ttl_ns`` after it was made, by the majority clock. ``approved_by`` (the
  old free-text claim) is refused with ``bad_request``. No ``request`` and no ``approve``
  before an incarnation is adopted (``conflict``: who counts as a majority is undecided, and
  the one site registered first would have been every approver); the number needed comes from
  the agreed membership, and each approval re-checks it against the membership then (the larger
  of that and the request's ``needed`` counts).
* Keys (determinism): every signature (commands, holder acknowledgements, vouches) is checked
  against :func:`signing_keys`: once an incarnation is adopted, the keys the state's agreed
  membership records (as changed by applied ``set_members``; revoked keys stay refused), never
  the applying site's config, so replaying the log after any ``[[sites]]`` change (a rotated
  key, a witness added or removed) gives the same state and the same checkpoint digests. A
  ``found`` must verify under the key its own list gives its proposer AND, before any
  incarnation, under a key the founding reference pins for its proposer (:func:`founding_keys`:
  the ``[[sites]]`` keys of the applying site's config when its Raft log started, kept in
  ``limits``; attacker review r14, A1: a site signing a ``found`` in another site's name with a
  key of its own, listed for that site, founded the cluster with that key). Before any
  incarnation the other commands are checked against ``trust.keys`` (the local config): in a
  cluster of daemons that window holds only ``found`` commands. The configured ``limits``
  (set by the Raft node from its config) are dropped when a list is adopted; registration is
  bounded by the agreed membership from then on. ``trust`` still gives the cluster id and the
  policy (``[policy]``, identical in every config; changing it is not a membership change).
* Revocation: ``revoke_site`` (``site_id``, ``keys``: the proposer's pinned keys of the site,
  in the signed request) runs only as a request (see "Revocation and membership" below); it
  records exactly those keys in ``revoked`` (never what the applying site's config pins);
  commands signed by them are refused (``revoked``) from then on. The site being revoked may
  neither approve nor veto that request (``conflict``); its vetoes of other requests stay
  allowed. A revoked site (:func:`is_revoked`) cannot be promoted (``conflict``) until,
  rebuilt with a new key, it registers again.
* Revocation and membership (``revoke_site``, ``set_members``: :data:`MAJORITY_ACTIONS`;
  threat model: one compromised site plus one stolen admin token of another site, which is
  a majority of three). Such a request needs the approvals of a majority of the registered
  sites (:func:`_needed`), and, for ``set_members``, the approval of every unrevoked member
  whose entry (``raft`` address, ``kind``, ``keys``) it changes (:func:`membership_change`,
  ``must_approve``; without it the request stays ``pending``: a member's address or keys
  never change without that member's signed consent). It then applies at once only when
  every unrevoked member of the agreed membership (the registered sites before any
  ``found``) approved it; otherwise it cools off for ``trust.membership_cooling_off_ns``
  (status ``approved``, vetoable by any registered site but the one a revocation targets),
  and a later approval that completes the unanimity applies it at once. So removing,
  changing or revoking an unrevoked member needs its own approval or a cooling-off that
  nobody vetoed; with ``trust`` None there is no cooling-off (unit tests of the ops).
* Clearing a suspect snapshot also clears the later ones suspect only as its descendants
  (:func:`tainted_only`).
* ``prune_snapshots`` (O4) refuses anything inside the lock window, the newest committed
  and the newest clean snapshot, and everything while the newest committed snapshot of
  the volume is suspect (incident in progress: pruning frozen, DESIGN §7). One site's
  suspect opinion the cluster did not follow pins, for the volume's ``keep_all_s`` after it
  was recorded, the snapshot it names and the clean one it points back to
  (:func:`suspect_pins`). Ages are measured with the proposer's ``now_ns`` (never later
  than the majority's clock); each site still enforces the lock on its own store with its
  own clock.
* ``remove_holder`` only by the holder itself (a site cannot make the catalog forget
  another site's copy).
* ``found`` (``incarnation``: 16 random bytes, ``members``): a site's proposal of the
  cluster's **incarnation** (an identity no other Raft history shares: a cluster whose every
  site lost its Raft state starts a new one, and the sites' local records of the old one
  cannot collide with the new) and **agreed membership**: ``[{"site_id", "raft", "kind",
  "keys": [str]}]`` sorted by site id (every site's ``[[sites]]``). Each site's latest
  proposal is kept in ``founding``; the list is **adopted** (``incarnation`` set, ``founding``
  dropped) when the sites proposing that identical list are a majority of the sites it names
  AND of the configured sites (``limits.members``; else the sites ``trust`` pins), so one site
  cannot fix the membership by proposing first, and an honest majority with identical
  configs always founds the cluster whatever another site proposes. The incarnation id is
  the BLAKE2b-128 of the agreeing proposals' random ids (in site order): no single proposer
  chooses it. Until then a ``found`` answers ``adopted`` False with ``agreeing`` (the sites
  proposing this list) and ``needed``; every site keeps proposing its config's list. Once
  adopted, a ``found`` changes nothing and answers the recorded ``incarnation`` and
  ``members`` (``created`` False). Only by a site the members list names and, when known,
  a configured one (``conflict``); before the founding, by a site the founding reference pins
  keys for, only signed with one of them (``bad_signature``, evidence ``refusal``
  :data:`FOUND_UNPINNED`, whatever rules decide the state: :func:`apply`). With ``rules`` (an int, at most :data:`RULES_MAX`:
  ``out_of_range``) the first one of a never-founded state founds it under those rules ("Rules
  version" above); afterwards it is a plain ``found``.
* ``set_members`` (``members``): replaces the agreed membership (not the incarnation); only
  as a request (see "Revocation and membership"; README: adding or removing a site).
* ``site_verdict`` (``volume``, ``seq``, ``verdict``, ``score_ppm``, ``cumulative_ppm``,
  ``first_seq``, ``reason``; issue 14): the signing data site's own verdict on a committed
  snapshot, judged from the bytes it stores (:mod:`replicad.core.anomaly`, relative signals).
  Recorded once per site under ``opinions`` with ``recorded_ns``, the majority's clock (the
  same verdict again is answered ``changed`` false; another one is ``conflict``: a site cannot
  take back what it said). ``suspect`` opinions of :func:`suspect_quorum` data sites
  (:data:`SUSPECT_SITES_MIN`, 2, or every data site when fewer; or, with persons' marks among
  them, the words of :func:`mark_quorum` sites: :func:`turns_suspect`) make the snapshot
  ``suspect`` (reason :data:`SITE_SUSPECT_PREFIX` and the sites) unless a person confirmed it
  clean (an approved ``mark_verdict clean`` sets ``confirmed``); the result names
  ``suspect_sites``, ``needed``, ``opinion_sites`` and ``needed_with_marks``. One site's suspect
  opinion holds that site's own standby (the daemon applies only what its own opinion calls
  clean) and pins pruning for a while (:func:`suspect_pins`), nothing else: a site compromised
  or strictly configured cannot hold every standby. The primary's
  commit verdict (its whole-volume screen) can only make it suspect and is no opinion
  (:func:`disagreement` compares opinions only). A ``clean`` opinion never clears anything.
* ``mark_verdict`` ``suspect`` (a person's verdict, in the signing site's name): that data
  site's suspect vote (a witness: ``conflict``), kept under :data:`MARKS`. It counts with the
  opinions, one site once (:func:`suspect_voters`), holds that site's own standby and takeover
  for the snapshot and its descendants (:func:`held_by_marks`), pins like a lone opinion, and
  changes neither the cluster's verdict nor ``confirmed`` until the words of :func:`mark_quorum`
  sites (:data:`MARK_SITES_MIN`, 3, or every data site when fewer), marks and opinions
  together, agree (:func:`turns_suspect`; review R3: one site's mark flipped every site's
  verdict, rolled standbys back and moved a takeover's restore point; review R7: so did site-a's
  mark with a stolen admin token's at site-b, two sites' marks). ``mark_verdict clean`` of a
  clean snapshot takes back the signer's own mark; an approved one confirms the snapshot and
  drops every mark.
* A commit whose parent is ``suspect`` is recorded ``suspect`` by descent (reason
  :data:`TAINT_REASON_PREFIX`) whatever the primary proposed: a compromised primary cannot
  make the child of a suspect snapshot the newest clean one.
* ``set_detection`` (``volume``, ``policy``): the volume's detection policy
  (:data:`replicad.core.anomaly.POLICY_DEFAULTS` keys, :func:`detection_policy`). Any change
  runs only as an approved request, after approvals and the cooling-off, vetoable, whether it
  weakens a threshold (:func:`replicad.core.anomaly.weakened_keys`) or only tightens: all-zero
  thresholds on one site's word would make every snapshot suspect everywhere, and so would
  they approved at once by one site and a stolen admin token of another (review R7, F2); a
  site tightens its own judging at once in its config (``[volumes.anomaly]``). The same policy
  again is answered ``changed`` false. A policy whose ransom-note pattern RE2 refuses
  (:func:`replicad.core.anomaly.note_pattern_problem`) is ``bad_request`` at every site alike. ``add_volume`` takes the default policy only.
* ``remove_volume`` (``volume``, :func:`_op_remove_volume`): only as the action of an approved
  request, with the approvals and the cooling-off of a weakening, vetoable by any site; no
  cooling-off for a volume a revoked site registered (:func:`removal_is_easy`). Refused
  (``retention_locked``) while any snapshot of the volume is inside its lock window, its newest
  is suspect or its primary is in an instant recovery. A later ``add_volume`` of the name starts
  past the removed epoch and seq (:data:`REMOVED_VOLUMES`).
* ``vouch`` (``n``, ``hash``): the signing site says "the state after ``n`` applied commands
  has this 32-byte digest" (a checkpoint, :mod:`replicad.consensus.checkpoint`). Only by a
  registered site, for ``0 < n <=`` ``state["applied"]`` (a state already reached; the count
  is kept by the Raft node, identically at every site) and ``n`` above the site's last vouch
  (``conflict`` otherwise); the last :data:`VOUCHES_PER_SITE` vouches of each site are kept
  in ``vouches``. ``apply`` does not check the digest: it cannot know it without the
  checkpoint; whoever reads vouches counts a majority of sites for one ``(n, hash)``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection
from typing import Any, Callable

from replicad.core import anomaly, identity, retention, state_rules1
from replicad.core.identity import Trust

STATE_VERSION = 1
COMMAND_VERSION = 1
RULES = "rules"
"""State key: the rules version the state is decided under (:func:`rules`); absent means 1."""
RULES_MAX = 4
"""The highest rules version this code applies (module docstring, "Rules version"). 1: every rule
as release b976d0a decided it (:mod:`replicad.core.state_rules1`, frozen); 2: this module's rules
with the exactly-once memory keyed by op id alone; 3: keyed by signing site and op id
(:func:`applied_key`); 4: the audit kept per signing site (:data:`RULES_AUDIT_BY_SIGNER`)."""
RULES_SIGNER_KEYED = 3
"""The first rules version whose exactly-once memory is keyed by ``(by, op_id)`` (:func:`applied_key`)."""
RULES_AUDIT_BY_SIGNER = 4
"""The first rules version whose ``audit`` is kept per signing site (:func:`_with_audit`,
:data:`AUDIT_KEPT_MAX`): before it the list keeps the last :data:`AUDIT_MAX` records of every
command, and one site's flood of cheap signed commands (refused or harmless) pushed every other
site's records out of every site's state within seconds (attack review R15, F2)."""
RULES3_MAX = 3
"""The highest rules version release 64af970 applied (its :data:`RULES_MAX`): under rules 3 a
``rules`` command that raises nothing, and a ``found`` carrying ``rules`` that founds nothing, are
decided with this bound (:func:`apply`, :data:`_OPS_RULES3`), as it decided them."""
RULES2_MAX = 2
"""The highest rules version releases 84f7f0f and 74f9f08 applied (their :data:`RULES_MAX`): under
rules 2 a ``rules`` command that raises nothing, and a ``found`` carrying ``rules`` that founds
nothing, are decided with this bound (:func:`apply`, :data:`_OPS_RULES2`), as they decided them."""
FOUNDED_RULES = "founded_rules"
"""The state key a founding under rules records (:func:`apply`, :func:`founding_rules`): the
rules version (an int, 2..:data:`RULES_MAX`) the ``found`` carrying ``rules`` that founded a
never-founded state named. Only this release writes it: no state of release 84f7f0f or b976d0a
has it. Under rules 2 it tells a
cluster founded under rules 2 (the lab's ``REPLICAD_LAB_FOUND_RULES=2``: its honest members'
later founds carry rules 2 and are decided as 74f9f08 decided them) from one raised to 2 by
84f7f0f (a ``found`` carrying ``rules`` is refused for the unknown key, as 84f7f0f refuses it).
Fixed once the state has an incarnation (:func:`dump_problems`)."""
RULES_REPORT_TTL_NS = 10 * 60 * 1_000_000_000
"""A member's release report in a ``rules`` raise counts only when stamped within this of the
majority clock (:func:`quorum_now_ns`): 10 minutes. A raising site collects the reports seconds
before it proposes; an older report of a site since rolled back to an older release is no
longer evidence of what it runs."""
AUDIT_MAX = 1000
"""Audit records a state under rules 1..3 keeps: the last ones of every command, whoever signed it."""
AUDIT_KEPT_MAX = 2000
"""Audit records a state under :data:`RULES_AUDIT_BY_SIGNER` and later keeps at most. Past it the
list is cut to :data:`AUDIT_KEPT_AFTER_TRIM` at once (:func:`audit_trim`), by shares: each signing
site's records, and the records no signature attributes (``signer`` None), are one share each; the
largest shares are cut to one level, each losing its own oldest routine or refused records first
(:func:`audit_notable`: accepted, not :data:`AUDIT_ROUTINE_OPS`), then its own oldest notable ones.
So a site's flood pushes out only its own records: every other share keeps all its records up to
the level (at least ``AUDIT_KEPT_AFTER_TRIM / shares``: 375 of each with three sites, 23 with
:data:`SITES_MAX`), the notable ones last. Memory: twice :data:`AUDIT_MAX` records of ~0.5 KB in
memory each (8 small fields: 459 B measured, tests/bench/results/audit_share.md), ~0.9 MB per site in
all, ~140 KB of msgpack in a dump (ARCHITECTURE.md, Choices, "One site's share of the kept audit")."""
AUDIT_KEPT_AFTER_TRIM = AUDIT_KEPT_MAX * 3 // 4
"""What :func:`audit_trim` cuts the list to (1,500): a quarter at once, so that the O(records) cut is
paid once every 500 audited commands, not at each (as :data:`SEEN_PER_SITE_MAX`'s)."""
AUDIT_ROUTINE_OPS = frozenset({"clock", "vouch", "commit_snapshot", "site_verdict", "add_holder", "remove_holder",
                               "prune_snapshots"})
"""Ops whose accepted records a share loses before its notable ones (:func:`audit_trim`): the
daemons' own routine (heartbeats, checkpoint vouches, each snapshot's commit, verdicts and holders,
the retention loop's prunes by the cluster's retention), dozens an hour per volume and site
(``site.catchup.ROUTINE_OPS`` counts most of them likewise). Without the prunes (one a minute per
volume from its primary), a primary of 64 volumes pushed its own request out of its share in 13
minutes (attack review R17, F3)."""
AUDIT_DROPPED = "audit_dropped"
"""State key (rules 4 and later): ``{share: [records dropped, newest command count among them]}``
of :func:`audit_trim` (share: the signing site, ``""`` for the unattributed records), at most
:data:`AUDIT_DROPPED_KEYS_MAX` shares (those that dropped the newest kept). What a catch-up tells
with it (:func:`audit_kept_since`): whether every record of the commands after a count is kept."""
AUDIT_UNCOUNTED = "audit_uncounted"
"""State key (rules 4 and later, set by the raise or founding to :data:`RULES_AUDIT_BY_SIGNER`): the
count of the last command before it (``state["applied"]`` then). The records kept from before carry
``n`` None (:func:`audit_by_signer`) and are of commands up to this count: :func:`audit_trim` counts
a dropped one as of it in :data:`AUDIT_DROPPED`, so that :func:`audit_kept_since` can compare it
(with ``n`` None there, every later count would read as incomplete for ever)."""
AUDIT_DROPPED_KEYS_MAX = 129
"""Shares :data:`AUDIT_DROPPED` names at most: twice :data:`SITES_MAX` and the unattributed one (a
share is a member or a registered site; members change only by approved requests)."""
APPLIED_OPS_MAX = 5000
"""Answers the exactly-once memory (``applied_ops``) keeps: under rules 1..3 the last ones of every
command, whoever signed it; under :data:`RULES_AUDIT_BY_SIGNER` and later what :func:`applied_trim`
cuts it to."""
APPLIED_KEPT_MAX = 6000
"""Answers the exactly-once memory keeps at most under :data:`RULES_AUDIT_BY_SIGNER` and later. Past it
the memory is cut to :data:`APPLIED_OPS_MAX` at once (:func:`applied_trim`), by shares: each signing
site's answers (the ``by`` of :func:`applied_key`) are one share; the largest shares are cut to one
level (:func:`fair_level`), each losing its own oldest answers. So one site's flood of remembered
commands (accepted no-op ``add_volume``, its own ``commit_snapshot``) pushes out only its own
answers, and another site's retry of a committed command still gets its first answer instead of
``replayed`` (attack review R16, R-a). The O(answers) cut is paid once every 1,000 remembered
commands, not at each; the memory holds at most a fifth more answers than under rules 3."""
ROOT_SIZE_BYTES = 32  # BLAKE3-256 manifest root (DESIGN §3)
NAME_MAX_CHARS = 255
OP_ID_MAX_CHARS = 128
URL_MAX_CHARS = 2048
REASON_MAX_CHARS = 1024
STATS_MAX_KEYS = 64
PRUNE_MAX_SEQS = 10_000
SITES_MAX = 64  # a Raft group of pysyncobj is small; the Raft node passes its own member count
VOLUMES_MAX = 256
VOLUMES_PER_SITE_MAX = VOLUMES_MAX // 2
"""Volumes one site may register (``registered_by``): a compromised site filling the table with
volumes of its own leaves the others at least half of it (ARCHITECTURE, Choices: "One site's share
of the replicated state")."""
VOLUMES_HARD_MAX = 2 * VOLUMES_MAX
"""Volumes the state holds at most, counting those of revoked sites (which do not count against
:data:`VOLUMES_MAX`: a revocation frees their share, their records stay for the history)."""
SNAPSHOTS_MAX = 10_000  # per volume: > 1 year of hourly snapshots, or 34 days every 5 minutes
SITE_RECORDS_BOUND = VOLUMES_PER_SITE_MAX * SNAPSHOTS_MAX
"""Snapshot records the volumes one site registered can hold (1,280,000): a consequence of the
per-volume bound, never checked across volumes (module docstring, "Bounds"). No budget per
registering site: it refused an honest primary's commits of a volume the budget's site had
registered once that site filled it with junk volumes, and the defaults alone (every 10 s, a day of
every snapshot) passed 40,000 records with five busy volumes (review R10, F2)."""
STATS_MAX_CHARS = 4096  # all keys and string values of one snapshot's stats together
STATS_BYTES_PER_RECORD = 384
"""Bytes of stats (:func:`stats_bytes`) one snapshot record may carry: a real record carries 147
(seven keys, a three-site lab cluster), 165 with ``tainted_by``; 4 KB records were the flood of
review R9, F5. A bound per record, not per site or volume: a budget that a primary could fill would
refuse its successor's commits (review R10, F2). Past it a commit is ``bad_request``, evidence
``refusal`` ``stats_bytes``; with :data:`SITE_RECORDS_BOUND` one site's volumes hold at most
~490 MB of stats (~190 MB at the default settings' steady state)."""
STATS_SCALAR_BYTES = 8  # what a number, a bool or None counts in stats_bytes (a msgpack int64 or float64)
CLOCK_REPORT_PERIOD_NS = 5_000_000_000  # every site reports its clock at least this often (daemon heartbeat)
CLOCK_LAG_MARGIN_NS = 2 * CLOCK_REPORT_PERIOD_NS  # how far a majority's reported time may trail the truth
CLOCK_AHEAD_MARGIN_NS = 600_000_000_000
"""How far ahead of the majority's clock (:func:`quorum_now_ns`) a snapshot may be stamped: a
later stamp is capped at that clock plus this margin. A primary whose clock jumped forward (a
year, in a field report) would otherwise make its snapshots unprunable for as long, and RPO
read negative. It is a cap, not a reset to the majority's time: a stamp moved *back* could
start the lock early, and the majority's reports trail the truth by a report period in the
normal case but by more when heartbeats stall; ten minutes of staleness is what the cap
assumes (an honest stamp leads the majority's reports by :data:`CLOCK_LAG_MARGIN_NS` plus NTP
error, seconds)."""
EPOCH_WINDOW_NS = 3600 * 10**9
"""Window of the epoch-change rule (:func:`_check_epoch_rate`), by the majority clock: a site's
second disruptive epoch change of a volume within it needs other sites' approvals."""
PRIMARY_SILENT_NS = 18 * CLOCK_REPORT_PERIOD_NS
"""A primary whose last reported clock trails the majority's clock by more than this (90 s:
eighteen missed heartbeats) is silent: down, or cut off from the Raft majority
(:func:`primary_live`). It must be well above the silence a Raft leader can impose on one site
undeposed: a leader that drops a site's forwarded commands (its clock reports too) is deposed
by that site after ``replicad.consensus.raft.WITHHELD_AFTER_S`` (45 s, point 19), then an
election (``raftMaxTimeout``, 1.4 s by default, a few rounds under load) and the next report
(5 s) follow; 30 s let a leader make an honest primary look dead for free (review R6). The
epoch-change rule no longer turns on it (every forced role change counts); it says whether a
refused change would have fenced a live primary (evidence ``primary_live``)."""
EPOCH_CHANGES = "epoch_changes_ns"
"""Volume key: ``{site_id: ns}``, the majority-clock time of each site's last disruptive epoch
change of the volume (:func:`_check_epoch_rate`); entries older than :data:`EPOCH_WINDOW_NS`
are dropped when the next one is recorded."""
INT_MAX = 2**63 - 1
SITE_KINDS = ("data", "witness")
VERDICTS = ("clean", "suspect")
RETENTION_KEYS = ("keep_all_s", "hourly_s", "daily_s", "lock_s")
RETENTION_MAX_S = 10 * 366 * 86400  # ceiling of every retention duration (ten years: beyond that a typo or an attack)
DEFAULT_RETENTION = {"keep_all_s": 86400, "hourly_s": 7 * 86400, "daily_s": 30 * 86400, "lock_s": 86400}
"""The retention a volume may start with at most (= ``replicad.config.RetentionConfig()``): a longer one
keeps every site's copies longer on one site's word (disks fill); the registering daemon requests it."""
COMMON_KEYS = frozenset({"v", "op", "op_id", "by", "now_ns", identity.CLUSTER_FIELD, identity.SIG_FIELD})
IDENTITY_REFUSALS = frozenset({"bad_signature", "replayed", "expired", "revoked"})
"""Refusal codes of commands that are not what their signer said (forged, replayed, stale)."""
COUNTED_REFUSALS = IDENTITY_REFUSALS | {"bad_ack", "out_of_range", "not_self"}
COUNTED_CONFLICTS = frozenset({"not_founded", "epoch_rate", "not_vetoable", "instant_recovery"})
"""``refusal`` evidence of refusals that are counted like :data:`COUNTED_REFUSALS` under that
reason, though their code says what the operator must do (``conflict``, ``approval_required``):
a request before the founding (``not_founded``), a second epoch change too soon (``epoch_rate``),
a veto of a role-change request (``not_vetoable``), a forced role change taking a volume from a
primary in an instant recovery (``instant_recovery``, :func:`instant_recovery`)."""
COUNTED_REASONS = COUNTED_REFUSALS | COUNTED_CONFLICTS
"""Refusals every site logs at WARNING and counts (``replicad_command_refused_total{reason}``):
the identity refusals, a commit naming a holder without its signed acknowledgement
(``bad_ack``), a seq or size past the state machine's bounds (``out_of_range``) and a site
registering another (``not_self``). The last three are validly signed commands: they are
remembered like any other refusal."""
SEQ_STEP_MAX = 1_000_000
"""A committed seq is at most ``last_seq + SEQ_STEP_MAX``. A primary numbers its snapshots
``last_seq + 1`` (or one past its own uncommitted ones, a few at most), so a legitimate gap
is a handful; a million is far above it, and at that pace the 2**63 seq space would take
9.2e12 commits to exhaust: one primary (even a compromised one) can never exhaust it."""
SIZE_BYTES_MAX = 2**50
"""Largest volume size (bytes) a commit or ``add_volume`` may claim: 1 PiB, far above any
hospital volume. A larger size is ``out_of_range`` (receivers derive their chunk budget
from the committed size; an unbounded one would disable it)."""
MAX_SIZE_FACTOR = 2
MAX_SIZE_SLACK_BYTES = 2**30
"""A volume's default agreed maximum size is ``max(MAX_SIZE_FACTOR x size, size +
MAX_SIZE_SLACK_BYTES)`` (:func:`default_max_size_bytes`): a doubling (the usual disk resize) or
1 GiB more for a small volume needs nobody's approval; past it the primary's daemon requests a
new maximum (``set_max_size``) that another site approves (ARCHITECTURE, Choices: "A volume's
agreed maximum size")."""
MAX_SIZE_WINDOW_NS = 24 * 3600 * 10**9
"""Window of the at-once growth of a volume's agreed maximum (:func:`max_size_at_once`), by the
majority clock: within it, approved raises apply at once only up to :data:`MAX_SIZE_FACTOR` times
the smallest maximum the volume had since the first of them."""
MAX_SIZE_BASE = "max_size_base"
"""Volume key: ``{"bytes": int, "at_ns": int}``, the agreed maximum before the first raise that
applied at once within :data:`MAX_SIZE_WINDOW_NS` (``at_ns``: majority clock): the base of
:func:`max_size_at_once` while the window lasts. A raise that cooled off unvetoed (or that every
member approved) drops it."""
VOUCHES_PER_SITE = 2
"""Vouches kept per site (``vouch``): the newest two, so a checkpoint a majority vouched stays
visible while the fastest site already vouched the next one."""
DIGEST_BYTES = 32  # a vouched state digest (BLAKE3-256, consensus.checkpoint)
SEEN_PER_SITE_MAX = 2000  # op ids remembered per site for replay checks (> 10 min of heartbeats and commits)
REQUESTS_MAX = 64
"""Finished request records (``applied``, ``failed``, ``vetoed``, ``expired``) kept per requesting
site, oldest forgotten first (:func:`_bounded_requests`); pending and approved ones are never
forgotten, nor the newest :data:`RETENTION_RECORDS_PER_VOLUME` applied retention changes of a volume."""
RETENTION_RECORDS_PER_VOLUME = 8
"""Applied ``set_retention`` records kept per volume whatever their requester did since: the
``previous`` policy each holds is what a site's own ``[floor] cooling_off``
(:func:`locally_effective_retention`) keeps meanwhile."""
REQUESTS_PENDING_PER_SITE = 8  # a site cannot crowd out the requests of the others
WEAKENING_OPS = ("set_retention", "mark_verdict", "set_detection", "prune_snapshots", "remove_volume")
EPOCH_ACTIONS = ("promote", "demote")  # a role change past a site's free one (epoch_rate): approvals, no cooling-off
REQUEST_ACTIONS = (*WEAKENING_OPS, "revoke_site", "set_members", *EPOCH_ACTIONS, "set_max_size")
NOT_VETOABLE = (*EPOCH_ACTIONS, "set_max_size")
"""Requests no site can veto: they weaken nothing during a cooling-off (they have none) and
restore service (a role change) or replication (a grown volume's maximum); approvals only. A
``set_max_size`` past :func:`max_size_at_once` is the exception: it cools off, and any site may
veto it (:func:`max_size_cools_off`)."""
MAJORITY_ACTIONS = ("revoke_site", "set_members")
"""Requests a majority of all registered sites approves, then cooling off unless every unrevoked
member approved (module docstring, "Revocation and membership")."""
REMOVED_VOLUMES = "removed_volumes"
"""State key: ``{volume: {"epoch": int, "last_seq": int, "registered_by": site_id, "removed_ns":
int}}``, what an applied ``remove_volume`` left of a volume: a later ``add_volume`` of the same name
starts past that epoch and seq (:func:`_op_remove_volume`), so no site's kept records of the old
volume ever collide with the new one's (``record_conflict``)."""
INCARNATION_BYTES = 16  # a cluster incarnation id (found)
SITE_SUSPECT_PREFIX = "judged suspect by "
"""``verdict_reason`` prefix of a snapshot made suspect by a site's own opinion (``site_verdict``)."""
OPINION_REASON_MAX_CHARS = 512
PPM = 1_000_000  # scores travel as integers in parts per million (deterministic, no float in the state)
MEMBER_KEYS_MAX = 8  # public keys per member in the agreed membership
_TRUST = object()  # internal key: the Trust a handler runs under (never in a decoded command)
_APPROVED = object()  # internal key: set on an action run by a request that collected its approvals
_APPROVALS = object()  # internal key: the approving sites of the request an action runs for
_REQUEST = object()  # internal key: the id of the request an action runs for


class _Refusal(Exception):
    """Internal control flow: a validation failure. Never escapes :func:`apply`."""

    def __init__(self, code: str, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.evidence = evidence


def initial_state(members: Any = None, max_sites: int | None = None, rules: int | None = None) -> dict:
    """An empty cluster state (version ``STATE_VERSION``).

    Args:
        members: the site ids that may ever register (every site's configured
            ``[[sites]]``; all sites must pass the same list, or their states diverge).
            None: any site id (up to ``max_sites``).
        max_sites: at most this many registered sites (default :data:`SITES_MAX`).
        rules: the state's rules version (:data:`RULES`), 1..:data:`RULES_MAX`. None (every Raft
            node): no key, rules 1, so a log replayed from its start is decided by the rules its
            entries were first decided by, and the founding ``found`` (:func:`founding_rules`) or
            the ``rules`` command in the log raises them.
            Unit tests of this release's rules pass :data:`RULES_MAX`.
    Without arguments the state carries no ``limits`` (the defaults apply).

    Raises:
        ValueError: ``rules`` not an int in 1..:data:`RULES_MAX`.
    """
    state = {"v": STATE_VERSION, "sites": {}, "volumes": {}, "audit": [], "applied_ops": {}, "clocks": {}}
    if members is not None or max_sites is not None:
        state["limits"] = limits(members, max_sites)
    if rules is not None:
        if not _is_int(rules) or not 1 <= rules <= RULES_MAX:
            raise ValueError(f"rules must be an int in 1..{RULES_MAX}, not {rules!r}")
        if rules > 1:
            state[RULES] = rules
    return state


def rules(state: Any) -> int:
    """The rules version ``state`` is decided under: its :data:`RULES` entry, 1 when absent (every
    state made before the rules version existed) or malformed. Pure; never raises."""
    value = state.get(RULES) if isinstance(state, dict) else None
    return value if _is_int(value) and value >= 1 else 1


FOUNDING_KEPT = ("limits", "audit", "applied_ops", "seen", "applied")
"""What a state keeps when a ``found`` carrying rules founds it (:func:`founding_start`): its
configured limits and its records (audit, exactly-once answers, replay memory, the applied count);
the rest (sites, volumes, founding proposals, clocks, ...) was decided under other rules."""


def founding_rules(state: Any, command: Any) -> int | None:
    """The rules version a ``found`` command founds ``state`` under (module docstring, "Rules
    version"): its ``rules`` when the state has no incarnation (never founded) and that int is
    above the state's :func:`rules` and at most :data:`RULES_MAX`; None otherwise (then the
    command is decided by the state's rules like any other: under rules 1 as b976d0a refused a
    ``found`` with a key it did not know), and None in a state under rules 2 that no founding
    under rules made (no :data:`FOUNDED_RULES`: release 84f7f0f refuses the key there). Pure;
    never raises."""
    if not isinstance(state, dict) or not isinstance(command, dict) or command.get("op") != "found":
        return None
    wanted = command.get(RULES)
    if state.get("incarnation") is not None or not _is_int(wanted) or not rules(state) < wanted <= RULES_MAX:
        return None
    if rules(state) == RULES2_MAX and FOUNDED_RULES not in state:
        return None
    return wanted


def founding_start(state: dict, to: int) -> dict:
    """The state a ``found`` carrying rules ``to`` is applied to: :func:`initial_state` under
    ``to`` with ``state``'s :data:`FOUNDING_KEPT` entries. Pure."""
    start = {**initial_state(rules=to), **{k: state[k] for k in FOUNDING_KEPT if k in state}}
    if to >= RULES_SIGNER_KEYED > rules(state):
        start["applied_ops"] = applied_by_signer(start)
    if to >= RULES_AUDIT_BY_SIGNER > rules(state):
        start["audit"] = audit_by_signer(start)
        start[AUDIT_UNCOUNTED] = _applied_count(start)
    return start


def applied_key(state: dict, by: Any, op_id: str) -> str:
    """The key of ``op_id`` signed by ``by`` in the exactly-once memory (``applied_ops``) of
    ``state``: the op id itself under rules 1 and 2; under :data:`RULES_SIGNER_KEYED` and later
    ``by`` (a site id, printable: no NUL) and the op id joined by a NUL, so that a command of one
    site never answers for another site's with the same op id (attacker review r13, F5). ``by``
    not a string (a command refused for its envelope) keys as the empty site. Pure."""
    if rules(state) < RULES_SIGNER_KEYED:
        return op_id
    return f"{by if isinstance(by, str) else ''}\x00{op_id}"


def applied_by_signer(state: dict) -> dict:
    """``state``'s ``applied_ops``, kept under rules 1 or 2 (keyed by op id alone), keyed as
    :func:`applied_key` keys them under :data:`RULES_SIGNER_KEYED`: each answer by the one site
    whose replay memory (``seen``) holds its op id (the site whose command was decided and
    stored under it; a command answered from the memory never enters the replay memory), in
    the same order. An answer no site's replay memory holds, or more than one site's, is
    dropped: a retry of it is then refused as ``replayed`` (or decided anew when its op id is
    unknown to its site too: a state without replay memory, unsigned). Pure."""
    owners: dict[str, list[str]] = {}
    for site, memory in (state.get("seen") or {}).items():
        for op_id in (memory.get("ops") or {}) if isinstance(memory, dict) else ():
            owners.setdefault(op_id, []).append(site)
    keyed = {}
    for op_id, result in (state.get("applied_ops") or {}).items():
        sites = owners.get(op_id)
        if sites is not None and len(sites) == 1:
            keyed[f"{sites[0]}\x00{op_id}"] = result
    return keyed


def limits(members: Any = None, max_sites: int | None = None, joining: bool = False,
           keys: Any = None) -> dict:
    """The ``limits`` entry of a state: ``{"members": sorted ids | None, "max_sites": int}``,
    plus ``"joining": True`` for a site that joins an existing cluster (``members`` None: it
    replays the ``found`` commands without a configured reference, :func:`_founding_reference`),
    plus :data:`FOUNDING_KEYS` when ``keys`` is given: ``{site_id: (raw 32-byte key, ...)}`` (a
    :attr:`Trust.keys <replicad.core.identity.Trust.keys>`), kept as ``{site_id: sorted
    "ed25519:<base64>" strings}`` (JSON, so the Raft node can pin it in ``raft.limits``)."""
    ids = None if members is None or joining else sorted({str(m) for m in members})
    cap = SITES_MAX if max_sites is None or joining else max(1, min(int(max_sites), SITES_MAX))
    out: dict = {"members": ids, "max_sites": cap, "joining": True} if joining else {"members": ids, "max_sites": cap}
    if keys is not None:
        out[FOUNDING_KEYS] = {str(site): sorted(identity.format_public_key(k) for k in site_keys)
                              for site, site_keys in sorted(keys.items())}
    return out


FOUNDING_KEYS = "keys"
"""The ``limits`` entry (:func:`limits`) that pins, for the commands before the founding, the keys
of every configured site: the applying site's ``[[sites]]`` keys when its Raft log started (the
Raft node keeps them in ``raft.limits`` with the site ids, so a replay after a key rotation
decides the founding as it was decided: :func:`founding_keys`). None: a log started by a release
that had no such entry (its founding stays decided as that release decided it)."""
FOUND_UNPINNED = "found_unpinned"
"""The evidence ``refusal`` of a ``found`` refused before the founding because it is not signed
with a key the founding reference pins for its proposer (:func:`founding_key_problem`; code
``bad_signature``, so counted with the identity refusals)."""


def founding_keys(state: Any, trust: Trust | None) -> dict[str, tuple[bytes, ...]] | None:
    """The keys a ``found`` before the founding must be signed with, per site: ``limits``'
    :data:`FOUNDING_KEYS` when present (None there: a log started by an older release, no
    reference), else ``trust.keys`` (the local config: states without such limits, unit tests).
    None in unsigned mode. Never raises (a malformed entry names no key)."""
    if trust is None or trust.keys is None:
        return None
    bounds = state.get("limits") if isinstance(state, dict) else None
    if isinstance(bounds, dict) and FOUNDING_KEYS in bounds:
        pinned = bounds[FOUNDING_KEYS]
        if not isinstance(pinned, dict):
            return None
        return {site: _raw_keys(texts) for site, texts in pinned.items()}
    return {site: tuple(keys) for site, keys in trust.keys.items()}


def founding_key_problem(state: Any, command: Any, trust: Trust | None) -> str | None:
    """Why a ``found`` cannot count before the founding: its signature does not verify under the
    keys :func:`founding_keys` pins for its proposer (attacker review r14, A1: the key its own
    list gives its proposer is the proposer's word, so one site could sign a ``found`` in another
    configured site's name with a key of its own listed for it, and make the majority of
    identical lists with its own). None when it may count: not a ``found``, the state founded
    already (the agreed membership's keys decide then), unsigned mode, no reference (an older
    release's log), a proposer the reference does not name (:func:`_op_found` refuses one its
    configured sites do not name; a site that joined later decides those as the founders did),
    a ``by`` that is not a string (the envelope check refuses it), or a good signature. The one
    config-dependent rule of ``found``; pinned when the Raft log starts, so a replay of the same
    log by the same site decides the same (module docstring, "Keys"). Never raises."""
    if not isinstance(command, dict) or command.get("op") != "found" or not isinstance(command.get("by"), str):
        return None
    if not isinstance(state, dict) or state.get("incarnation") is not None:
        return None
    pinned = founding_keys(state, trust)
    if pinned is None or command["by"] not in pinned:
        return None
    return identity.signature_problem(command, pinned[command["by"]])


def dump_problems(current: Any, proposed: Any, now_ns: int) -> list[str]:
    """Why a full state received from the network must not replace ``current``; [] if none.

    A Raft leader installs its whole state on a follower that lags behind its compacted log.
    Every op but the founding under new rules (:func:`founding_rules`: a ``current`` state never
    founded, under lower rules than ``proposed``'s, is checked for shape only) only adds sites
    and volumes, only raises epochs and last seqs, never rewrites a
    committed snapshot's root, epoch or creation time, and removes a snapshot record only
    through ``prune_snapshots``, which refuses anything inside the lock window. So a later
    state of the same history keeps all of that; a state that does not is forged. A missing
    record is accepted only when it is older than the lock window by ``now_ns`` (the
    receiver's own clock) under the *current* retention; a missing volume only when the dump
    records it in :data:`REMOVED_VOLUMES` at its epoch and last seq or later, and each of its
    records passes the same lock check (``remove_volume`` refuses a volume with any).

    Args:
        current: this node's applied state.
        proposed: the decoded dump document's ``state``.
        now_ns: the receiver's wall clock, ns since the epoch.
    Returns:
        Human-readable problems (at most about 20); never raises.
    """
    try:
        return _dump_problems(current, proposed, now_ns)
    except Exception as exc:  # a malformed dump is a refused dump
        return [f"malformed state: {type(exc).__name__}: {str(exc)[:120]}"]


def _dump_problems(current: dict, proposed: Any, now_ns: int) -> list[str]:
    if not isinstance(proposed, dict) or proposed.get("v") != STATE_VERSION:
        return ["not a cluster state of this version"]
    for key in ("sites", "volumes", "clocks", "applied_ops"):
        if not isinstance(proposed.get(key), dict):
            return [f"{key} is not a map"]
    if not isinstance(proposed.get("audit"), list):
        return ["audit is not a list"]
    problems: list[str] = []
    if current.get("incarnation") is not None and current.get(FOUNDED_RULES) != proposed.get(FOUNDED_RULES):
        # written only by the founding (FOUNDED_RULES), before any incarnation: a dump that adds,
        # drops or changes it would change how later founds are decided under rules 2
        problems.append(f"{FOUNDED_RULES} {current.get(FOUNDED_RULES)!r} would become {proposed.get(FOUNDED_RULES)!r}")
    if current.get("incarnation") is None and rules(proposed) > rules(current):
        # a found carrying rules (founding_rules) drops what a never-founded state held: a follower
        # still before the founding keeps no history a later state must keep (honest sites register
        # only once founded); the vouched checkpoint is the gate there
        return problems
    missing_sites = sorted(set(current.get("sites", {})) - set(proposed["sites"]))
    if missing_sites:
        problems.append(f"sites {missing_sites[:5]} would be forgotten")
    for name, vol in current.get("volumes", {}).items():
        new = proposed["volumes"].get(name)
        gone = (proposed.get(REMOVED_VOLUMES) or {}).get(name) if isinstance(proposed.get(REMOVED_VOLUMES), dict) \
            else None
        if new is None and isinstance(gone, dict):  # removed (remove_volume): past its epoch and seq, outside the lock
            new = {"epoch": gone.get("epoch"), "last_seq": gone.get("last_seq"), "snapshots": {}}
        if not isinstance(new, dict) or not isinstance(new.get("snapshots"), dict):
            problems.append(f"volume {name!r} would be forgotten")
            continue
        if not _is_int(new.get("epoch")) or new["epoch"] < vol["epoch"]:
            problems.append(f"volume {name!r}: epoch {new.get('epoch')!r} < {vol['epoch']}")
        if not _is_int(new.get("last_seq")) or new["last_seq"] < vol["last_seq"]:
            problems.append(f"volume {name!r}: last seq {new.get('last_seq')!r} < {vol['last_seq']}")
        lock_ns = vol["retention"]["lock_s"] * 1_000_000_000
        for seq, snap in vol["snapshots"].items():
            kept = new["snapshots"].get(seq)
            if kept is None:
                if now_ns - snap["created_at_ns"] < lock_ns:
                    problems.append(f"volume {name!r}: snapshot {seq} (inside the lock window) would be forgotten")
            elif not isinstance(kept, dict) or any(kept.get(k) != snap[k] for k in ("root", "epoch", "created_at_ns")):
                problems.append(f"volume {name!r}: snapshot {seq} would change its root, epoch or time")
            if len(problems) >= 20:
                return problems
    return problems


def quorum_now_ns(state: dict) -> int | None:
    """The latest time a majority of the registered sites have all reached, by their own
    clocks as last reported in their commands (``state["clocks"]``), or None if fewer than a
    majority ever reported. One site's clock stepping forward cannot move it past the clocks
    of the others (DESIGN §9: clock steps; O4: the lock window)."""
    sites = state.get("sites", {})
    clocks = sorted((t for s, t in state.get("clocks", {}).items() if s in sites), reverse=True)
    majority = len(sites) // 2 + 1
    if not sites or len(clocks) < majority:
        return None
    return clocks[majority - 1]


def clock_offsets_ns(state: dict) -> dict[str, int]:
    """``{site_id: ns}``: each registered site's last reported clock (``state["clocks"]``) minus
    :func:`quorum_now_ns`; {} while fewer than a majority reported. A large positive offset is a
    clock ahead (its snapshots are restamped, :data:`CLOCK_AHEAD_MARGIN_NS`); a negative one is a
    clock behind *or* a site that stopped reporting (down, cut off): read it with peer_up."""
    quorum_now = quorum_now_ns(state)
    if quorum_now is None:
        return {}
    sites = state.get("sites", {})
    return {site: t - quorum_now for site, t in state.get("clocks", {}).items()
            if site in sites and isinstance(t, int)}


def newest_committed(vol_state: dict) -> int | None:
    """Highest seq in the volume's snapshot catalog, or None when it is empty."""
    snapshots = vol_state.get("snapshots") or {}
    return max(snapshots) if snapshots else None


def newest_common(state: dict, vol_state: dict) -> dict[int, str]:
    """``{seq: replica}``: for each data site other than the volume's primary, the newest
    committed snapshot both it and the primary hold (by the catalog's holders). These are
    the bases of incremental ships and resyncs; ``prune_snapshots`` refuses them. A replica
    sharing nothing with the primary has no entry (one seq may serve several replicas: the
    first in site order is named)."""
    primary = vol_state.get("primary")
    out: dict[int, str] = {}
    for site in sorted(state.get("sites", {})):
        if site == primary or site_kind(state, site) != "data":
            continue
        both = [seq for seq, snap in (vol_state.get("snapshots") or {}).items()
                if primary in snap["holders"] and site in snap["holders"]]
        if both:
            out.setdefault(max(both), site)
    return out


def newest_clean(vol_state: dict) -> int | None:
    """Highest seq whose verdict is ``clean``, or None when there is none."""
    clean = [seq for seq, snap in (vol_state.get("snapshots") or {}).items()
             if snap.get("verdict") == "clean"]
    return max(clean) if clean else None


def newest_confirmed(vol_state: dict) -> int | None:
    """Highest seq a person confirmed clean (the slow windows' anchor), or None when there is none."""
    confirmed = [seq for seq, snap in (vol_state.get("snapshots") or {}).items() if snap.get("confirmed")]
    return max(confirmed) if confirmed else None


def apply(state: dict, command: dict, trust: Trust | None = None) -> tuple[dict, dict]:
    """Apply one command; return ``(new_state, result)``. Never raises, never mutates ``state``.

    Args:
        state: the current state (see the module docstring).
        command: the decoded command map (anything: it is validated here).
        trust: the pinned identities and the cluster policy (:class:`replicad.core.identity.Trust`),
            identical at every site. None: no identity checks at all (unit tests of the
            ops; never a site). With ``trust.keys`` None (``unsafe_unsigned``) signatures
            are not checked but replays still are.

    See the module docstring for the command and result shapes and the rules. A state under
    rules 1 (:func:`rules`) is decided by :mod:`replicad.core.state_rules1` (release b976d0a's
    state machine, frozen), but for the ``rules`` command that raises it (module docstring,
    "Rules version"); a state under rules 2 by this module with the op table of the releases
    whose :data:`RULES_MAX` was 2 (:data:`_OPS_RULES2`: ``rules`` and ``found`` bounded at
    :data:`RULES2_MAX`), but for the ``rules`` command that raises it; a state under rules 3
    likewise with that of release 64af970 (:data:`_OPS_RULES3`, bounded at :data:`RULES3_MAX`).
    """
    problem = founding_key_problem(state, command, trust)
    if problem is not None:
        # a found in the name of a configured site, not signed with a key pinned for it (r14 A1),
        # refused here for every rules version: the frozen rules-1 machine (a plain found) and the
        # founding under rules (a found carrying them) would take the key its own list names. No
        # honest found is refused so (an honest site signs with the key every config pins for it),
        # so every honest log decides as before; refused like any identity refusal: audited only
        by = command["by"]
        result = _refused("bad_signature", f"found by {by!r}: {problem} (not signed by a key the [[sites]] config "
                          "pinned for it when this site's Raft log started: a found in another site's name, or this "
                          "site's config differs from the proposer's; README \"A site is compromised\")",
                          by=by, op="found", problem=problem, refusal=FOUND_UNPINNED)
        try:
            return _with_audit(state, command, result), result
        except Exception:  # a state this code cannot read: hand it back untouched (apply never raises)
            return state, result
    founding = founding_rules(state, command)
    if founding is not None:
        # a found carrying the rules of a never-founded state: the cluster is founded under them,
        # and what was applied before it (under rules 1, by any member) is dropped (module
        # docstring, "Rules version"); refused there, it is decided as if it named none. The
        # state records it (FOUNDED_RULES): only such a state decides later founds carrying
        # rules under rules 2 as this code does
        new_state, result = _apply_guarded(founding_start(state, founding), command, trust)
        if result.get("ok"):
            new_state = {**new_state, FOUNDED_RULES: founding}
            dropped = {k: len(state.get(k) or {}) for k in ("sites", "volumes", "founding") if state.get(k)}
            return new_state, {**result, "rules": founding, "previous": rules(state),
                               **({"dropped": dropped} if dropped else {})}
    if rules(state) < 2:
        # RULES 1: release b976d0a's state machine decides, results and state contents alike; of a
        # rules command only a raise this code accepts is this code's (b976d0a answers every
        # rules command as an unknown op: a refused or no-op one decided here would part the
        # states of a cluster still running b976d0a at some sites)
        if _peek_str(command, "op") == "rules":
            new_state, result = _apply_guarded(state, command, trust)
            if result.get("ok") and result.get("changed") and rules(new_state) > rules(state):
                # a raise that happened: not an exactly-once answer stored for another command whose
                # op id this one reuses (b976d0a refuses it as an unknown op, and records that)
                return new_state, result
        return state_rules1.apply(state, command, trust)
    if rules(state) == 2:
        # RULES 2: decided as releases 84f7f0f and 74f9f08 decided it (their RULES_MAX was 2); of a
        # rules command only a raise this code accepts (to 3) is this code's: a refused or no-op
        # one decided with this code's bound would part the states of a cluster still running
        # them at some sites (rules 4 "1..3", rules 3 without reports refused otherwise than
        # out_of_range), as would a found carrying rules 3 (adopted here, out_of_range there)
        # (74f9f08's bound: a state founded under rules by this code, FOUNDED_RULES); in any other
        # rules-2 state (raised to 2 by release 84f7f0f) a found carrying rules is refused for
        # the key as 84f7f0f refuses it
        if _peek_str(command, "op") == "rules":
            new_state, result = _apply_guarded(state, command, trust)
            if result.get("ok") and result.get("changed") and rules(new_state) > rules(state):
                return new_state, result
        return _apply_guarded(state, command, trust, _OPS_RULES2 if FOUNDED_RULES in state else _OPS_RULES2_PLAIN)
    if rules(state) == RULES3_MAX:
        # RULES 3: decided as release 64af970 decided it (its RULES_MAX was 3); of a rules command
        # only a raise this code accepts (to 4) is this code's: a refused or no-op one decided with
        # this code's bound would part the states of a cluster still running it at some sites
        # (rules 5 "1..4", rules 4 without reports refused otherwise than out_of_range), as would a
        # found carrying rules 4 in a founded state (out_of_range there)
        if _peek_str(command, "op") == "rules":
            new_state, result = _apply_guarded(state, command, trust)
            if result.get("ok") and result.get("changed") and rules(new_state) > rules(state):
                return new_state, result
        return _apply_guarded(state, command, trust, _OPS_RULES3)
    return _apply_guarded(state, command, trust)


def _apply_guarded(state: dict, command: dict, trust: Trust | None,
                   ops: dict | None = None) -> tuple[dict, dict]:
    """:func:`_apply_checked` under this code's rules (op table ``ops``, :data:`_OPS` when None);
    never raises (a bug is an ``internal`` result)."""
    try:
        return _apply_checked(state, command, trust, _OPS if ops is None else ops)
    except Exception as exc:  # last resort: a raise here would wedge every Raft node
        result = {"ok": False, "error": "internal",
                  "message": f"state machine bug: {type(exc).__name__}: {exc}",
                  "evidence": {"op": _peek_str(command, "op")}}
        try:
            return _with_audit(state, command, result), result
        except Exception:  # the state itself is unusable: hand it back untouched
            return state, result


# --------------------------------------------------------------------------- dispatch


def _apply_checked(state: dict, command: dict, trust: Trust | None, ops: dict) -> tuple[dict, dict]:
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        result = _refused("bad_request", "unknown cluster state version",
                          version=state.get("v") if isinstance(state, dict) else None)
        return state, result
    op_id = _peek_str(command, "op_id")
    key = applied_key(state, _peek_str(command, "by"), op_id) if op_id is not None else None
    if trust is None and key is not None and key in state["applied_ops"]:
        return state, state["applied_ops"][key]
    # rules 3: only a command whose signature was checked is remembered (exactly-once answers and
    # replay memory): one refused for its envelope names a signer nobody verified, and under a
    # key (by, op_id) it would answer for (or replay) that site's own command (r13, F5)
    verified = trust is None or rules(state) < RULES_SIGNER_KEYED
    identified = False  # the envelope passed (and, with trust, the signature): rules 4's audit share
    try:
        handler = _check_envelope(command, ops)
        if trust is not None:
            _check_identity(state, command, trust)
            verified = True
            if key in state["applied_ops"]:
                # exactly-once: a retry (or a replay) of an applied command gets its first answer
                # (rules 3: only one signed by the same site, applied_key)
                return state, state["applied_ops"][key]
            _check_fresh(state, command, trust)
        identified = True
        new_state, result = handler(state, _with_trust(command, trust))
    except _Refusal as refusal:
        new_state, result = state, _refused(refusal.code, refusal.message, **refusal.evidence)
    if result.get("ok"):
        new_state = _with_clock(new_state, command)  # refusals change nothing but the audit
        new_state, due = _apply_due_requests(new_state, command)
        if due:
            result = {**result, "requests_applied": due}
    if trust is not None and result.get("error") not in IDENTITY_REFUSALS and verified:
        new_state = _with_seen(new_state, command, trust)
    if result.get("ok") and _peek_str(command, "op") == "clock":
        return new_state, result  # heartbeats: neither audited nor remembered (they would crowd both out)
    # rules 4: the record counts against its signer's share only when its signature (and freshness)
    # were checked: a forged, replayed or malformed claim in an honest site's name is unattributed
    checked = verified and identified and result.get("error") not in IDENTITY_REFUSALS
    new_state = _with_audit(new_state, command, result, audit_signer(state, command, trust) if checked else None)
    if op_id is not None and _valid_op_id(op_id) and result.get("error") not in IDENTITY_REFUSALS and verified:
        # identity refusals are not remembered: a forged command reusing an honest op id
        # must not answer for the honest command that may follow it
        new_state = _with_applied(new_state, applied_key(new_state, _peek_str(command, "by"), op_id), result)
    return new_state, result


def _with_trust(command: dict, trust: Trust | None) -> dict:
    """The command as handlers see it: with the trust under an internal key."""
    return {**command, _TRUST: trust}


def _raw_keys(texts: Any) -> tuple[bytes, ...]:
    """The raw 32-byte keys of a member entry's ``keys`` (``"ed25519:<base64>"`` strings, in
    their recorded order); a string that does not parse names no key (``found``/``set_members``
    check only the shape). Never raises."""
    out = []
    for text in texts if isinstance(texts, list) else ():
        try:
            out.append(identity.parse_public_key(text))
        except ValueError:
            continue
    return tuple(out)


def signing_keys(state: dict, command: Any, trust: Trust | None) -> tuple[bytes, ...] | None:
    """The raw public keys a command signed by ``command["by"]`` is checked against, chosen
    from the STATE, never from the applying site's config once the cluster has an incarnation:
    that is what makes :func:`apply` give the same state at every site and on every replay,
    whatever each site's ``[[sites]]`` says at that moment (a key rotated, a witness added).

    * An adopted incarnation: the keys its agreed membership (``incarnation.members``, as
      changed by applied ``set_members``) records for the site; () for a site that is not a
      member (nothing it signs is accepted). Keys revoked through Raft are refused by the caller
      (``revoked``), so a revoked key recorded in the membership stays refused.
    * No incarnation yet, a ``found``: the keys its own proposed ``members`` give its proposer
      (() when it names none or is malformed: the op refuses it anyway); adoption needs a
      majority of identical lists from configured sites (:func:`_op_found`). :func:`apply` has
      refused it already unless it also verifies under the keys the founding reference pins for
      its proposer (:func:`founding_key_problem`, for rules 1 too).
    * No incarnation yet, any other command: the keys ``trust`` pins for the site (the local
      config). This is the one config-dependent rule, and the window it covers holds only
      ``found`` commands in a cluster of daemons (a site proposes nothing else before it
      joined, ``SiteDaemon._bootstrap``); unit tests of the ops run whole states in it.

    Returns None in unsigned mode (``trust`` None or ``trust.keys`` None). Never raises."""
    if trust is None or trust.keys is None:
        return None
    by = command.get("by") if isinstance(command, dict) else None
    inc = state.get("incarnation")
    if inc is not None:
        return member_keys(state, by)
    if isinstance(command, dict) and command.get("op") == "found":
        for m in command.get("members") if isinstance(command.get("members"), list) else ():
            if isinstance(m, dict) and m.get("site_id") == by:
                return _raw_keys(m.get("keys"))
        return ()
    return trust.keys.get(by) or ()


def member_keys(state: dict, site_id: Any) -> tuple[bytes, ...]:
    """The raw keys the agreed membership of ``state`` records for ``site_id`` (() when the
    state has no incarnation or the site is not a member). Revoked keys are included: callers
    refuse them through ``revoked``. Never raises."""
    inc = state.get("incarnation") or {}
    for m in inc.get("members") or ():
        if m["site_id"] == site_id:
            return _raw_keys(m["keys"])
    return ()


def _check_identity(state: dict, command: dict, trust: Trust) -> None:
    """``bad_signature`` unless the command is for this cluster and signed by the site in
    ``by`` with a key :func:`signing_keys` gives it; ``revoked`` when it is signed by a key (or,
    unsigned, sent by a site) revoked through Raft."""
    by = command["by"]
    revoked = state.get("revoked") or {}
    if trust.keys is None:
        if by in revoked:
            raise _Refusal("revoked", f"{command['op']} by {by!r}: the site was revoked", by=by, op=command["op"])
        return
    revoked_keys = {k for entry in revoked.values() for k in entry.get("keys", ())}
    keys = signing_keys(state, command, trust)
    problem = identity.signature_problem(command, keys, revoked_keys)
    if problem == "revoked key":
        raise _Refusal("revoked", f"{command['op']} by {by!r}: signed with a key revoked through Raft",
                       by=by, op=command["op"], problem=problem)
    if problem is not None:
        where = ("recorded for it in the cluster's agreed membership" if state.get("incarnation") is not None
                 else "its own found proposal gives it" if command["op"] == "found" else "pinned for it")
        raise _Refusal("bad_signature", f"{command['op']} by {by!r}: {problem} (not signed by a key {where})",
                       by=by, op=command["op"], problem=problem)
    if command.get(identity.CLUSTER_FIELD) != trust.cluster_id:
        raise _Refusal("bad_signature", f"{command['op']} by {by!r}: signed for cluster "
                       f"{_safe(command.get(identity.CLUSTER_FIELD))!r}, this is {trust.cluster_id!r}",
                       by=by, op=command["op"], problem="other cluster")


def _check_fresh(state: dict, command: dict, trust: Trust) -> None:
    """``replayed``: this site's op id was seen already, or the command is older than what
    the site's replay memory still covers; ``expired``: stamped more than the replay window
    before the majority clock."""
    by, now_ns, op_id = command["by"], command["now_ns"], command["op_id"]
    seen = (state.get("seen") or {}).get(by)
    if seen is not None and (op_id in seen["ops"] or now_ns <= seen["floor_ns"]):
        raise _Refusal("replayed", f"{command['op']} by {by!r}: op id {op_id!r} was already seen (replay)",
                       by=by, op=command["op"], op_id=op_id)
    quorum_now = quorum_now_ns(state)
    if quorum_now is not None and now_ns < quorum_now - trust.replay_window_ns:
        raise _Refusal("expired", f"{command['op']} by {by!r}: stamped {(quorum_now - now_ns) // 10**9} s before "
                       f"the majority clock (window {trust.replay_window_ns // 10**9} s)",
                       by=by, op=command["op"], now_ns=now_ns, quorum_now_ns=quorum_now)


def _with_seen(state: dict, command: Any, trust: Trust) -> dict:
    """Remember ``(by, op_id, now_ns)`` for replay checks; per site at most
    :data:`SEEN_PER_SITE_MAX` op ids; what is forgotten raises the site's ``floor_ns``."""
    by, op_id, now_ns = _peek_str(command, "by"), _peek_str(command, "op_id"), _peek_int(command, "now_ns")
    if by is None or op_id is None or not _valid_op_id(op_id):
        return state
    if trust.keys is None:
        known = state.get("sites", {})
    elif state.get("incarnation") is not None:  # the agreed members: never the local config (determinism)
        known = {m["site_id"] for m in state["incarnation"]["members"]}
    else:
        known = trust.keys
    if by not in known:
        return state
    all_seen = state.get("seen") or {}
    entry = all_seen.get(by) or {"ops": {}, "floor_ns": 0}
    ops = {**entry["ops"], op_id: now_ns}
    floor_ns = entry["floor_ns"]
    if len(ops) > SEEN_PER_SITE_MAX:
        ordered = sorted(ops.items(), key=lambda kv: kv[1], reverse=True)
        kept = SEEN_PER_SITE_MAX * 3 // 4  # forget a quarter at once: the copy is paid rarely
        floor_ns = max(floor_ns, ordered[kept][1])
        ops = dict(ordered[:kept])
    return {**state, "seen": {**all_seen, by: {"ops": ops, "floor_ns": floor_ns}}}


def _with_clock(state: dict, command: Any) -> dict:
    """Remember the proposer's clock (``now_ns``) if it is a registered site."""
    by, now_ns = _peek_str(command, "by"), _peek_int(command, "now_ns")
    if by is None or now_ns is None or by not in state.get("sites", {}):
        return state
    return {**state, "clocks": {**state.get("clocks", {}), by: now_ns}}


def _check_envelope(command: Any, ops: dict) -> Callable[[dict, dict], tuple[dict, dict]]:
    """The handler of ``command``'s op in the op table ``ops`` (:data:`_OPS`, or
    :data:`_OPS_RULES2` under rules 2) after its envelope checks (version, op, op id, ``by``,
    ``now_ns``, the op's allowed and required keys). Raises _Refusal ``bad_request``."""
    if not isinstance(command, dict):
        raise _Refusal("bad_request", "command must be a map")
    if command.get("v") != COMMAND_VERSION or isinstance(command.get("v"), bool):
        raise _Refusal("bad_request", "unknown command version", version=_safe(command.get("v")))
    op = command.get("op")
    if not isinstance(op, str) or op not in ops:
        raise _Refusal("bad_request", "unknown op", op=_safe(op))
    if not _valid_op_id(command.get("op_id")):
        raise _Refusal("bad_request", "op_id must be a non-empty string", op=op)
    _site_id(command, "by")
    _int(command, "now_ns")
    if "approved_by" in command:
        raise _Refusal("bad_request", "approved_by is no longer accepted: a change that weakens protection is a "
                       "request that operators at other sites approve (replicad requests, replicad approve REQ)",
                       op=op, field="approved_by")
    allowed, required = ops[op][1], ops[op][2]
    unknown = sorted(str(k) for k in command if k not in COMMON_KEYS and k not in allowed)
    missing = sorted(k for k in required if k not in command)
    if unknown or missing:
        raise _Refusal("bad_request", f"{op}: unknown keys {unknown}, missing keys {missing}",
                       op=op, unknown=unknown, missing=missing)
    return ops[op][0]


def counted_reason(result: Any) -> str | None:
    """The reason a refused ``result`` is counted under (``replicad_command_refused_total``,
    logged at WARNING by the Raft node): its code when in :data:`COUNTED_REFUSALS`, else its
    evidence's ``refusal`` when in :data:`COUNTED_CONFLICTS`; None when it is not counted. Pure."""
    if not isinstance(result, dict) or result.get("ok"):
        return None
    if result.get("error") in COUNTED_REFUSALS:
        return result["error"]
    reason = (result.get("evidence") or {}).get("refusal") if isinstance(result.get("evidence"), dict) else None
    return reason if reason in COUNTED_CONFLICTS else None


def _refused(code: str, message: str, **evidence: Any) -> dict:
    return {"ok": False, "error": code, "message": message, "evidence": evidence}


def _with_audit(state: dict, command: Any, result: dict, signer: str | None = None) -> dict:
    """``state`` with the audit record of ``command`` and its ``result`` appended: ``{"op", "by",
    "volume", "ok", "error", "at_ns"}`` (what the command claims, and its outcome). Under rules 1..3
    the list keeps the last :data:`AUDIT_MAX`. Under :data:`RULES_AUDIT_BY_SIGNER` and later the record
    also carries ``signer`` (the site whose signature and freshness were checked, :func:`audit_signer`,
    or None: the share of unattributed claims) and ``n`` (the command's count, ``state["applied"] + 1``;
    the Raft node counts identically at every site), and the list is cut by shares past
    :data:`AUDIT_KEPT_MAX` (:func:`audit_trim`), the dropped records counted under :data:`AUDIT_DROPPED`."""
    record = {"op": _peek_str(command, "op"), "by": _peek_str(command, "by"),
              "volume": _peek_str(command, "volume"), "ok": bool(result.get("ok")),
              "error": result.get("error"), "at_ns": _peek_int(command, "now_ns")}
    if rules(state) < RULES_AUDIT_BY_SIGNER:
        audit = list(state.get("audit", ()))[-(AUDIT_MAX - 1):]
        audit.append(record)
        return {**state, "audit": audit}
    record["signer"] = signer
    record["n"] = _applied_count(state) + 1
    audit = list(state.get("audit", ()))
    audit.append(record)
    if len(audit) <= AUDIT_KEPT_MAX:
        return {**state, "audit": audit}
    kept, dropped = audit_trim(audit, AUDIT_KEPT_AFTER_TRIM, state.get(AUDIT_UNCOUNTED))
    counts = dict(state.get(AUDIT_DROPPED) or {})
    for share, (n, newest) in dropped.items():
        was = counts.get(share) if isinstance(counts.get(share), list) else [0, None]
        counts[share] = [was[0] + n, newest if not _is_int(was[1]) or (_is_int(newest) and newest > was[1]) else was[1]]
    if len(counts) > AUDIT_DROPPED_KEYS_MAX:  # the shares that dropped the newest records
        counts = dict(sorted(counts.items(), key=lambda kv: (kv[1][1] if _is_int(kv[1][1]) else -1, kv[0]),
                             reverse=True)[:AUDIT_DROPPED_KEYS_MAX])
    return {**state, "audit": kept, AUDIT_DROPPED: counts}


def audit_share(record: Any) -> str:
    """The share an audit record counts against (:func:`audit_trim`): its ``signer`` (a site id), or
    ``""`` for a record no checked signature attributes (``signer`` None: forged, replayed, stale,
    malformed or revoked commands; records of rules 1..3 refused ones). Pure."""
    signer = record.get("signer") if isinstance(record, dict) else None
    return signer if isinstance(signer, str) else ""


def audit_notable(record: Any) -> bool:
    """True for an accepted record whose op is not :data:`AUDIT_ROUTINE_OPS` (a registration, a
    request, an approval, a veto, a request's action run, a role change, a rules raise, a founding
    ...): the records a share keeps longest (:func:`audit_trim`). Pure."""
    return isinstance(record, dict) and record.get("ok") is True and record.get("op") not in AUDIT_ROUTINE_OPS


def audit_trim(audit: list, target: int,
               uncounted: int | None = None) -> tuple[list, dict[str, tuple[int, int | None]]]:
    """``(kept, dropped)``: ``audit`` (records oldest first) cut to at most ``target`` records by
    shares (:func:`audit_share`): the level is the highest count ``L`` with ``sum(min(count, L))``
    at most ``target`` over the shares; every share above it keeps ``L`` of its records, losing its
    oldest not :func:`audit_notable` ones first, then its oldest notable ones; the others keep all.
    ``kept`` is in ``audit``'s order; ``dropped`` is ``{share: (records dropped, the newest ``n``
    among them)}``, a record without ``n`` (kept from before the raise to rules 4) counted as of
    command ``uncounted`` (:data:`AUDIT_UNCOUNTED`; None: not counted). A flood of one share (one
    signing site, or the unattributed claims) thus drops
    only its own records (max-min fair shares; ARCHITECTURE.md, Choices, "One site's share of the
    kept audit"). Pure; O(records)."""
    counts: dict[str, int] = {}
    for record in audit:
        share = audit_share(record)
        counts[share] = counts.get(share, 0) + 1
    if len(audit) <= target:
        return list(audit), {}
    low = fair_level(counts, target)
    excess = {share: c - low for share, c in counts.items() if c > low}
    routine: dict[str, list[int]] = {share: [] for share in excess}
    notable: dict[str, list[int]] = {share: [] for share in excess}
    for i, record in enumerate(audit):
        share = audit_share(record)
        if share in excess:
            (notable if audit_notable(record) else routine)[share].append(i)
    drop: set[int] = set()
    dropped: dict[str, tuple[int, int | None]] = {}
    for share, n in excess.items():
        gone = (routine[share] + notable[share])[:n]
        drop.update(gone)
        ns = [audit[i].get("n") if _is_int(audit[i].get("n")) else uncounted
              for i in gone if isinstance(audit[i], dict)]
        ns = [n for n in ns if _is_int(n)]
        dropped[share] = (len(gone), max(ns) if ns else None)
    return [r for i, r in enumerate(audit) if i not in drop], dropped


def fair_level(counts: dict[str, int], target: int) -> int:
    """The max-min fair level of shares holding ``counts`` (``{share: items}``, each >= 0) cut to
    ``target`` items: the highest ``L`` (0 <= L <= the largest count) with ``sum(min(count, L))`` at
    most ``target`` (binary search; :func:`audit_trim`, :func:`applied_trim`). Pure;
    O(shares * log(items))."""
    low, high = 0, max(counts.values(), default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(c, mid) for c in counts.values()) <= target:
            low = mid
        else:
            high = mid - 1
    return low


def applied_trim(applied: dict, target: int) -> dict:
    """``applied`` (the exactly-once memory keyed by :func:`applied_key` under
    :data:`RULES_SIGNER_KEYED` and later, oldest first) cut to at most ``target`` answers by shares:
    a key's share is its signing site (the text before its first NUL; a key without one is its own
    empty-site share, as :func:`applied_key` keys a ``by`` that is not a string); every share above
    the level (:func:`fair_level`) keeps its newest ``L`` answers, losing its own oldest; the others
    keep all. Insertion order kept (msgpack keeps it: every site cuts alike). Pure; O(answers)."""
    if len(applied) <= target:
        return dict(applied)
    shares = [key.partition("\x00")[0] if isinstance(key, str) else "" for key in applied]
    counts: dict[str, int] = {}
    for share in shares:
        counts[share] = counts.get(share, 0) + 1
    level = fair_level(counts, target)
    drop = {share: c - level for share, c in counts.items() if c > level}
    kept = {}
    for share, (key, result) in zip(shares, applied.items()):
        if drop.get(share, 0) > 0:
            drop[share] -= 1
            continue
        kept[key] = result
    return kept


def audit_signer(state: dict, command: Any, trust: Trust | None) -> str | None:
    """The site a command's audit record is attributed to (:func:`audit_share`), once its
    signature, key and freshness were checked: its ``by`` when that is a site the command could be
    checked for (once founded, a member of the agreed membership; before, a site with keys in what
    its signature was checked against, :func:`signing_keys`: a ``found``'s own members, for any
    other command those ``trust`` pins, so that a ``found`` is attributed alike at every site
    whatever its ``[[sites]]`` says; in unsigned mode, and with ``trust`` None in unit tests, a
    registered site), else None. The caller passes it only for a command not refused for its
    envelope or identity. Pure."""
    by = _peek_str(command, "by")
    if by is None:
        return None
    if trust is None or trust.keys is None:
        return by if by in (state.get("sites") or {}) else None
    if state.get("incarnation") is not None:
        return by if any(m.get("site_id") == by for m in state["incarnation"].get("members") or ()) else None
    return by if signing_keys(state, command, trust) else None


def audit_by_signer(state: dict) -> list:
    """``state``'s ``audit``, kept under rules 1..3, with the fields of :func:`_with_audit` under
    :data:`RULES_AUDIT_BY_SIGNER`: ``signer`` its ``by`` for an accepted record of a site
    :func:`audit_signer` would attribute now (the command was accepted: its signature had been
    checked), None for a refused one (its ``by`` is a claim nobody checked); ``n`` None (the count
    of its command is not known: at most the raise's :data:`AUDIT_UNCOUNTED`). Order kept. Pure."""
    out = []
    for record in state.get("audit") or ():
        if not isinstance(record, dict):
            continue
        by = record.get("by")
        known = isinstance(by, str) and (by in (state.get("sites") or {}) or any(
            m.get("site_id") == by for m in (state.get("incarnation") or {}).get("members") or ()))
        out.append({**record, "signer": by if record.get("ok") is True and known else None, "n": None})
    return out


def audit_kept_since(state: Any, count: int) -> bool | None:
    """Whether ``state``'s ``audit`` still holds every record of the commands after the first
    ``count`` (each share's newest dropped record, :data:`AUDIT_DROPPED`, is of a command up to
    ``count``); None under rules 1..3 (records carry no count: only the list's overlap with an
    earlier one can tell). Pure; never raises."""
    if not isinstance(state, dict) or rules(state) < RULES_AUDIT_BY_SIGNER:
        return None
    for entry in (state.get(AUDIT_DROPPED) or {}).values() if isinstance(state.get(AUDIT_DROPPED), dict) else ():
        newest = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if not _is_int(newest) or newest > count:
            return False
    return True


def _applied_count(state: dict) -> int:
    """``state["applied"]`` (the commands the Raft node counted), 0 when absent or malformed."""
    applied = state.get("applied", 0)
    return applied if _is_int(applied) and applied >= 0 else 0


def _with_applied(state: dict, op_id: str, result: dict) -> dict:
    """``state`` with ``result`` stored under ``op_id`` (its :func:`applied_key`) in the exactly-once
    memory: under rules 1..3 the last :data:`APPLIED_OPS_MAX` kept, oldest first out whoever signed
    it; under :data:`RULES_AUDIT_BY_SIGNER` and later, past :data:`APPLIED_KEPT_MAX` cut to
    :data:`APPLIED_OPS_MAX` by signing site (:func:`applied_trim`). Pure."""
    applied = dict(state.get("applied_ops", {}))
    applied[op_id] = result
    if rules(state) >= RULES_AUDIT_BY_SIGNER:
        if len(applied) > APPLIED_KEPT_MAX:
            applied = applied_trim(applied, APPLIED_OPS_MAX)
        return {**state, "applied_ops": applied}
    while len(applied) > APPLIED_OPS_MAX:
        del applied[next(iter(applied))]
    return {**state, "applied_ops": applied}


def _peek_str(command: Any, key: str) -> str | None:
    value = command.get(key) if isinstance(command, dict) else None
    return value[:NAME_MAX_CHARS] if isinstance(value, str) else None


def _peek_int(command: Any, key: str) -> int:
    value = command.get(key) if isinstance(command, dict) else None
    return value if _is_int(value) and 0 <= value <= INT_MAX else 0


def _safe(value: Any) -> Any:
    """A short, msgpack-able rendering of an untrusted value for evidence (a string with a
    non-printable character as its ``unicode_escape`` text: evidence is logged)."""
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) <= INT_MAX else str(value)[:40]
    if isinstance(value, str):
        value = value[:NAME_MAX_CHARS]
        return value if printable(value) else value.encode("unicode_escape").decode("ascii")[:NAME_MAX_CHARS]
    return type(value).__name__


def _valid_op_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= OP_ID_MAX_CHARS


# --------------------------------------------------------------------------- field validators


def is_int(value: Any) -> bool:
    """True for a plain ``int`` (never a ``bool``, which is an ``int`` in Python): the type check of
    every integer field the state machine reads from a command, a decoded state or a record. Pure."""
    return isinstance(value, int) and not isinstance(value, bool)


_is_int = is_int


def _int(command: dict, key: str, minimum: int = 0) -> int:
    value = command.get(key)
    if not _is_int(value) or not minimum <= value <= INT_MAX:
        raise _Refusal("bad_request", f"{key} must be an integer in [{minimum}, 2**63-1]",
                       field=key, value=_safe(value))
    return value


NOT_PRINTABLE_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD),
    (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x1680, 0x1680), (0x180E, 0x180E), (0x2000, 0x200F),
    (0x2028, 0x202F), (0x205F, 0x2064), (0x2066, 0x206F), (0x3000, 0x3000), (0xD800, 0xF8FF), (0xFDD0, 0xFDEF),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0xFFFE, 0xFFFF), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0x1FFFE, 0x1FFFF), (0x2FFFE, 0x2FFFF),
    (0x3FFFE, 0x3FFFF), (0x4FFFE, 0x4FFFF), (0x5FFFE, 0x5FFFF), (0x6FFFE, 0x6FFFF), (0x7FFFE, 0x7FFFF),
    (0x8FFFE, 0x8FFFF), (0x9FFFE, 0x9FFFF), (0xAFFFE, 0xAFFFF), (0xBFFFE, 0xBFFFF), (0xCFFFE, 0xCFFFF),
    (0xDFFFE, 0xDFFFF), (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xEFFFE, 0x10FFFF))
"""Code points :func:`printable` refuses (inclusive ranges): those ``str.isprintable`` refused under
Unicode 14.0 (Python 3.11) that are assigned or permanent: controls (Cc), format characters (Cf:
bidi overrides, zero-width ones), surrogates, private use, line and paragraph separators, every
space but U+0020, and the noncharacters. Frozen here, not read from the interpreter: which code
points are unassigned (also refused by ``isprintable``) changes with the Unicode version of the
Python a site runs (Python 3.12's Unicode 15.0 assigned U+1FAE8, which 3.11 refuses), and a Raft
decision taken by that table would differ between two sites running the same release."""
_NOT_PRINTABLE = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in NOT_PRINTABLE_RANGES) + "]")


def printable(text: str) -> bool:
    """True when ``text`` holds no code point of :data:`NOT_PRINTABLE_RANGES`: the printable test
    of every replicated decision (names, reasons, stats), the same whatever Python's Unicode
    version (a code point unassigned in one version is accepted). Pure."""
    return _NOT_PRINTABLE.search(text) is None


def _str(command: dict, key: str, max_chars: int = NAME_MAX_CHARS, empty_ok: bool = False) -> str:
    """``command[key]``: a string of 1 (0 with ``empty_ok``) to ``max_chars`` printable characters
    (:func:`printable`: no newline, tab, control, format or separator character but the space).
    ``bad_request`` otherwise (evidence ``refusal`` ``not_printable`` for such a character): names
    and reasons are written into every site's log, and a newline in a signed reason or volume name
    wrote whole forged lines there (review R9, F6)."""
    value = command.get(key)
    if not isinstance(value, str) or len(value) > max_chars or (not value and not empty_ok):
        raise _Refusal("bad_request", f"{key} must be a string of 1..{max_chars} characters",
                       field=key, value=_safe(value))
    if not printable(value):
        raise _Refusal("bad_request", f"{key} must be printable text (no control characters such as a newline)",
                       field=key, value=_safe(value), refusal="not_printable")
    return value


def _site_id(command: dict, key: str) -> str:
    return _str(command, key)


def _bool(command: dict, key: str, default: bool = False) -> bool:
    value = command.get(key, default)
    if not isinstance(value, bool):
        raise _Refusal("bad_request", f"{key} must be a boolean", field=key, value=_safe(value))
    return value


def _choice(command: dict, key: str, choices: tuple[str, ...]) -> str:
    value = command.get(key)
    if value not in choices or not isinstance(value, str):
        raise _Refusal("bad_request", f"{key} must be one of {list(choices)}",
                       field=key, value=_safe(value))
    return value


def _retention(command: dict) -> dict:
    value = command.get("retention")
    if not isinstance(value, dict) or set(value) != set(RETENTION_KEYS):
        raise _Refusal("bad_request", f"retention must be a map with exactly {list(RETENTION_KEYS)}",
                       field="retention")
    for key in RETENTION_KEYS:
        _int(value, key)
        if value[key] > RETENTION_MAX_S:  # 2**62 s of lock froze every site's deletions for good
            raise _Refusal("bad_request", f"retention {key} {value[key]} s is longer than {RETENTION_MAX_S} s "
                           "(ten years)", field="retention", key=key, value=value[key], max_s=RETENTION_MAX_S)
    return {key: value[key] for key in RETENTION_KEYS}


def retention_weakened(current: dict, proposed: dict) -> list[str]:
    """The keys of ``proposed`` (a retention map, :data:`RETENTION_KEYS`, seconds) shorter than in
    ``current``, sorted. Every key keeps more the longer it is (:func:`replicad.core.retention.plan_prune`:
    ``keep_all_s`` every snapshot, ``hourly_s`` / ``daily_s`` the windows thinned to one a UTC hour /
    day after it, ``lock_s`` nothing deleted), so a shorter one keeps fewer snapshots: a weakening.
    Pure; a missing key counts as 0."""
    return sorted(k for k in RETENTION_KEYS if proposed.get(k, 0) < current.get(k, 0))


STATS_READ = {"total_blocks": "blocks", "zero_blocks": "blocks", "changed_blocks": "blocks",
              "random_changed_blocks": "blocks", "changed_bytes": "bytes", "size_bytes": "count",
              "new_chunks": "count", "tainted_by": "count", "has_parent": "flag"}
"""The stats keys the daemons read (:func:`replicad.core.anomaly.judge`, the CLI, the metrics,
:func:`tainted_only`) and the integer each must be when present: ``blocks`` in [0, the commit's
block count], ``bytes`` in [0, that count x block size], ``count`` in [0, 2**63-1] (``size_bytes``, the
commit's size when it names none, is then bounded as that size, ``out_of_range``), ``flag`` 0 or 1
(:func:`stats_problem`).
A string ``random_changed_blocks`` once stopped every later snapshot of the volume at its next
primary (int() of it in the judge's history)."""


def stats_problem(stats: Any, n_blocks: int | None = None, block_size: int | None = None) -> str | None:
    """Why ``stats`` (one snapshot's stats map) is not what the daemons may read, or None.

    Args:
        stats: the map, from a command or a replicated record.
        n_blocks: the snapshot's block count (``ceil(size_bytes / block_size)``), None: not bounded
            beyond 2**63-1.
        block_size: the volume's block size in bytes, None: not bounded.

    A problem: not a map of at most :data:`STATS_MAX_KEYS` printable string keys of at most 64
    characters to scalars (None, bool, int, finite float, printable string of at most
    :data:`REASON_MAX_CHARS`), more than :data:`STATS_MAX_CHARS` characters of keys and strings in
    all, or a :data:`STATS_READ` key that is not an integer within its bound. Pure; never raises:
    readers of replicated records call it to skip a bad entry (recorded before this check)."""
    if not isinstance(stats, dict) or len(stats) > STATS_MAX_KEYS:
        return f"not a map of at most {STATS_MAX_KEYS} keys"
    chars = 0
    for key, value in stats.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64 or not printable(key):
            return f"key {_safe(key)!r} is not printable text of 1..64 characters"
        if not _plain_scalar(value) or (isinstance(value, str) and not printable(value)):
            return f"{key}: {_safe(value)!r} is not a number or printable text"
        chars += len(key) + (len(value) if isinstance(value, str) else 0)
    if chars > STATS_MAX_CHARS:
        return f"{chars} characters of keys and text, more than {STATS_MAX_CHARS}"
    blocks = n_blocks if n_blocks is not None else INT_MAX
    limits = {"blocks": blocks, "bytes": INT_MAX if n_blocks is None or block_size is None
              else min(INT_MAX, n_blocks * block_size), "count": INT_MAX, "flag": 1}
    for key, kind in STATS_READ.items():
        if key not in stats:
            continue
        value = stats[key]
        top = limits[kind]
        if not _is_int(value) or not 0 <= value <= top:
            return f"{key} must be an integer in [0, {top}], not {_safe(value)!r}"
    return None


def _stats(command: dict, n_blocks: int | None = None, block_size: int | None = None) -> dict:
    """``command["stats"]`` when :func:`stats_problem` finds nothing (bounded by ``n_blocks`` and
    ``block_size``), else ``bad_request`` (evidence ``refusal`` ``not_printable`` for a key or text
    that does not print, ``stats`` for the rest, ``problem``: what)."""
    value = command.get("stats")
    problem = stats_problem(value, n_blocks, block_size)
    if problem is not None:
        refusal = "not_printable" if "printable" in problem else "stats"
        raise _Refusal("bad_request", f"stats: {problem} (a map of at most {STATS_MAX_KEYS} printable keys to "
                       f"scalars, {STATS_MAX_CHARS} characters in all; {sorted(STATS_READ)} integers within the "
                       "volume's size)", field="stats", problem=problem, refusal=refusal)
    size = stats_bytes(value)
    if size > STATS_BYTES_PER_RECORD:
        raise _Refusal("bad_request", f"stats: {size} bytes, more than the {STATS_BYTES_PER_RECORD} one snapshot "
                       "record may carry", field="stats", stats_bytes=size,
                       max_stats_bytes=STATS_BYTES_PER_RECORD, refusal="stats_bytes")
    return dict(value)


def _plain_scalar(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str)):
        return not isinstance(value, str) or len(value) <= REASON_MAX_CHARS
    if isinstance(value, int):
        return -INT_MAX <= value <= INT_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def _seq_list(command: dict, key: str) -> list[int]:
    value = command.get(key)
    if not isinstance(value, list) or not 0 < len(value) <= PRUNE_MAX_SEQS or \
            not all(_is_int(s) and 0 <= s <= INT_MAX for s in value) or len(set(value)) != len(value):
        raise _Refusal("bad_request", f"{key} must be a non-empty list of distinct seqs", field=key)
    return value


# --------------------------------------------------------------------------- lookups


def _volume(state: dict, command: dict) -> tuple[str, dict]:
    name = _str(command, "volume")
    vol = state["volumes"].get(name)
    if vol is None:
        raise _Refusal("not_found", f"unknown volume {name!r}", volume=name)
    return name, vol


def _snapshot(vol: dict, name: str, seq: int) -> dict:
    snap = vol["snapshots"].get(seq)
    if snap is None:
        raise _Refusal("not_found", f"volume {name!r} has no snapshot {seq}", volume=name, seq=seq)
    return snap


def site_kind(state: dict, site_id: Any) -> str | None:
    """``"data"`` or ``"witness"``: the kind the agreed membership records for a registered
    site (the kind of its own registration before any incarnation, or for a registered site the
    membership no longer names); None for a site that is not registered. A site's own
    ``register_site`` never decides its kind once a membership is agreed: a compromised site
    re-registering itself would otherwise change who judges, holds and approves. Pure."""
    site = (state.get("sites") or {}).get(site_id)
    if site is None:
        return None
    for m in (state.get("incarnation") or {}).get("members") or ():
        if m["site_id"] == site_id:
            return m["kind"]
    return site["kind"]


def _with_member_kinds(sites: dict, members: list) -> dict:
    """``sites`` with each registered member's ``kind`` set to the one ``members`` (an agreed
    membership) records for it: the registrations never disagree with the membership."""
    kinds = {m["site_id"]: m["kind"] for m in members}
    if all(kinds.get(s, e["kind"]) == e["kind"] for s, e in sites.items()):
        return sites
    return {s: {**e, "kind": kinds.get(s, e["kind"])} for s, e in sites.items()}


def _data_site(state: dict, site_id: str, role: str) -> None:
    kind = site_kind(state, site_id)
    if kind is None:
        raise _Refusal("not_found", f"{role} {site_id!r} is not a registered site", site_id=site_id)
    if kind != "data":
        raise _Refusal("conflict", f"{role} {site_id!r} is a witness: it stores no volume data",
                       site_id=site_id, kind=kind)


def _check_epoch(name: str, vol: dict, epoch: int, field: str) -> None:
    if epoch != vol["epoch"]:
        raise _Refusal("stale_epoch", f"volume {name!r}: {field} {epoch} != current epoch {vol['epoch']}",
                       volume=name, epoch=epoch, current_epoch=vol["epoch"])


def _needs_approval(command: dict, what: str, **evidence: Any) -> None:
    """``approval_required`` unless ``command`` runs as the action of an approved request."""
    if command.get(_APPROVED) is not True:
        raise _Refusal("approval_required", f"{what} weakens protection: it must be a request approved by "
                       "operators at other sites (the admin API makes one: replicad requests, replicad approve REQ)",
                       by=command["by"], **evidence)


def _with_volume(state: dict, name: str, vol: dict) -> dict:
    return {**state, "volumes": {**state["volumes"], name: vol}}


def _with_snapshot(vol: dict, seq: int, snap: dict) -> dict:
    return {**vol, "snapshots": {**vol["snapshots"], seq: snap}}


def default_max_size_bytes(size_bytes: int) -> int:
    """The default agreed maximum (bytes) of a volume of ``size_bytes`` bytes: ``max(2 x
    size, size + 1 GiB)`` (:data:`MAX_SIZE_FACTOR`, :data:`MAX_SIZE_SLACK_BYTES`), never above
    :data:`SIZE_BYTES_MAX` (nor below ``size_bytes``). Pure."""
    size = max(0, int(size_bytes))
    return max(size, min(SIZE_BYTES_MAX, max(MAX_SIZE_FACTOR * size, size + MAX_SIZE_SLACK_BYTES)))


def max_size_bytes(vol: dict) -> int:
    """A volume's agreed maximum size in bytes: its recorded ``max_size_bytes``; for a volume
    recorded without one, :func:`default_max_size_bytes` of its ``size_bytes`` (registered by an
    older release), or :data:`SIZE_BYTES_MAX` while it was registered without a size (0: a
    source whose size its primary cannot read before the first snapshot) and has never
    committed: its first commit then records the default of its size. The same at every site
    (the state only). Every honest receiver refuses an announced manifest larger than this, and
    the state refuses such a commit. Pure."""
    recorded = vol.get("max_size_bytes")
    if _is_int(recorded):
        return recorded
    size = vol.get("size_bytes") or 0
    if size == 0 and not vol.get("last_seq"):
        return SIZE_BYTES_MAX
    return default_max_size_bytes(size)


def _max_size_base(state: dict, vol: dict) -> dict | None:
    """``vol``'s :data:`MAX_SIZE_BASE` while its window lasts by the majority clock (kept when
    there is no majority clock: nothing measures the window then), else None. Pure."""
    rec = vol.get(MAX_SIZE_BASE)
    if not isinstance(rec, dict) or not _is_int(rec.get("bytes")) or not _is_int(rec.get("at_ns")):
        return None
    quorum_now = quorum_now_ns(state)
    if quorum_now is not None and quorum_now - rec["at_ns"] >= MAX_SIZE_WINDOW_NS:
        return None
    return rec


def max_size_at_once(state: dict, vol: dict) -> int:
    """The largest agreed maximum (bytes) an approved ``set_max_size`` of ``vol`` may set at once,
    without cooling-off and not vetoable: :data:`MAX_SIZE_FACTOR` times the base, the current
    maximum (:func:`max_size_bytes`) or, within :data:`MAX_SIZE_WINDOW_NS` of the first raise that
    applied at once, the maximum before it if smaller (:data:`MAX_SIZE_BASE`); at most
    :data:`SIZE_BYTES_MAX`. So raises at once double the maximum at most once a day: a hostile
    primary with one approval (a stolen admin token, or an operator approving what looks routine)
    cannot lift every replica's chunk quota step by step in minutes. A larger one cools off
    (``trust.cooling_off_ns``) and any site may veto it, unless every unrevoked member approved it
    (ARCHITECTURE, Choices: "A volume's agreed maximum size"). Pure."""
    base = max_size_bytes(vol)
    rec = _max_size_base(state, vol)
    if rec is not None:
        base = min(base, rec["bytes"])
    return min(SIZE_BYTES_MAX, MAX_SIZE_FACTOR * base)


def max_size_cools_off(state: dict, entry: dict) -> bool:
    """True when ``entry`` (a request record) is a ``set_max_size`` of a known volume past
    :func:`max_size_at_once`: approved, it cools off, and any site may veto it. Pure."""
    if entry.get("action") != "set_max_size":
        return False
    vol = (state.get("volumes") or {}).get((entry.get("args") or {}).get("volume"))
    wanted = (entry.get("args") or {}).get("max_size_bytes")
    return vol is not None and _is_int(wanted) and wanted > max_size_at_once(state, vol)


# --------------------------------------------------------------------------- ops


def _op_register_site(state: dict, cmd: dict) -> tuple[dict, dict]:
    site_id = _site_id(cmd, "site_id")
    peer_url = _str(cmd, "peer_url", URL_MAX_CHARS)
    kind = _choice(cmd, "kind", SITE_KINDS)
    if cmd["by"] != site_id:  # a site registers itself only: its kind and address are its own word
        raise _Refusal("not_self", f"register_site by {cmd['by']!r} names {site_id!r}: a site may only register "
                       "itself", by=cmd["by"], site_id=site_id, op="register_site", kind=kind)
    inc = state.get("incarnation")
    agreed = next((m for m in inc["members"] if m["site_id"] == site_id), None) if inc is not None else None
    if agreed is not None and agreed["kind"] != kind:  # the agreed membership decides (set_members changes it)
        raise _Refusal("conflict", f"site {site_id!r} is a {agreed['kind']} site in the cluster's agreed "
                       f"membership: it cannot register as a {kind} (a set_members request changes a kind)",
                       site_id=site_id, kind=kind, agreed_kind=agreed["kind"])
    if kind == "witness":
        primary_of = sorted(n for n, v in state["volumes"].items() if v["primary"] == site_id)
        if primary_of:
            raise _Refusal("conflict", f"site {site_id!r} is primary of {primary_of}: cannot become a witness",
                           site_id=site_id, volumes=primary_of)
    old = state["sites"].get(site_id)
    if old is None:
        bounds = state.get("limits") or {}
        members = bounds.get("members")
        max_sites = bounds.get("max_sites", SITES_MAX)
        if inc is not None:  # the agreed membership decides, never the config the state started from
            members, max_sites = [m["site_id"] for m in inc["members"]], SITES_MAX
        if isinstance(members, list) and site_id not in members:
            raise _Refusal("conflict", f"site {site_id!r} is not a configured member of the cluster",
                           site_id=site_id, members=list(members))
        if len(state["sites"]) >= max_sites:
            raise _Refusal("conflict", f"the cluster already has {len(state['sites'])} sites, the most it may have",
                           site_id=site_id, max_sites=max_sites)
    entry = {"peer_url": peer_url, "kind": kind}
    sites = {**state["sites"], site_id: entry}
    new_state = {**state, "sites": sites}
    if is_revoked(state, site_id) and cmd["by"] == site_id:
        # signed by a key the revocation did not name (identity checked before any op): the site
        # was rebuilt with a new key pinned in every config; it may be a holder and primary again
        revoked = state["revoked"]
        new_state["revoked"] = {**revoked, site_id: {**revoked[site_id], "rejoined_ns": cmd["now_ns"]}}
    return new_state, {"ok": True, "site_id": site_id, "created": old is None}


def _op_add_volume(state: dict, cmd: dict) -> tuple[dict, dict]:
    name = _str(cmd, "volume")
    primary = _site_id(cmd, "primary")
    block_size = _int(cmd, "block_size", 1)
    size_bytes = _int(cmd, "size_bytes")
    if size_bytes > SIZE_BYTES_MAX:
        raise _Refusal("out_of_range", f"size_bytes {size_bytes} > {SIZE_BYTES_MAX} (1 PiB)", field="size_bytes",
                       size_bytes=size_bytes, max_size_bytes=SIZE_BYTES_MAX)
    default_max = default_max_size_bytes(size_bytes)
    max_size = _int(cmd, "max_size_bytes") if "max_size_bytes" in cmd else None
    if max_size is not None and max_size < size_bytes:
        raise _Refusal("bad_request", f"max_size_bytes {max_size} < size_bytes {size_bytes}", field="max_size_bytes",
                       size_bytes=size_bytes, max_size_bytes=max_size)
    min_copies = _int(cmd, "min_copies", 1)
    if min_copies > SITES_MAX:
        raise _Refusal("out_of_range", f"min_copies {min_copies} > {SITES_MAX} (the most sites a cluster has)",
                       field="min_copies", min_copies=min_copies, max_min_copies=SITES_MAX)
    retention = _retention(cmd)
    detection = cmd.get("detection")
    if detection is not None:  # the initial policy a site's [volumes.detection] sets (issue 14)
        problems = anomaly.policy_problems(detection)
        if problems:
            raise _Refusal("bad_request", f"detection policy: {'; '.join(problems)}", field="detection",
                           problems=problems)
        detection = {k: anomaly.with_defaults(detection)[k] for k in anomaly.POLICY_DEFAULTS}
        # one site registers a volume: it may not set detection on its own word, weaker (a signed
        # add_volume by a compromised site carried thresholds at 1.0 and encrypted mode, and
        # every site then judged ciphertext clean) or stricter (every threshold at 0: every
        # snapshot suspect at every site, standbys held, pruning stopped). The defaults only;
        # any other policy is a set_detection request others approve (the daemon makes it).
        changed = sorted(k for k in anomaly.POLICY_DEFAULTS if detection[k] != anomaly.POLICY_DEFAULTS[k])
        if changed:
            raise _Refusal("approval_required",
                           f"the initial detection policy of {name!r} differs from the defaults "
                           f"({', '.join(changed)}): register with the defaults, then request the change "
                           "(set_detection), which other sites approve", volume=name, changed=changed,
                           weakened=anomaly.weakened_keys(anomaly.POLICY_DEFAULTS, detection))
    if block_size & (block_size - 1):
        raise _Refusal("bad_request", "block_size must be a power of two", block_size=block_size)
    existing = state["volumes"].get(name)
    if existing is not None:
        if existing["block_size"] != block_size:
            raise _Refusal("conflict", f"volume {name!r} exists with block_size {existing['block_size']}",
                           volume=name, block_size=block_size, current_block_size=existing["block_size"])
        return state, {"ok": True, "volume": name, "created": False, "epoch": existing["epoch"]}
    if primary != cmd["by"]:  # a site registers a volume only as its own primary (squatting another's name)
        raise _Refusal("not_self", f"add_volume by {cmd['by']!r} names {primary!r} as primary of {name!r}: a "
                       "volume is registered by its initial primary only", by=cmd["by"], primary=primary,
                       volume=name, op="add_volume")
    longer = sorted(k for k in RETENTION_KEYS if retention[k] > DEFAULT_RETENTION[k])
    if longer:  # one site may not make every site keep copies longer: the daemon requests it (approvals)
        raise _Refusal("approval_required", f"the initial retention of {name!r} is longer than the defaults "
                       f"({', '.join(longer)}): register with at most {DEFAULT_RETENTION}, then request the change "
                       "(set_retention), which other sites approve", volume=name, lengthened=longer,
                       defaults=dict(DEFAULT_RETENTION))
    if max_size is not None and max_size > default_max:  # one site may not lift every site's chunk quota alone
        raise _Refusal("approval_required", f"the maximum size {max_size} of {name!r} is above the default for its "
                       f"size ({default_max} bytes): register with at most that, then request the change "
                       "(set_max_size), which other sites approve", volume=name, max_size_bytes=max_size,
                       default_max_size_bytes=default_max)
    _data_site(state, primary, "primary")
    _check_volume_quota(state, cmd["by"], name)
    gone = (state.get(REMOVED_VOLUMES) or {}).get(name) or {}  # a removed volume's name: start past its history
    epoch = int(gone.get("epoch", 0)) + 1
    vol = {"primary": primary, "epoch": epoch, "block_size": block_size, "size_bytes": size_bytes,
           "min_copies": min_copies, "retention": retention, "snapshots": {}, "last_seq": int(gone.get("last_seq", 0)),
           "registered_by": cmd["by"]}
    if max_size is not None or size_bytes > 0:  # size 0: not known yet, the first commit records it
        vol["max_size_bytes"] = default_max if max_size is None else max_size
    if detection is not None:
        vol["detection"] = detection
    return _with_volume(state, name, vol), {"ok": True, "volume": name, "created": True, "epoch": epoch}


def registered_by(vol: dict) -> str:
    """The site that registered ``vol`` (``registered_by``; its primary for a record without it). Pure."""
    by = vol.get("registered_by")
    return by if isinstance(by, str) else vol.get("primary", "")


def _check_volume_quota(state: dict, by: str, name: str) -> None:
    """``conflict`` when ``by`` registered :data:`VOLUMES_PER_SITE_MAX` volumes already (evidence
    ``refusal`` ``volume_quota``), or the cluster holds :data:`VOLUMES_MAX` volumes of unrevoked
    sites (or :data:`VOLUMES_HARD_MAX` in all)."""
    revoked = revoked_sites(state)
    mine = sum(1 for v in state["volumes"].values() if registered_by(v) == by)
    if mine >= VOLUMES_PER_SITE_MAX:
        raise _Refusal("conflict", f"{by!r} registered {mine} volumes already, the most one site may register "
                       f"(the other sites keep the rest of the cluster's {VOLUMES_MAX})", volume=name, by=by,
                       registered=mine, max_volumes_per_site=VOLUMES_PER_SITE_MAX, refusal="volume_quota")
    counted = sum(1 for v in state["volumes"].values() if registered_by(v) not in revoked)
    if counted >= VOLUMES_MAX or len(state["volumes"]) >= VOLUMES_HARD_MAX:
        raise _Refusal("conflict", f"the cluster already has {counted} volumes, the most it may have",
                       volume=name, max_volumes=VOLUMES_MAX, volumes=len(state["volumes"]))


def copies_needed(state: dict, vol: dict) -> int:
    """Holders a new snapshot of ``vol`` needs (O2): its ``min_copies``, the operators' choice.
    Not forced to 2 once two data sites exist (as it was against review R9, F5): with every bound
    on records the volume's own (:data:`SNAPSHOTS_MAX`, :data:`STATS_BYTES_PER_RECORD`) a second
    holder bounds no growth, since honest holders acknowledge what they stored; and in a cluster of
    two data sites and a witness it stopped every commit of the surviving site while the other was
    down or refused to acknowledge (review R10, F2). ``state`` is unused (kept for the callers). Pure."""
    return int(vol["min_copies"])


def stats_bytes(stats: Any) -> int:
    """Bytes one snapshot's ``stats`` count against :data:`STATS_BYTES_PER_RECORD`: each key's UTF-8
    length, plus each string value's UTF-8 length, or :data:`STATS_SCALAR_BYTES` for any other
    value (about its msgpack size in the state). Pure; 0 for anything but a map."""
    if not isinstance(stats, dict):
        return 0
    return sum(len(str(k).encode("utf-8", "replace")) +
               (len(v.encode("utf-8", "replace")) if isinstance(v, str) else STATS_SCALAR_BYTES)
               for k, v in stats.items())


def _op_commit_snapshot(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    seq = _int(cmd, "seq", 1)
    epoch = _int(cmd, "epoch")
    root = cmd.get("root")
    if not isinstance(root, bytes) or len(root) != ROOT_SIZE_BYTES:
        raise _Refusal("bad_request", f"root must be {ROOT_SIZE_BYTES} bytes", field="root")
    parent_seq = cmd.get("parent_seq")
    if parent_seq is not None:
        parent_seq = _int(cmd, "parent_seq")
    created_at_ns = _int(cmd, "created_at_ns")
    holders = cmd.get("holders")
    if not isinstance(holders, list) or not all(isinstance(h, str) and 0 < len(h) <= NAME_MAX_CHARS
                                                for h in holders) or len(set(holders)) != len(holders):
        raise _Refusal("bad_request", "holders must be a list of distinct site ids", field="holders")
    raw_stats = cmd.get("stats")
    verdict = _choice(cmd, "verdict", VERDICTS)
    size_bytes = cmd.get("size_bytes", raw_stats.get("size_bytes") if isinstance(raw_stats, dict) else None)
    if size_bytes is not None:
        size_bytes = _int({"size_bytes": size_bytes}, "size_bytes")
    # the stats the daemons read: integers within the volume's block count (review R10, F1); the
    # largest size the volume had bounds them (a shrunk image's scan may count the cut blocks)
    bound = max(size_bytes, int(vol.get("size_bytes") or 0)) if size_bytes is not None else max_size_bytes(vol)
    stats = _stats(cmd, -(-min(bound, SIZE_BYTES_MAX) // vol["block_size"]), vol["block_size"])
    # O3: only the primary under the current epoch produces snapshots.
    _check_epoch(name, vol, epoch, "epoch")
    if cmd["by"] != vol["primary"]:
        raise _Refusal("not_primary", f"{cmd['by']!r} is not the primary of {name!r}",
                       volume=name, by=cmd["by"], primary=vol["primary"], epoch=epoch)
    if seq <= vol["last_seq"]:
        raise _Refusal("conflict", f"volume {name!r}: seq {seq} <= last seq {vol['last_seq']}",
                       volume=name, seq=seq, last_seq=vol["last_seq"])
    if seq > vol["last_seq"] + SEQ_STEP_MAX:
        raise _Refusal("out_of_range", f"volume {name!r}: seq {seq} > last seq {vol['last_seq']} + {SEQ_STEP_MAX}",
                       volume=name, seq=seq, last_seq=vol["last_seq"], seq_step_max=SEQ_STEP_MAX)
    if size_bytes is not None and size_bytes > SIZE_BYTES_MAX:
        raise _Refusal("out_of_range", f"volume {name!r}: size_bytes {size_bytes} > {SIZE_BYTES_MAX} (1 PiB)",
                       volume=name, seq=seq, size_bytes=size_bytes, max_size_bytes=SIZE_BYTES_MAX)
    max_size = max_size_bytes(vol)
    if size_bytes is not None and size_bytes > max_size:
        raise _Refusal("out_of_range", f"volume {name!r}: size_bytes {size_bytes} > its agreed maximum {max_size}: a "
                       "larger volume is a set_max_size request other sites approve", volume=name, seq=seq,
                       size_bytes=size_bytes, max_size_bytes=max_size, refusal="max_size")
    for holder in holders:
        _data_site(state, holder, "holder")
    _check_acks(state, cmd, name, seq, epoch, root, holders, size_bytes, vol["block_size"])
    for holder in holders:  # a revoked site is no copy, whatever it acknowledged (unsigned mode too)
        if is_revoked(state, holder):
            raise _Refusal("conflict", f"holder {holder!r} was revoked", volume=name, seq=seq, holder=holder,
                           revoked=True)
    # O2: a snapshot is committed only once min_copies sites stored it (copies_needed).
    needed = copies_needed(state, vol)
    if len(holders) < needed:
        raise _Refusal("conflict", f"volume {name!r}: {len(holders)} holders < min_copies {needed}", volume=name,
                       seq=seq, holders=holders,
                       min_copies=vol["min_copies"], copies_needed=needed)
    if len(vol["snapshots"]) >= SNAPSHOTS_MAX:
        raise _Refusal("conflict", f"volume {name!r} already has {SNAPSHOTS_MAX} snapshot records (prune first)",
                       volume=name, seq=seq, max_snapshots=SNAPSHOTS_MAX)
    if parent_seq is not None and parent_seq not in vol["snapshots"]:
        raise _Refusal("not_found", f"volume {name!r}: parent snapshot {parent_seq} is not in the catalog",
                       volume=name, seq=seq, parent_seq=parent_seq)
    # taken while an operator cleared its parent: it descends from a clean snapshot now
    verdict = settled_verdict(vol, parent_seq, verdict, stats)
    verdict_reason = ""
    parent_snap = vol["snapshots"].get(parent_seq) if parent_seq is not None else None
    if verdict == "clean" and parent_snap is not None and parent_snap["verdict"] == "suspect":
        # issue 14: the child of a suspect snapshot is suspect whatever the primary says
        verdict = "suspect"
        verdict_reason = f"{TAINT_REASON_PREFIX}{parent_seq} (recorded by the cluster, not the primary)"
    # O4 under clock faults: a primary whose clock runs behind would stamp fresh snapshots as
    # old, making them prunable inside the lock window; never older than a majority's time
    # (found by the chaos campaign, scenario clock-step). That time is the majority's last
    # *report* and trails the truth by up to a report period (plus the proposal's latency):
    # a stamp behind it is dated at the end of that margin, so the lock never starts early
    # (found by clock-step seed 1: #1-#3 pruned 29 s after they were taken, lock 30 s).
    # A stamp only a little behind (less than the margin) is left alone: a commit that waited
    # for a straggler is stamped at its scan, before clocks other sites reported meanwhile;
    # dating it ahead would make RPO negative (found by a tester: RPO -9 s, a replica down).
    # The other way (issue "Lose nothing", item 12): a primary whose clock jumped ahead would
    # date snapshots a year out: unprunable for a year, RPO negative. A stamp further ahead of
    # the majority's clock than CLOCK_AHEAD_MARGIN_NS is capped there (the result says so: the
    # primary logs it, and replicad_clock_offset_seconds shows the offset).
    quorum_now = quorum_now_ns(state)
    stamped_ns = created_at_ns
    if quorum_now is not None and created_at_ns < quorum_now - CLOCK_LAG_MARGIN_NS:
        created_at_ns = quorum_now + CLOCK_LAG_MARGIN_NS
    elif quorum_now is not None and created_at_ns > quorum_now + CLOCK_AHEAD_MARGIN_NS:
        created_at_ns = quorum_now + CLOCK_AHEAD_MARGIN_NS
    snap = {"root": root, "epoch": epoch, "parent_seq": parent_seq, "created_at_ns": created_at_ns,
            "holders": list(holders), "verdict": verdict, "verdict_reason": verdict_reason, "stats": stats}
    if quorum_now is not None:
        # the majority's clock at commit: the slow windows credit their slack by it, not by the
        # primary's stamps (a sawtooth of stamps +590 s, -5 s multiplied the slack)
        snap["committed_ns"] = quorum_now
    if max_size == SIZE_BYTES_MAX and not _is_int(vol.get("max_size_bytes")):  # registered without a size
        max_size = default_max_size_bytes(size_bytes or 0)
    vol = {**_with_snapshot(vol, seq, snap), "last_seq": seq, "max_size_bytes": max_size}  # frozen: no ratchet
    vol.pop(INSTANT, None)  # the primary's first commit at its epoch: the instant recovery's writes are replicated
    if size_bytes is not None and size_bytes > vol["size_bytes"]:
        vol["size_bytes"] = size_bytes
    result = {"ok": True, "volume": name, "seq": seq, "epoch": epoch}
    if created_at_ns != stamped_ns:
        result["restamped"] = {"from_ns": stamped_ns, "to_ns": created_at_ns}
    return _with_volume(state, name, vol), result


def _check_acks(state: dict, cmd: dict, name: str, seq: int, epoch: int, root: bytes, holders: list,
                size_bytes: int | None, block_size: int) -> None:
    """``bad_ack`` unless every holder other than the proposer signed its "stored"
    acknowledgement of ``(cluster, volume, epoch, seq, root, size_bytes, n_blocks)``, ``n_blocks``
    being ``ceil(size_bytes / block_size)`` at the volume's block size (so a commit whose size
    differs from the manifest its holders checked, or without a size, is refused) (``acks``: ``{site_id:
    bytes(64)}``, :func:`replicad.core.identity.ack_problem`) with a key pinned for it and not
    revoked (the keys the agreed membership records, :func:`member_keys`, once the cluster has
    an incarnation: never the local config then). Without trust (unit tests of the ops) or in unsigned lab mode (``unsafe_unsigned``)
    acknowledgements are not checked, like command signatures; ``acks`` must still be a map of
    site ids to bytes when present."""
    acks = cmd.get("acks")
    if acks is None:
        acks = {}
    if not isinstance(acks, dict) or len(acks) > len(holders) or not all(
            isinstance(k, str) and k in holders and isinstance(v, bytes) and len(v) <= 128 for k, v in acks.items()):
        raise _Refusal("bad_request", "acks must map holders to their signed acknowledgements", field="acks")
    trust = cmd.get(_TRUST)
    if trust is None or trust.keys is None:
        return
    revoked_keys = {k for entry in (state.get("revoked") or {}).values() for k in entry.get("keys", ())}
    for holder in holders:
        if holder == cmd["by"]:
            continue
        keys = member_keys(state, holder) if state.get("incarnation") is not None else trust.keys.get(holder)
        n_blocks = -(-size_bytes // block_size) if size_bytes is not None else None
        problem = identity.ack_problem(acks.get(holder), keys, trust.cluster_id, name, epoch,
                                       seq, root, size_bytes, n_blocks, revoked_keys)
        if problem is not None:
            raise _Refusal("bad_ack", f"volume {name!r}: snapshot {seq} names {holder!r} as a holder without its "
                           f"signed acknowledgement of it at size_bytes {size_bytes} ({problem})", volume=name,
                           seq=seq, holder=holder, by=cmd["by"], problem=problem, size_bytes=size_bytes)


def _op_add_holder(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    seq = _int(cmd, "seq")
    site_id = _site_id(cmd, "site_id")
    snap = _snapshot(vol, name, seq)
    _data_site(state, site_id, "holder")
    if cmd["by"] != site_id:  # a holder vouches for itself: otherwise a primary could name any site
        raise _Refusal("conflict", "a site may only add itself as a holder",
                       volume=name, seq=seq, by=cmd["by"], site_id=site_id)
    if site_id in snap["holders"]:
        return state, {"ok": True, "volume": name, "seq": seq, "changed": False,
                       "holders": list(snap["holders"])}
    snap = {**snap, "holders": [*snap["holders"], site_id]}
    return (_with_volume(state, name, _with_snapshot(vol, seq, snap)),
            {"ok": True, "volume": name, "seq": seq, "changed": True, "holders": list(snap["holders"])})


def _op_remove_holder(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    seq = _int(cmd, "seq")
    site_id = _site_id(cmd, "site_id")
    snap = _snapshot(vol, name, seq)
    if cmd["by"] != site_id:
        raise _Refusal("conflict", "a site may only remove itself as a holder",
                       volume=name, seq=seq, by=cmd["by"], site_id=site_id)
    if site_id not in snap["holders"]:
        return state, {"ok": True, "volume": name, "seq": seq, "changed": False,
                       "holders": list(snap["holders"]),
                       "under_replicated": len(snap["holders"]) < vol["min_copies"]}
    holders = [h for h in snap["holders"] if h != site_id]
    snap = {**snap, "holders": holders}
    return (_with_volume(state, name, _with_snapshot(vol, seq, snap)),
            {"ok": True, "volume": name, "seq": seq, "changed": True, "holders": list(holders),
             "under_replicated": len(holders) < vol["min_copies"]})


def _op_promote(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    to = _site_id(cmd, "to")
    expected_epoch = _int(cmd, "expected_epoch")
    force = _bool(cmd, "force")
    instant = _bool(cmd, "instant")
    if instant and (not force or "snapshot" not in cmd):
        raise _Refusal("bad_request", "an instant recovery is a forced promotion naming the snapshot it serves "
                       "(force and snapshot)", volume=name, field="instant")
    _check_epoch(name, vol, expected_epoch, "expected_epoch")
    _data_site(state, to, "promotion target")
    if is_revoked(state, to):
        raise _Refusal("conflict", f"{to!r} was revoked by a majority: it cannot become the primary of {name!r} "
                       "(rebuild it with a new key first)", volume=name, to=to, revoked=True)
    if force:
        _data_site(state, cmd["by"], "forced promotion requester")
        if to != cmd["by"]:
            # a site takes a volume over itself (the daemon runs a forced promotion at the site to
            # promote); otherwise one compromised site could make an honest one roll its live image
            # back to a snapshot of its choosing (restore_pin), found by the attacker review
            raise _Refusal("conflict", f"a forced promotion promotes the site that asks for it: {cmd['by']!r} "
                           f"cannot force {to!r} to take {name!r} over (run it at {to!r})",
                           volume=name, by=cmd["by"], to=to)
    elif "snapshot" in cmd:
        raise _Refusal("bad_request", "only a forced promotion names the snapshot to restore (a planned "
                       "switchover hands over the newest one)", volume=name, field="snapshot")
    else:
        if cmd["by"] != vol["primary"]:
            raise _Refusal("not_primary", f"planned promotion of {name!r} must be asked by its primary "
                           f"{vol['primary']!r} (use force when it is unreachable)",
                           volume=name, by=cmd["by"], primary=vol["primary"], epoch=vol["epoch"])
        if to == vol["primary"]:
            raise _Refusal("conflict", f"{to!r} is already the primary of {name!r}",
                           volume=name, to=to, epoch=vol["epoch"])
    new_epoch = vol["epoch"] + 1
    pin = None
    if "snapshot" in cmd:
        pin = _restore_point(vol, name, _int(cmd, "snapshot"))
    if force:
        _check_instant(state, cmd, name, vol, "promote")
    vol = _check_epoch_rate(state, cmd, name, vol, "promote", force)
    vol = {**vol, "primary": to, "epoch": new_epoch}
    vol.pop(RESTORE_PIN, None)
    vol.pop(INSTANT, None)
    if pin is not None:
        vol[RESTORE_PIN] = {"epoch": new_epoch, "seq": pin}
    if instant:
        since = quorum_now_ns(state)
        vol[INSTANT] = {"epoch": new_epoch, "site": to, "seq": pin,
                        "since_ns": cmd["now_ns"] if since is None else since}
    result = {"ok": True, "volume": name, "epoch": new_epoch, "primary": to,
              "previous_primary": state["volumes"][name]["primary"], "forced": force}
    if pin is not None:
        result["snapshot"] = pin
    if instant:
        result["instant"] = True
    return _with_volume(state, name, vol), result


def primary_live(state: dict, vol: dict) -> bool:
    """True when the volume has a primary that is neither revoked nor silent: its last reported
    clock (``state["clocks"]``, its own signed commands, the 5 s heartbeats included) is within
    :data:`PRIMARY_SILENT_NS` of :func:`quorum_now_ns`. False while no majority clock exists.
    Only what the Raft log says: a primary cut off from the majority commits nothing, so it
    falls silent for every site alike. Pure."""
    primary = vol.get("primary")
    if primary is None or is_revoked(state, primary):
        return False
    quorum_now = quorum_now_ns(state)
    seen = (state.get("clocks") or {}).get(primary)
    return quorum_now is not None and _is_int(seen) and seen >= quorum_now - PRIMARY_SILENT_NS


def _check_epoch_rate(state: dict, cmd: dict, name: str, vol: dict, op: str, force: bool) -> dict:
    """The epoch-change rule (one site cannot keep a volume's epoch churning): a site's forced
    promote or demote of a volume (every one, whatever the primary's liveness: a Raft leader can
    silence one site's commands, its clock reports included, for up to point 19's 45 s undeposed,
    so liveness is what an attacker in the leader's seat sets; review R6: three free takeovers
    while the honest sites spent theirs; free: a planned switchover or demotion, the primary giving
    its own role away) is refused (``approval_required``, evidence ``refusal``
    ``epoch_rate``, counted) within :data:`EPOCH_WINDOW_NS` of its previous one by the majority
    clock, unless it runs as the action of a request other sites approved (``request`` with
    ``action`` ``promote`` or ``demote``: :func:`_needed` sites, no cooling-off, no veto).
    Returns ``vol`` with the change recorded under :data:`EPOCH_CHANGES` (or unchanged). No
    majority clock yet: no rule (nothing to measure a window with; no honest volume acts then).
    Deterministic: the majority clock only, never the signer's own ``now_ns``."""
    by = cmd["by"]
    quorum_now = quorum_now_ns(state)
    if quorum_now is None or not force:
        return vol
    changes = vol.get(EPOCH_CHANGES) or {}
    last = changes.get(by)
    if cmd.get(_APPROVED) is not True and _is_int(last) and quorum_now - last < EPOCH_WINDOW_NS:
        raise _Refusal("approval_required", f"{by!r} changed the role of {name!r} already {(quorum_now - last) // 10**9} s "
                       f"ago (majority clock): a second forced {op} by one site within {EPOCH_WINDOW_NS // 10**9} s "
                       f"needs the approval of other sites (a request: 'replicad approve' at another site)",
                       volume=name, by=by, op=op, primary=vol.get("primary"), primary_live=primary_live(state, vol),
                       epoch=vol["epoch"], last_change_ns=last, window_s=EPOCH_WINDOW_NS // 10**9,
                       refusal="epoch_rate")
    kept = {s: t for s, t in changes.items() if _is_int(t) and quorum_now - t < EPOCH_WINDOW_NS and s != by}
    return {**vol, EPOCH_CHANGES: {**kept, by: quorum_now}}


RESTORE_PIN = "restore_pin"
"""Volume key set by a forced ``promote`` naming its ``snapshot``: ``{"epoch": the new epoch,
"seq": the snapshot}``. The new primary restores exactly that snapshot at that epoch
(:func:`restore_pin`), never the newest clean one; any later promote or demote drops it."""


def _restore_point(vol: dict, name: str, seq: int) -> int:
    """``seq`` if it may be named as a forced promotion's restore point: committed
    (``not_found``), held by at least one site (``not_found``, evidence ``reason``), and clean
    (a suspect one must be cleared first through an approved ``mark_verdict``:
    ``snapshot_suspect``)."""
    snap = vol["snapshots"].get(seq)
    if snap is None:
        raise _Refusal("not_found", f"{name!r} has no committed snapshot #{seq}: only a committed snapshot can be "
                       "restored", volume=name, seq=seq, reason="not_committed")
    if not snap.get("holders"):
        raise _Refusal("not_found", f"{name!r}#{seq} is held by no site any more", volume=name, seq=seq,
                       reason="not_held")
    if snap.get("verdict") != "clean":
        raise _Refusal("snapshot_suspect", f"{name!r}#{seq} is {snap.get('verdict')}: clear its verdict first "
                       "(replicad verdict, approved by other sites) or name an older clean snapshot",
                       volume=name, seq=seq, verdict=snap.get("verdict"), reason=snap.get("verdict_reason"))
    return seq


def restore_pin(vol_state: dict) -> int | None:
    """The snapshot a forced promotion named for the current epoch (:data:`RESTORE_PIN`), or
    None (restore the newest clean one). Pure."""
    pin = vol_state.get(RESTORE_PIN)
    if isinstance(pin, dict) and pin.get("epoch") == vol_state.get("epoch") and _is_int(pin.get("seq")):
        return pin["seq"]
    return None


INSTANT = "instant"
"""Volume key set by a forced ``promote`` with ``instant`` (which names its ``snapshot``):
``{"epoch": the new epoch, "site": the new primary, "seq": the snapshot it serves, "since_ns":
the majority clock at the grant}``. That primary serves the snapshot at once through a
copy-on-write overlay while it restores the image (``replicad.site.instant``): the application's
writes since are at that site only, until the primary's first commit at that epoch (the overlay
was merged into the image before it: no snapshot is taken before the switch-over), which drops
the key; so does any later ``promote`` or ``demote``. While it stands, :func:`instant_recovery`."""


def instant_recovery(state: dict, vol: dict) -> dict | None:
    """The instant recovery ``vol``'s primary is in (:data:`INSTANT`: recorded at the current epoch
    for the current primary, which is not revoked, no commit at that epoch yet), or None. While
    there is one, a forced ``promote`` or ``demote`` by any other site is ``approval_required``
    (evidence ``refusal`` ``instant_recovery``, counted) unless it runs as an approved request
    (:func:`_check_instant`). Pure."""
    inst = vol.get(INSTANT)
    primary = vol.get("primary")
    if not isinstance(inst, dict) or primary is None or inst.get("epoch") != vol.get("epoch") \
            or inst.get("site") != primary or is_revoked(state, primary):
        return None
    return inst


def _check_instant(state: dict, cmd: dict, name: str, vol: dict, op: str) -> None:
    """The instant-recovery rule (ARCHITECTURE, Choices: "A primary in an instant recovery keeps
    the volume"): a forced ``op`` (``promote`` or ``demote``) of ``name`` by a site other than its
    primary, while the primary is in an instant recovery (:func:`instant_recovery`), takes the
    volume from a site whose overlay holds the only copy of the application's writes since the
    grant (another primary in between sets that overlay aside at its next takeover). It is
    refused (``approval_required``, evidence ``refusal`` ``instant_recovery``, counted) unless it
    runs as the action of a request other sites approved (``request`` with ``action`` ``promote``
    or ``demote``: :func:`_needed` sites, no cooling-off, no veto, as a second change within the
    hour). The primary's own changes (a planned switchover or demotion, a forced promotion of
    itself again) are its operator's and stay free. Deterministic: the state only."""
    inst = instant_recovery(state, vol)
    if inst is None or cmd["by"] == vol["primary"] or cmd.get(_APPROVED) is True:
        return
    raise _Refusal("approval_required", f"{vol['primary']!r} is in an instant recovery of {name!r} (serving "
                   f"#{inst.get('seq')} since epoch {inst.get('epoch')}; the application's writes since are in its "
                   f"overlay only, until its first snapshot at that epoch): a forced {op} by {cmd['by']!r} would take "
                   "the volume from it and needs the approval of other sites (a request: 'replicad approve' at "
                   "another site)",
                   volume=name, by=cmd["by"], op=op, primary=vol["primary"], epoch=vol["epoch"],
                   seq=inst.get("seq"), since_ns=inst.get("since_ns"), refusal="instant_recovery")


def _op_demote(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    expected_epoch = _int(cmd, "expected_epoch")
    force = _bool(cmd, "force")
    _check_epoch(name, vol, expected_epoch, "expected_epoch")
    if force:
        _data_site(state, cmd["by"], "forced demotion requester")
        if vol["primary"] is None:
            # it would fence nobody and only move the epoch: a forced promotion racing it (a
            # compare-and-set on the epoch) would fail, again and again
            raise _Refusal("conflict", f"{name!r} has no primary to demote (epoch {vol['epoch']})",
                           volume=name, epoch=vol["epoch"], primary=None)
    elif cmd["by"] != vol["primary"]:
        raise _Refusal("not_primary", f"demotion of {name!r} must be asked by its primary "
                       f"{vol['primary']!r} (or forced)", volume=name, by=cmd["by"],
                       primary=vol["primary"], epoch=vol["epoch"])
    if force:
        _check_instant(state, cmd, name, vol, "demote")
    vol = _check_epoch_rate(state, cmd, name, vol, "demote", force)
    new_epoch = vol["epoch"] + 1
    vol = {**vol, "primary": None, "epoch": new_epoch}
    vol.pop(RESTORE_PIN, None)
    vol.pop(INSTANT, None)
    return _with_volume(state, name, vol), {"ok": True, "volume": name, "epoch": new_epoch,
                                            "previous_primary": state["volumes"][name]["primary"]}


TAINT_STAT = "tainted_by"
"""Stats key a primary sets (to the parent's seq) on a snapshot it commits as ``suspect`` only
because its parent is suspect (its own score was below the threshold): the taint."""
TAINT_REASON_PREFIX = "descends from suspect snapshot #"
"""The same marker as a ``verdict_reason`` prefix (the primary's reason for a taint)."""


def tainted_only(snap: dict) -> bool:
    """True when ``snap`` is suspect only because it descends from its suspect parent (the
    primary marked it: stats :data:`TAINT_STAT` equal to its ``parent_seq``, or a
    ``verdict_reason`` starting with :data:`TAINT_REASON_PREFIX`). Snapshots without either
    marker (own score above the threshold, or committed before the marker existed) are not."""
    parent = snap.get("parent_seq")
    if snap.get("verdict") != "suspect" or parent is None:
        return False
    stats = snap.get("stats") or {}
    reason = snap.get("verdict_reason") or ""
    return (_is_int(stats.get(TAINT_STAT)) and stats[TAINT_STAT] == parent) or \
        reason.startswith(f"{TAINT_REASON_PREFIX}{parent}")


def settled_verdict(vol: dict, parent_seq: Any, verdict: str, stats: dict) -> str:
    """The verdict a commit records: ``clean`` for a snapshot marked as tainted only
    (:data:`TAINT_STAT`) whose parent is clean by the time the commit applies (an operator
    cleared it while the snapshot was being taken), else ``verdict`` as proposed."""
    parent = (vol.get("snapshots") or {}).get(parent_seq) if parent_seq is not None else None
    if verdict == "suspect" and parent is not None and parent["verdict"] == "clean" and \
            _is_int(stats.get(TAINT_STAT)) and stats[TAINT_STAT] == parent_seq:
        return "clean"
    return verdict


def _op_mark_verdict(state: dict, cmd: dict) -> tuple[dict, dict]:
    """A person's verdict on a snapshot, in the signing site's name.

    ``suspect``: that data site's suspect vote (a witness stores nothing to judge: ``conflict``),
    recorded once per site under :data:`MARKS` with ``recorded_ns`` (the majority's clock). It
    holds the marking site's own standby and takeover at once, for the snapshot and its
    descendants (:func:`held_by_marks`), pins pruning like a lone opinion (:func:`suspect_pins`)
    and counts toward :func:`mark_quorum` with the sites' opinions, one site once
    (:func:`suspect_voters`): the snapshot turns suspect for the cluster only on the words of
    :func:`mark_quorum` sites (three: one site and one stolen admin token of another give two
    sites' marks, review R7) or the detector opinions of :func:`suspect_quorum` sites
    (:func:`turns_suspect`; a confirmed one: on marks of :func:`mark_quorum` sites, which end the
    confirmation). Fewer marks change neither the cluster's verdict nor ``confirmed``
    (ARCHITECTURE "Choices": a person's ``verdict ... suspect`` is its site's vote).

    ``clean``: clearing a suspect snapshot runs only as an approved request; it also clears every
    later snapshot that was suspect only because it descends from it (:func:`tainted_only`,
    through a chain of such snapshots), so the primary's next snapshot is judged against a clean
    parent (a later snapshot suspect on its own score stays suspect, and so do its descendants).
    Approved, it confirms the snapshot and drops every mark; not approved (a clean snapshot), it
    withdraws the signing site's own mark. Result: ``verdict`` (the cluster's), ``cleared`` (the
    seqs cleared with it), ``changed``, and for ``suspect`` ``flipped``, ``suspect_sites`` (marks
    and opinions), ``needed`` (:func:`mark_quorum`), ``opinion_sites`` and ``needed_opinions``
    (:func:`suspect_quorum`)."""
    name, vol = _volume(state, cmd)
    seq = _int(cmd, "seq")
    verdict = _choice(cmd, "verdict", VERDICTS)
    reason = _str(cmd, "reason", REASON_MAX_CHARS, empty_ok=True)
    snap = _snapshot(vol, name, seq)
    by = cmd["by"]
    marks = dict(snap.get(MARKS) or {})
    if verdict == "suspect":
        _data_site(state, by, "a suspect mark's site")  # a witness holds no standby and judges no bytes
        changed = by not in marks
        if changed:
            mark = {"verdict": "suspect", "reason": reason, "at_ns": cmd["now_ns"]}
            first = dict(snap.get(MARKS_FIRST) or {})
            recorded = first.get(by, quorum_now_ns(state))
            if recorded is not None:  # what its pin is measured from (suspect_pins): not the marker's clock,
                mark["recorded_ns"] = recorded  # and never later than this site's first mark here
                first[by] = recorded
                snap = {**snap, MARKS_FIRST: first}
            marks[by] = mark
        snap = {**snap, MARKS: marks}
        voters, needed = suspect_voters(state, snap), mark_quorum(state)
        flipped = snap["verdict"] == "clean" and turns_suspect(state, snap)
        if flipped:  # a third site's word: suspect everywhere (and a confirmation made before ends)
            snap = {**snap, "verdict": "suspect", "confirmed": False,
                    "verdict_reason": f"{SITE_SUSPECT_PREFIX}{', '.join(voters)}: {reason}"[:REASON_MAX_CHARS]}
        return (_with_volume(state, name, _with_snapshot(vol, seq, snap)),
                {"ok": True, "volume": name, "seq": seq, "verdict": snap["verdict"], "cleared": [],
                 "changed": changed, "flipped": flipped, "suspect_sites": voters, "needed": needed,
                 "opinion_sites": opinion_voters(state, snap), "needed_opinions": suspect_quorum(state)})
    cleared: list[int] = []
    approved = cmd.get(_APPROVED) is True
    if snap["verdict"] == "suspect":
        # O4 / DESIGN §7: clearing a suspect snapshot re-enables its apply and pruning.
        _needs_approval(cmd, "clearing a suspect verdict", volume=name, seq=seq)
        clean_parents = {seq}
        for later in sorted(s for s in vol["snapshots"] if s > seq):
            child = vol["snapshots"][later]
            if child.get("parent_seq") in clean_parents and tainted_only(child):
                clean_parents.add(later)
                cleared.append(later)
    if not approved and by not in marks:  # nothing of its own to take back (a witness too): no change
        return state, {"ok": True, "volume": name, "seq": seq, "verdict": snap["verdict"], "cleared": [],
                       "changed": False}
    confirmed = bool(snap.get("confirmed") or approved)
    if approved:
        marks = {}  # the persons' agreed word: the marks made before it are answered
        snap = {**snap, "verdict_reason": reason}
        snap.pop(MARKS_FIRST, None)
    else:  # a site takes back its own mark only; the cluster's reason for the verdict stays
        marks.pop(by, None)
    snap = {**snap, "verdict": "clean", "confirmed": confirmed, MARKS: marks}
    if not marks:
        del snap[MARKS]
    vol = _with_snapshot(vol, seq, snap)
    for later in cleared:
        vol = _with_snapshot(vol, later, {**vol["snapshots"][later], "verdict": "clean", "verdict_reason":
                                          f"cleared with #{seq}: suspect only as its descendant ({reason})"[:REASON_MAX_CHARS]})
    return (_with_volume(state, name, vol),
            {"ok": True, "volume": name, "seq": seq, "verdict": "clean", "cleared": cleared, "changed": True})


def detection_policy(vol: dict) -> dict:
    """The volume's detection policy: what ``set_detection`` recorded, else
    :data:`replicad.core.anomaly.POLICY_DEFAULTS`."""
    return anomaly.with_defaults(dict(vol.get("detection") or anomaly.POLICY_DEFAULTS))


def _op_set_detection(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    policy = cmd.get("policy")
    problems = anomaly.policy_problems(policy)
    if problems:
        raise _Refusal("bad_request", f"detection policy: {'; '.join(problems)}", field="policy", problems=problems)
    _data_site(state, cmd["by"], "detection policy proposer")
    policy = {k: anomaly.with_defaults(policy)[k] for k in anomaly.POLICY_DEFAULTS}
    current = detection_policy(vol)
    if policy == current:
        return state, {"ok": True, "volume": name, "detection": dict(policy), "weakened": [], "changed": False}
    weakened = anomaly.weakened_keys(current, policy)
    if weakened:
        _needs_approval(cmd, f"weakening detection ({', '.join(weakened)})", volume=name, weakened=weakened)
    elif cmd.get(_APPROVED) is not True:  # stricter is no licence: all-zero thresholds hold every standby
        changed = sorted(k for k in policy if policy[k] != current[k])
        raise _Refusal("approval_required", f"a change of {name!r}'s detection policy ({', '.join(changed)}) "
                       "applies everywhere: it must be a request approved by operators at other sites, then "
                       "the cooling-off, stricter too (the admin API makes one: replicad requests, replicad approve "
                       "REQ; this site's [volumes.anomaly] tightens its own judging at once)",
                       by=cmd["by"], volume=name, changed=changed, weakened=[])
    return (_with_volume(state, name, {**vol, "detection": policy}),
            {"ok": True, "volume": name, "detection": dict(policy), "weakened": weakened, "changed": True})


SUSPECT_SITES_MIN = 2
"""Data sites whose own ``suspect`` opinions (``site_verdict``) make a snapshot suspect for the
cluster; every data site when there are fewer (:func:`suspect_quorum`). The threat model allows
one site to lie, so two words hold at least one honest site's; one site's word holds only its own
standby (ARCHITECTURE "Choices": one site's suspect opinion)."""


MARK_SITES_MIN = 3
"""Data sites whose suspect words, persons' marks (``mark_verdict``) counted with the detectors'
opinions, make a snapshot suspect for the cluster when fewer than :func:`suspect_quorum` sites'
detectors say so; every data site when there are fewer (:func:`mark_quorum`). The threat model
grants the attacker one site and one stolen admin token of another: two sites' marks (review
R7, F2: site-a's and the stolen token's at site-b) or one site's opinion and another's mark are
words the attacker can give; three sites' words hold at least one honest site's. A detector
opinion cannot be given through an admin token (ARCHITECTURE "Choices": a person's verdict is
its site's vote)."""


def _data_sites(state: dict) -> int:
    """The number of registered, unrevoked data sites (:func:`site_kind`). Pure."""
    return sum(1 for site in (state.get("sites") or {})
               if site_kind(state, site) == "data" and not is_revoked(state, site))


def suspect_quorum(state: dict) -> int:
    """The number of data sites (registered, not revoked; kinds by :func:`site_kind`) whose
    suspect opinions make a snapshot suspect for the cluster: :data:`SUSPECT_SITES_MIN`, or all
    of them when there are fewer (a one-site lab: its own word), at least 1. Pure."""
    return max(1, min(SUSPECT_SITES_MIN, _data_sites(state)))


def mark_quorum(state: dict) -> int:
    """The number of data sites whose suspect words, persons' marks and detector opinions
    counted together (:func:`suspect_voters`), make a snapshot suspect for the cluster:
    :data:`MARK_SITES_MIN`, or all of them when there are fewer, at least 1. Pure."""
    return max(1, min(MARK_SITES_MIN, _data_sites(state)))


def opinion_voters(state: dict, snap: dict) -> list[str]:
    """The registered, unrevoked data sites whose own detector opinion (``site_verdict``) on
    ``snap`` is ``suspect``, sorted; none on a snapshot a person confirmed clean (a confirmation
    outweighs the detectors). Persons' marks are not opinions. Pure."""
    if snap.get("confirmed"):
        return []
    return sorted(site for site, o in (snap.get("opinions") or {}).items()
                  if o.get("verdict") == "suspect" and site_kind(state, site) == "data" and not is_revoked(state, site))


def turns_suspect(state: dict, snap: dict) -> bool:
    """True when the sites' words on ``snap`` make it suspect for the cluster: the detector
    opinions of :func:`suspect_quorum` sites (:func:`opinion_voters`), or the words of
    :func:`mark_quorum` sites, marks and opinions together, one site once (:func:`suspect_voters`).
    Two sites' marks, or one site's mark and another's opinion, hold only the marking sites' own
    standbys and takeovers (:func:`held_by_marks`): review R7 (F2), one site and one stolen admin
    token of another give two sites' marks. Pure."""
    return len(opinion_voters(state, snap)) >= suspect_quorum(state) or \
        len(suspect_voters(state, snap)) >= mark_quorum(state)


def suspect_voters(state: dict, snap: dict) -> list[str]:
    """The registered, unrevoked data sites (:func:`site_kind`) whose word on ``snap`` is
    ``suspect``, sorted, each once: its own opinion (``site_verdict``) or a person's mark in its
    name (``mark_verdict``, :data:`MARKS`). On a snapshot a person confirmed clean only the marks
    count (an approved confirmation drops the marks made before it, and outweighs the detectors'
    opinions). Pure."""
    marks = {site for site, m in (snap.get(MARKS) or {}).items() if m.get("verdict") == "suspect"}
    opinions = set() if snap.get("confirmed") else {
        site for site, o in (snap.get("opinions") or {}).items() if o.get("verdict") == "suspect"}
    return sorted(site for site in marks | opinions
                  if site_kind(state, site) == "data" and not is_revoked(state, site))


MARKS = "marks"
"""Snapshot key: ``{site_id: {"verdict": "suspect", "reason": str, "at_ns": int, "recorded_ns": int}}``,
the persons' ``mark_verdict suspect`` of each data site (its suspect vote, :func:`suspect_voters`),
kept until that site's ``mark_verdict clean`` or an approved confirmation drops it."""

MARKS_FIRST = "marks_first_ns"
"""Snapshot key: ``{site_id: int}``, the ``recorded_ns`` of each site's first suspect mark on the
snapshot, kept when the site takes its mark back (dropped only by an approved confirmation): a
site marking again keeps that time, so taking back and marking again never renews the pin
(:func:`suspect_pins`) beyond one keep-all window from the first mark."""


def marked_suspect(snap: dict, site_id: str) -> bool:
    """True when a person marked ``snap`` suspect in ``site_id``'s name (``mark_verdict``). Pure."""
    return ((snap.get(MARKS) or {}).get(site_id) or {}).get("verdict") == "suspect"


def held_by_marks(vol: dict, site_id: str) -> set[int]:
    """The seqs of ``vol`` (a volume's state) that ``site_id``'s standby and takeover skip because a
    person there marked them suspect: each marked snapshot (:func:`marked_suspect`) and every
    snapshot descending from one (``parent_seq`` chains; a pruned parent ends a chain), whatever
    the cluster's verdict and a confirmation made before the mark say. The site's own descent
    rule: what a person saw in a snapshot is in its children too, until that site takes its
    mark back or an approved confirmation answers it. Pure."""
    snaps = vol.get("snapshots") or {}
    held: set[int] = set()
    for seq in sorted(snaps):
        if marked_suspect(snaps[seq], site_id) or snaps[seq].get("parent_seq") in held:
            held.add(seq)
    return held


def suspect_pins(vol: dict, now_ns: int, revoked: Collection[str] = ()) -> dict[int, str]:
    """Snapshots pruning keeps for a while because one site's opinion said ``suspect``, even when
    the cluster did not (:data:`SUSPECT_SITES_MIN`): ``{seq: why}``. Each suspect opinion on a
    snapshot no person confirmed, and each person's suspect mark (:data:`MARKS`), recorded (by the
    majority's clock, ``recorded_ns``) less than
    the volume's ``keep_all_s`` before ``now_ns``, pins that snapshot and the one it points back
    to: the newest older snapshot the cluster calls clean before the opinion's ``first_seq`` (the
    first suspicious one), else before the snapshot itself. So a lone vote keeps at most two
    snapshots per vote for one keep-all window (a site votes once per snapshot): the operators'
    time to look, never an unbounded hold on every site's disk (a site's mark keeps the time of
    its first one, :data:`MARKS_FIRST`). The opinions and marks of the sites in ``revoked``
    (:func:`revoked_sites`) pin nothing. Pure."""
    window_ns = int(vol["retention"]["keep_all_s"]) * 1_000_000_000
    snaps = vol.get("snapshots") or {}
    clean = sorted(s for s, snap in snaps.items() if snap.get("verdict") == "clean")
    pins: dict[int, str] = {}
    for seq, snap in snaps.items():
        # a person's mark (mark_verdict) pins like an opinion; a confirmation outweighs the opinions
        words = [*(() if snap.get("confirmed") else sorted((snap.get("opinions") or {}).items())),
                 *sorted((snap.get(MARKS) or {}).items())]
        for site, o in words:
            if o.get("verdict") != "suspect" or site in revoked:
                continue
            recorded = o.get("recorded_ns")
            if not _is_int(recorded):  # recorded before the majority's clock was kept in the opinion
                recorded = snap.get("committed_ns", snap["created_at_ns"])
            if now_ns - recorded >= window_ns:
                continue
            pins.setdefault(seq, f"judged suspect by {site}")
            first = o.get("first_seq")
            before = min(seq, first) if _is_int(first) else seq
            back = [s for s in clean if s < before]
            if back:
                pins.setdefault(back[-1], f"the clean snapshot {site}'s suspect opinion on #{seq} points back to")
    return pins


def _op_site_verdict(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    seq = _int(cmd, "seq")
    verdict = _choice(cmd, "verdict", VERDICTS)
    score_ppm = _int(cmd, "score_ppm")
    cumulative_ppm = _int(cmd, "cumulative_ppm")
    first_seq = cmd.get("first_seq")
    if first_seq is not None:
        first_seq = _int(cmd, "first_seq")
    reason = _str(cmd, "reason", OPINION_REASON_MAX_CHARS, empty_ok=True)
    by = cmd["by"]
    _data_site(state, by, "judging site")
    snap = _snapshot(vol, name, seq)
    opinion = {"verdict": verdict, "score_ppm": score_ppm, "cumulative_ppm": cumulative_ppm,
               "first_seq": first_seq, "reason": reason, "at_ns": cmd["now_ns"]}
    quorum_now = quorum_now_ns(state)
    if quorum_now is not None:  # what a lone vote's pin is measured from (suspect_pins): not the voter's clock
        opinion["recorded_ns"] = quorum_now
    opinions = snap.get("opinions") or {}
    if by in opinions:
        if opinions[by]["verdict"] == verdict:
            return state, {"ok": True, "volume": name, "seq": seq, "changed": False, "verdict": snap["verdict"]}
        raise _Refusal("conflict", f"{by!r} already judged {name!r}#{seq} {opinions[by]['verdict']}",
                       volume=name, seq=seq, by=by, recorded=opinions[by]["verdict"], proposed=verdict)
    snap = {**snap, "opinions": {**opinions, by: opinion}}
    voters, needed = suspect_voters(state, snap), suspect_quorum(state)
    # one site's word holds its own standby only; the cluster's verdict needs SUSPECT_SITES_MIN
    # sites' opinions, or MARK_SITES_MIN sites' words with persons' marks among them
    flipped = verdict == "suspect" and snap["verdict"] == "clean" and not snap.get("confirmed") and \
        turns_suspect(state, snap)
    if flipped:
        snap = {**snap, "verdict": "suspect",
                "verdict_reason": f"{SITE_SUSPECT_PREFIX}{', '.join(voters)}: {reason}"[:REASON_MAX_CHARS]}
    return (_with_volume(state, name, _with_snapshot(vol, seq, snap)),
            {"ok": True, "volume": name, "seq": seq, "changed": True, "verdict": snap["verdict"],
             "flipped": flipped, "suspect_sites": voters, "needed": needed,
             "opinion_sites": opinion_voters(state, snap), "needed_with_marks": mark_quorum(state)})


def disagreement(snap: dict) -> bool:
    """True when the sites' own opinions on a snapshot (``site_verdict``, one per judging site)
    differ: one site judged it clean, another suspect. A disagreement is alerted (issue 14):
    one of the sites is wrong, broken or lying; each site's standby follows its own opinion, and
    the cluster's verdict only :func:`suspect_quorum` suspect opinions. The verdict the primary proposed
    with ``commit_snapshot`` is no opinion: it is the whole-volume screen of the scan
    (:func:`replicad.core.anomaly.judge`), a coarser measure than the relative judge every
    site (the primary too) records as its opinion, so an honest primary's screen may say clean
    where its own opinion says suspect (ARCHITECTURE "Ransomware signal"). A snapshot a person
    confirmed is never in disagreement. Pure."""
    if snap.get("confirmed"):
        return False
    verdicts = {o.get("verdict") for o in (snap.get("opinions") or {}).values()}
    return len(verdicts) > 1


def _op_set_retention(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Change a volume's retention: only as the action of an approved request. A shorter key
    (:func:`retention_weakened`) is a weakening (approvals and the cooling-off); a longer one
    applies once approved, without cooling-off (:func:`_stricter_retention`): a lock of 2**62 s
    on one site's word froze deletion at every site, and its undo was a weakening that site
    could veto. The same policy again is answered ``changed`` false."""
    name, vol = _volume(state, cmd)
    retention = _retention(cmd)
    old = vol["retention"]
    if retention == old:
        return state, {"ok": True, "volume": name, "retention": dict(retention), "weakened": [], "changed": False}
    weakened = retention_weakened(old, retention)
    if weakened:  # O4: no single site can shorten retention
        _needs_approval(cmd, f"shortening {weakened}", volume=name, shortened=weakened, weakened=weakened,
                        current=dict(old), requested=dict(retention))
    elif cmd.get(_APPROVED) is not True:  # longer is no licence: every site keeps every copy that long
        lengthened = [k for k in RETENTION_KEYS if retention[k] != old[k]]
        raise _Refusal("approval_required", f"a change of {name!r}'s retention ({', '.join(lengthened)}) keeps "
                       "every site's copies longer: it must be a request approved by operators at other sites "
                       "(longer: no cooling-off; the admin API makes one: replicad requests, replicad approve REQ)",
                       by=cmd["by"], volume=name, lengthened=lengthened, weakened=[], current=dict(old),
                       requested=dict(retention))
    vol = {**vol, "retention": retention}
    return _with_volume(state, name, vol), {"ok": True, "volume": name, "retention": dict(retention),
                                            "weakened": weakened, "changed": True}


def _op_set_max_size(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Change a volume's agreed maximum size (:func:`max_size_bytes`): only as the action of an
    approved request (a larger maximum lifts every receiver's chunk quota and what a manifest
    may claim; one site's word once lifted it to 1 PiB). A smaller one, or a larger one up to
    :func:`max_size_at_once`, applies at the approval (not vetoable: a grown volume replicates
    nothing until it applies); a larger one after the cooling-off, vetoable, unless every
    unrevoked member approved it (:func:`_run_request`). At least the volume's ``size_bytes``
    (``bad_request``), at most :data:`SIZE_BYTES_MAX` (``out_of_range``). The same maximum again
    is answered ``changed`` false. The first raise at once of a window records
    :data:`MAX_SIZE_BASE`; one past the at-once bound drops it. Result: ``max_size_bytes``,
    ``previous``, ``changed`` and ``at_once`` (the bound it was judged against)."""
    name, vol = _volume(state, cmd)
    wanted = _int(cmd, "max_size_bytes")
    if wanted > SIZE_BYTES_MAX:
        raise _Refusal("out_of_range", f"max_size_bytes {wanted} > {SIZE_BYTES_MAX} (1 PiB)", volume=name,
                       max_size_bytes=wanted, limit=SIZE_BYTES_MAX)
    if wanted < vol["size_bytes"]:
        raise _Refusal("bad_request", f"max_size_bytes {wanted} bytes is below the size of volume {name!r} "
                       f"({vol['size_bytes']} bytes): a maximum at least its size",
                       volume=name, max_size_bytes=wanted, size_bytes=vol["size_bytes"], field="max_size_bytes")
    current = max_size_bytes(vol)
    if wanted == current:
        return state, {"ok": True, "volume": name, "max_size_bytes": wanted, "changed": False}
    at_once = max_size_at_once(state, vol)
    if cmd.get(_APPROVED) is not True:
        raise _Refusal("approval_required", f"a change of {name!r}'s maximum size ({current} -> {wanted} bytes) must "
                       "be a request approved by operators at other sites (up to "
                       f"{at_once} bytes at the approval; beyond, after the cooling-off, vetoable, unless every "
                       "site approved; replicad requests, replicad approve REQ)", by=cmd["by"], volume=name,
                       max_size_bytes=wanted, current=current, at_once=at_once)
    new_vol = {**vol, "max_size_bytes": wanted}
    if wanted > at_once:  # it cooled off unvetoed, or every member approved: the base of the next raises
        new_vol.pop(MAX_SIZE_BASE, None)
    elif wanted > current and _max_size_base(state, vol) is None:  # the first raise at once in a window
        quorum_now = quorum_now_ns(state)
        new_vol[MAX_SIZE_BASE] = {"bytes": current, "at_ns": cmd["now_ns"] if quorum_now is None else quorum_now}
    return (_with_volume(state, name, new_vol),
            {"ok": True, "volume": name, "max_size_bytes": wanted, "previous": current, "changed": True,
             "at_once": at_once})


def _op_prune_snapshots(state: dict, cmd: dict) -> tuple[dict, dict]:
    name, vol = _volume(state, cmd)
    seqs = _seq_list(cmd, "seqs")
    now_ns = cmd["now_ns"]
    for seq in seqs:
        _snapshot(vol, name, seq)
    newest = newest_committed(vol)
    if newest is not None and vol["snapshots"][newest]["verdict"] == "suspect":
        raise _Refusal("retention_locked", f"volume {name!r}: newest snapshot {newest} is suspect, "
                       "pruning is frozen", volume=name, newest_seq=newest)
    protected = {s for s in (newest, newest_clean(vol), newest_confirmed(vol), restore_pin(vol)) if s is not None}
    lock_ns = vol["retention"]["lock_s"] * 1_000_000_000
    quorum_now = quorum_now_ns(state)
    if quorum_now is None:
        raise _Refusal("retention_locked", f"volume {name!r}: the clocks of a majority of sites are not known "
                       "yet; pruning waits for them", volume=name)
    now_ns = min(now_ns, quorum_now)  # O4: measured by a majority's clocks, not the proposer's alone
    common = newest_common(state, vol)
    pins = suspect_pins(vol, now_ns, revoked_sites(state))
    for seq in seqs:
        if seq in pins:  # one site's suspect opinion: kept for the keep-all window after it
            raise _Refusal("retention_locked", f"volume {name!r}: snapshot {seq} is kept for keep_all "
                           f"({vol['retention']['keep_all_s']} s) after a suspect opinion: {pins[seq]}",
                           volume=name, seq=seq, pinned_by=pins[seq])
        if seq in protected:
            raise _Refusal("retention_locked", f"volume {name!r}: snapshot {seq} is the newest "
                           "committed, newest clean or newest confirmed snapshot, or the one a forced "
                           "promotion restores",
                           volume=name, seq=seq)
        if seq in common:
            # the base of the next incremental ship to that replica (and of its resync): the
            # primary's planner keeps it, and so must every other proposer (found by the chaos
            # campaign, scenario retention-race: an operator prune at any site deleted it)
            raise _Refusal("retention_locked", f"volume {name!r}: snapshot {seq} is the newest snapshot "
                           f"held by both the primary {vol['primary']!r} and replica {common[seq]!r}",
                           volume=name, seq=seq, primary=vol["primary"], replica=common[seq])
        age_ns = now_ns - vol["snapshots"][seq]["created_at_ns"]
        if age_ns < lock_ns:  # O4: nothing inside the lock window is deleted
            raise _Refusal("retention_locked", f"volume {name!r}: snapshot {seq} is inside the lock window "
                           f"(age {age_ns // 1_000_000_000} s of {vol['retention']['lock_s']} s: it may go in "
                           f"{(lock_ns - age_ns + 999_999_999) // 1_000_000_000} s, by the majority's clock; a "
                           "shorter lock is a retention request other sites approve)", volume=name, seq=seq,
                           age_ns=age_ns, age_s=age_ns // 1_000_000_000, lock_s=vol["retention"]["lock_s"],
                           unlocks_in_s=(lock_ns - age_ns + 999_999_999) // 1_000_000_000)
    # the agreed retention grid (keep_all, hourly, daily) binds every proposer, not only the
    # primary's planner: review R5 pruned, in one site's name, every snapshot past the 1-day lock
    # that the grid kept for 38 days (the floors kept their data; Raft's catalog lost them). What
    # the grid keeps goes only as an approved request (other sites' approvals, then the cooling-off)
    prunable = set(retention.plan_prune(vol["snapshots"], vol["retention"], now_ns, set()))
    kept = [seq for seq in seqs if seq not in prunable]
    if kept and cmd.get(_APPROVED) is not True:
        raise _Refusal("retention_locked", f"volume {name!r}: snapshot(s) {kept} are kept by the volume's agreed "
                       f"retention (keep_all {vol['retention']['keep_all_s']} s, then one per hour for "
                       f"{vol['retention']['hourly_s']} s, one per day for {vol['retention']['daily_s']} s): pruning "
                       "them is a request other sites approve", volume=name, seqs=kept, kept_by_retention=kept,
                       retention=vol["retention"])
    doomed = set(seqs)
    vol = {**vol, "snapshots": {s: snap for s, snap in vol["snapshots"].items() if s not in doomed}}
    return _with_volume(state, name, vol), {"ok": True, "volume": name, "pruned": sorted(seqs)}


def removal_is_easy(state: dict, vol: dict) -> bool:
    """True when ``vol`` was registered by a revoked site (:func:`registered_by`,
    :func:`is_revoked`): its ``remove_volume`` request, once approved, applies without the
    cooling-off. Pure."""
    return is_revoked(state, registered_by(vol))


def _op_remove_volume(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Forget ``volume`` from the cluster state: its record and its snapshot catalog (ARCHITECTURE,
    Choices: "Removing a volume"). Only as the action of an approved request (else
    ``approval_required``): the approvals of a weakening (:func:`approvals_needed`), then the
    cooling-off, vetoable by any registered site (its registering site and its primary too);
    without the cooling-off when a revoked site registered it (:func:`removal_is_easy`).
    Refused (``retention_locked``) while any of its snapshots is inside the volume's lock window
    by the majority clock (a volume still replicating cannot be removed: its primary must stop
    first), while the majority clock is unknown, while its newest committed snapshot is suspect
    (pruning frozen) and while its primary is in an instant recovery; these are checked when the
    request is made and again when it applies. The state keeps :data:`REMOVED_VOLUMES` (its epoch
    and last seq); every site keeps its own records and chunks of the volume (its floor decides).
    The volume's other open requests end ``failed`` (:func:`_end_requests_of`). Result: ``{"ok",
    "volume", "removed": True, "epoch", "last_seq", "registered_by", "snapshots": int}``, with
    ``ended_requests`` (their ids) when there were any."""
    name, vol = _volume(state, cmd)
    if cmd.get(_APPROVED) is not True:
        _needs_approval(cmd, f"removing volume {name!r}", volume=name)
    quorum_now = quorum_now_ns(state)
    if quorum_now is None:
        raise _Refusal("retention_locked", f"volume {name!r}: the clocks of a majority of sites are not known "
                       "yet; a removal waits for them", volume=name)
    newest = newest_committed(vol)
    if newest is not None and vol["snapshots"][newest]["verdict"] == "suspect":
        raise _Refusal("retention_locked", f"volume {name!r}: newest snapshot {newest} is suspect: pruning and "
                       "removal are frozen", volume=name, newest_seq=newest)
    if instant_recovery(state, vol) is not None:
        raise _Refusal("retention_locked", f"volume {name!r}: its primary {vol['primary']!r} is in an instant "
                       "recovery", volume=name, primary=vol["primary"])
    lock_ns = vol["retention"]["lock_s"] * 1_000_000_000
    youngest = max((s["created_at_ns"] for s in vol["snapshots"].values()), default=None)
    if youngest is not None and quorum_now - youngest < lock_ns:
        age_ns = quorum_now - youngest
        raise _Refusal("retention_locked", f"volume {name!r}: its newest snapshot is inside the lock window (age "
                       f"{age_ns // 1_000_000_000} s of {vol['retention']['lock_s']} s, by the majority's clock): "
                       "a volume is removed only after its primary stopped snapshotting for the lock window",
                       volume=name, age_s=age_ns // 1_000_000_000, lock_s=vol["retention"]["lock_s"],
                       unlocks_in_s=(lock_ns - age_ns + 999_999_999) // 1_000_000_000)
    volumes = {n: v for n, v in state["volumes"].items() if n != name}
    gone = {"epoch": int(vol["epoch"]), "last_seq": int(vol["last_seq"]), "registered_by": registered_by(vol),
            "removed_ns": quorum_now}
    removed = {**(state.get(REMOVED_VOLUMES) or {}), name: gone}
    requests, ended = _end_requests_of(state.get("requests") or {}, name, quorum_now, cmd.get(_REQUEST))
    result = {"ok": True, "volume": name, "removed": True, "epoch": gone["epoch"], "last_seq": gone["last_seq"],
              "registered_by": gone["registered_by"], "snapshots": len(vol["snapshots"])}
    if ended:
        result["ended_requests"] = ended
    return {**state, "volumes": volumes, REMOVED_VOLUMES: removed, "requests": requests}, result


def _end_requests_of(requests: dict, name: str, now_ns: int, running: Any) -> tuple[dict, list[str]]:
    """``(records, ids)``: the request records with every pending or approved (cooling-off)
    request naming volume ``name`` but ``running`` (the removal's own, which :func:`_run_action`
    records) marked ``failed`` (``not_found``) at ``now_ns`` (majority clock), and their ids in
    table order. A removed volume's open requests end with it: a weakening approved for it would
    otherwise apply to the next volume registered under its name. Pure."""
    ended = [r for r, e in requests.items() if r != running and e["status"] in ("pending", "approved")
             and isinstance(e.get("args"), dict) and e["args"].get("volume") == name]
    if not ended:
        return requests, []
    out = dict(requests)
    for req_id in ended:
        out[req_id] = {**out[req_id], "status": "failed", "applied_ns": now_ns,
                       "result": _refused("not_found", f"volume {name!r} was removed (remove_volume) before this "
                                          "request applied", volume=name, removed=True)}
    return out, ended


def _member_kinds(state: dict) -> dict[str, str]:
    """``{site_id: kind}`` of the agreed membership (``incarnation.members``); before any
    ``found``, of the registered sites (requests and approvals are refused then:
    :func:`_founded`)."""
    inc = state.get("incarnation")
    if inc is not None:
        return {m["site_id"]: m["kind"] for m in inc["members"]}
    return {s: e["kind"] for s, e in (state.get("sites") or {}).items()}


def approvals_needed(state: dict, trust: Trust | None) -> int:
    """Sites (the requester counting as one) that must agree before a protection-weakening
    request applies: ``trust.approvals`` when set, else a majority of the agreed membership's
    data sites (``incarnation.members``: how many sites have registered so far never lowers
    it, so a site alone in a cluster that is being set up is no majority); never more than the
    sites that can approve (:func:`_voters`: the membership's unrevoked sites, witnesses
    included: ``approve`` takes any registered site's word, a witness's operator too; a revoked
    site can sign nothing, and counting it would leave a configured ``[policy] approvals``
    equal to the membership's size unreachable until it rejoins), never less than 1. Pure."""
    kinds = _member_kinds(state)
    if trust is not None and trust.approvals is not None:
        wanted = trust.approvals
    else:
        wanted = sum(1 for k in kinds.values() if k == "data") // 2 + 1
    return max(1, min(wanted, len(_voters(state))))


def _needed(state: dict, trust: Trust | None, action: str) -> int:
    """Approvals a request of ``action`` needs: revoking a site or changing the membership, at
    least a majority of the agreed membership's sites; a role change or a new maximum size
    (:data:`NOT_VETOABLE`), at most a majority of the voters (:func:`_voters`); otherwise
    :func:`approvals_needed`."""
    needed = approvals_needed(state, trust)
    if action in MAJORITY_ACTIONS:
        needed = max(needed, len(_member_kinds(state)) // 2 + 1)
    elif action in NOT_VETOABLE:
        # a role change restores service, a new maximum lets a grown volume replicate: the honest
        # sites together must always reach them, even under a [policy] approvals that counts a
        # compromised site (ARCHITECTURE, Choices: "One forced role change per site and hour")
        needed = min(needed, len(_voters(state)) // 2 + 1)
    return needed


def _founded(state: dict, what: str) -> None:
    """Refuse (``conflict``) a request or an approval before the cluster's membership is agreed
    (no ``incarnation``): until then who counts as a majority is undecided, and a site that
    registered first would be the whole cluster's approvers (one site's word, O4)."""
    if state.get("incarnation") is None:
        raise _Refusal("conflict", f"the cluster is not founded yet: no {what} before its membership is agreed "
                       "(a majority of the configured sites' found proposals)", founded=False,
                       refusal="not_founded")


def _voters(state: dict) -> list[str]:
    """The unrevoked members whose approval lets a revocation or membership change skip its
    cooling-off: the agreed membership's sites (the registered sites before any ``found``),
    without the revoked ones, sorted."""
    inc = state.get("incarnation")
    ids = [m["site_id"] for m in inc["members"]] if inc else list(state.get("sites", {}))
    return sorted(s for s in ids if not is_revoked(state, s))


def membership_change(state: dict, action: str, args: dict) -> dict:
    """What a :data:`MAJORITY_ACTIONS` request changes, judged against ``state`` (pure; never
    raises for a well-formed ``args``).

    Returns:
        ``{"targets": [site_id], "must_approve": [site_id], "voters": [site_id]}``, each sorted:
        ``targets`` the unrevoked members it revokes, removes or changes; ``must_approve`` the
        unrevoked members whose ``raft``, ``kind`` or ``keys`` a ``set_members`` changes (their
        own approval is required); ``voters`` (:func:`_voters`) the sites whose unanimous
        approval skips the cooling-off. Empty lists for any other action.
    """
    voters = _voters(state)
    if action == "revoke_site":
        target = args.get("site_id")
        return {"targets": [target] if target in state.get("sites", {}) and not is_revoked(state, target) else [],
                "must_approve": [], "voters": voters}
    if action != "set_members" or not isinstance(args.get("members"), list):
        return {"targets": [], "must_approve": [], "voters": voters}
    inc = state.get("incarnation")
    current = {m["site_id"]: m for m in (inc["members"] if inc else [])}
    new = {m.get("site_id"): m for m in args["members"] if isinstance(m, dict)}
    changed = sorted(s for s in set(current) & set(new) if not is_revoked(state, s) and
                     (current[s]["raft"], current[s]["kind"], sorted(current[s]["keys"])) !=
                     (new[s].get("raft"), new[s].get("kind"), sorted(set(new[s].get("keys") or ()))))
    removed = sorted(s for s in set(current) - set(new) if not is_revoked(state, s))
    return {"targets": sorted(set(changed) | set(removed)), "must_approve": changed, "voters": voters}


def _missing_approvals(state: dict, entry: dict) -> list[str]:
    """The members whose own approval ``entry`` (a request) still lacks before it may apply
    (:func:`membership_change` ``must_approve``), sorted; [] for other actions."""
    if entry["action"] not in MAJORITY_ACTIONS:
        return []
    return sorted(set(membership_change(state, entry["action"], entry["args"])["must_approve"]) -
                  set(entry["approvals"]))


def _unanimous(state: dict, entry: dict) -> bool:
    """True when every unrevoked member (:func:`_voters`) approved ``entry``."""
    return set(_voters(state)) <= set(entry["approvals"])


def request_expired(state: dict, request: dict) -> bool:
    """True when a pending request's ``expires_ns`` is behind the majority clock."""
    quorum_now = quorum_now_ns(state)
    return quorum_now is not None and quorum_now > request["expires_ns"]


def list_requests(state: dict) -> list[dict]:
    """Every request record, newest first, each a copy with ``status`` ``expired`` when a
    pending one is past its ``expires_ns`` by the majority clock. Shape of a record:
    ``{"id": "r7", "by": site, "action": op, "args": {...}, "reason": str, "approvals": [site],
    "needed": int, "created_ns": int, "expires_ns": int, "status": "pending" | "approved" |
    "applied" | "failed" | "vetoed" | "expired", "result": dict | None}`` plus, once approved,
    ``approved_ns`` and ``effective_ns`` (end of the cooling-off), once applied ``applied_ns``
    (and ``previous``, the retention it replaced), once vetoed ``vetoed_by``."""
    out = []
    for entry in reversed(list((state.get("requests") or {}).values())):
        entry = dict(entry)
        if entry["status"] == "pending" and request_expired(state, entry):
            entry["status"] = "expired"
        out.append(entry)
    return out


def locally_effective_retention(state: dict, volume: str, now_ns: int, local_cooling_ns: int) -> dict:
    """The retention a site applies itself to ``volume``: the Raft-agreed policy, except that
    for ``local_cooling_ns`` after a request changed it (``applied_ns``, majority clock,
    compared with ``now_ns``, this site's clock) each key keeps the larger of the previous and
    the new value (a site's own longer cooling-off, ``[floor] cooling_off``). Pure; never raises
    for a known volume."""
    current = dict(state["volumes"][volume]["retention"])
    if local_cooling_ns <= 0:
        return current
    for entry in (state.get("requests") or {}).values():
        if entry.get("status") != "applied" or entry.get("action") != "set_retention" or \
                entry["args"].get("volume") != volume or "previous" not in entry:
            continue
        if now_ns < entry.get("applied_ns", 0) + local_cooling_ns:
            current = {k: max(current[k], entry["previous"].get(k, 0)) for k in current}
    return current


def _action(cmd: dict) -> tuple[str, dict, dict]:
    """``(op, args, sub-command)`` of a ``request``: the weakening op it asks for, run as its requester."""
    action = _choice(cmd, "action", REQUEST_ACTIONS)
    args = cmd.get("args")
    allowed, required = _OPS[action][1], _OPS[action][2]
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args) or \
            set(args) - allowed or required - set(args):
        raise _Refusal("bad_request", f"args of a {action} request must hold {sorted(required)} "
                       f"(optional {sorted(allowed - required)})", field="args", action=action)
    sub = {**{k: v for k, v in cmd.items() if k in COMMON_KEYS or k is _TRUST}, **args, "op": action}
    return action, dict(args), sub


def _op_request(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Record a request for a protection-weakening change (``action``: ``set_retention`` or
    ``mark_verdict`` with ``args``); it applies once :func:`approvals_needed` sites agreed."""
    action, args, sub = _action(cmd)
    reason = _str(cmd, "reason", REASON_MAX_CHARS, empty_ok=True) if "reason" in cmd else ""
    trust = cmd.get(_TRUST)
    _founded(state, "request")
    _data_site(state, cmd["by"], "requester")
    _OPS[action][0](state, {**sub, _APPROVED: True})  # refused now if it could never apply
    requests = _swept_requests(state)
    pending_here = [r for r in requests.values() if r["status"] == "pending" and r["by"] == cmd["by"]]
    if len(pending_here) >= REQUESTS_PENDING_PER_SITE:
        raise _Refusal("conflict", f"{cmd['by']!r} already has {len(pending_here)} pending requests, the most "
                       "a site may have", by=cmd["by"], pending=[r["id"] for r in pending_here])
    number = int(state.get("request_seq", 0)) + 1
    base = quorum_now_ns(state)
    base = cmd["now_ns"] if base is None else base
    ttl = identity.DEFAULT_REQUEST_TTL_NS if trust is None else trust.request_ttl_ns
    entry = {"id": f"r{number}", "by": cmd["by"], "action": action, "args": args, "reason": reason,
             "approvals": [cmd["by"]], "needed": _needed(state, trust, action), "created_ns": cmd["now_ns"],
             "expires_ns": base + ttl, "status": "pending", "result": None}
    requests[entry["id"]] = entry
    requests, forgotten = _bounded_requests(requests, cmd["by"])
    new_state = {**state, "requests": requests, "request_seq": number}
    missing = _missing_approvals(new_state, entry)
    if entry["needed"] <= 1 and not missing:  # a one-site lab: nobody else to ask
        new_state, answer = _run_request(new_state, cmd, entry)
        return new_state, {**answer, "forgotten": forgotten} if forgotten else answer
    answer = {"ok": True, "request": entry["id"], "status": "pending", "approvals": list(entry["approvals"]),
              "needed": entry["needed"], "expires_ns": entry["expires_ns"]}
    if forgotten:
        answer["forgotten"] = forgotten
    if action in MAJORITY_ACTIONS:
        answer.update(membership_change(new_state, action, args), waiting_for=missing)
    return new_state, answer


def _op_approve(state: dict, cmd: dict) -> tuple[dict, dict]:
    """An approval of a pending request by the (signing) site ``by``; the request's action
    runs when the approvals reach the number needed (the action's refusal refuses the approval)."""
    req_id = _str(cmd, "request", 32)
    _site_id(cmd, "by")
    _founded(state, "approval")
    if cmd["by"] not in state["sites"]:
        raise _Refusal("not_found", f"approver {cmd['by']!r} is not a registered site", site_id=cmd["by"])
    entry = (state.get("requests") or {}).get(req_id)
    if entry is None:
        raise _Refusal("not_found", f"unknown request {req_id!r}", request=req_id)
    cooling = entry["status"] == "approved" and (entry["action"] in MAJORITY_ACTIONS
                                                 or entry["action"] == "set_max_size")
    if entry["status"] != "pending" and not cooling:
        raise _Refusal("conflict", f"request {req_id} is {entry['status']}, not pending", request=req_id,
                       status=entry["status"])
    if entry["status"] == "pending" and request_expired(state, entry):
        raise _Refusal("conflict", f"request {req_id} expired", request=req_id, expires_ns=entry["expires_ns"])
    _not_its_own_revocation(cmd, entry, "approve")
    if cmd["by"] in entry["approvals"]:
        return state, {"ok": True, "request": req_id, "status": entry["status"],
                       "approvals": list(entry["approvals"]), "needed": entry["needed"], "changed": False}
    # the number needed is that of the membership now when it grew since the request was made
    needed = max(int(entry["needed"]), _needed(state, cmd.get(_TRUST), entry["action"]))
    entry = {**entry, "approvals": [*entry["approvals"], cmd["by"]], "needed": needed}
    new_state = {**state, "requests": {**state["requests"], req_id: entry}}
    if cooling:  # a revocation, membership change or large maximum cooling off: the last member's approval
        # applies it now
        if not _unanimous(new_state, entry):
            return new_state, {"ok": True, "request": req_id, "status": "approved",
                               "approvals": list(entry["approvals"]), "needed": entry["needed"],
                               "effective_ns": entry["effective_ns"], "changed": True}
        return _run_request(new_state, cmd, entry)
    missing = _missing_approvals(new_state, entry)
    if len(entry["approvals"]) < entry["needed"] or missing:
        return new_state, {"ok": True, "request": req_id, "status": "pending", "approvals": list(entry["approvals"]),
                           "needed": entry["needed"], "changed": True, "waiting_for": missing}
    return _run_request(new_state, cmd, entry)


def _stricter_retention(state: dict, entry: dict) -> bool:
    """True when ``entry`` is a ``set_retention`` request that shortens no key of the volume's
    retention now (:func:`retention_weakened`): approved, it runs without a cooling-off."""
    if entry["action"] != "set_retention":
        return False
    vol = state["volumes"].get(entry["args"].get("volume"))
    proposed = entry["args"].get("retention")
    if vol is None or not isinstance(proposed, dict):
        return False
    return not retention_weakened(vol["retention"], proposed)


def _run_request(state: dict, cmd: dict, entry: dict) -> tuple[dict, dict]:
    """The request collected its approvals: start its cooling-off (status ``approved`` until
    ``effective_ns`` by the majority clock, vetoable), or run its action now (raising its
    refusal). The cooling-off is ``trust.cooling_off_ns`` for a weakening change and for every
    detection policy change (a stricter one too: review R7, F2), and
    ``trust.membership_cooling_off_ns`` for a revocation or membership change, which skips it
    when every unrevoked member approved (:func:`_unanimous`); none for a role change, a grown
    maximum size up to :func:`max_size_at_once` or a longer retention, and none with ``trust``
    None; a larger maximum cools off for ``trust.cooling_off_ns`` unless every unrevoked member
    approved it."""
    trust = cmd.get(_TRUST)
    if trust is None:
        cooling = 0
    elif entry["action"] in MAJORITY_ACTIONS:
        cooling = 0 if _unanimous(state, entry) else trust.membership_cooling_off_ns
    elif entry["action"] in EPOCH_ACTIONS:  # restoring service: other sites agreed, nothing is weakened
        cooling = 0
    elif entry["action"] == "set_max_size":  # a grown volume replicates nothing until it applies: at once up
        # to max_size_at_once; a larger maximum (every replica's disk) cools off unless every member approved
        cooling = trust.cooling_off_ns if max_size_cools_off(state, entry) and not _unanimous(state, entry) else 0
    elif _stricter_retention(state, entry):
        cooling = 0
    elif entry["action"] == "remove_volume" and entry["args"].get("volume") in state["volumes"] and \
            removal_is_easy(state, state["volumes"][entry["args"]["volume"]]):
        cooling = 0  # a revoked site's volume: the approvals suffice
    else:
        cooling = trust.cooling_off_ns
    if entry["status"] == "approved":  # already cooling off (an approval completed the unanimity)
        cooling = 0
    if cooling > 0:
        base = quorum_now_ns(state)
        base = cmd["now_ns"] if base is None else max(base, 0)
        waiting = {**entry, "status": "approved", "approved_ns": base, "effective_ns": base + cooling}
        new_state = {**state, "requests": {**state["requests"], entry["id"]: waiting}}
        return new_state, {"ok": True, "request": entry["id"], "status": "approved",
                           "approvals": list(entry["approvals"]), "needed": entry["needed"],
                           "effective_ns": waiting["effective_ns"], "action": entry["action"],
                           "volume": entry["args"].get("volume")}
    new_state, done = _run_action(state, entry, cmd["op_id"], cmd["now_ns"], trust)
    return new_state, {"ok": True, "request": entry["id"], "status": "applied", "approvals": list(entry["approvals"]),
                       "needed": entry["needed"], "result": done["result"], "action": entry["action"],
                       "volume": entry["args"].get("volume")}


def _run_action(state: dict, entry: dict, op_id: str, now_ns: int, trust: Any) -> tuple[dict, dict]:
    """Run ``entry``'s action as its requester; the record becomes ``applied`` (with
    ``applied_ns`` and, for a retention change, the ``previous`` policy). Raises its refusal."""
    sub = {"v": COMMAND_VERSION, "op": entry["action"], "op_id": op_id, "by": entry["by"],
           "now_ns": now_ns, **entry["args"], _TRUST: trust, _APPROVED: True, _APPROVALS: list(entry["approvals"]),
           _REQUEST: entry["id"]}
    before = state["volumes"].get(entry["args"].get("volume"))
    new_state, result = _OPS[entry["action"]][0](state, sub)
    applied_ns = quorum_now_ns(state)
    done = {**entry, "status": "applied", "result": result, "applied_ns": now_ns if applied_ns is None else applied_ns}
    if entry["action"] == "set_retention" and before is not None:
        done["previous"] = dict(before["retention"])
    return {**new_state, "requests": {**new_state["requests"], entry["id"]: done}}, done


def _apply_due_requests(state: dict, command: Any) -> tuple[dict, list[dict]]:
    """Run every ``approved`` request whose cooling-off ended by the majority clock (after any
    accepted command: the 5 s heartbeats make it prompt). A refused action marks the request
    ``failed`` with the refusal. Returns ``(state, [{"request", "status", "action", "volume",
    "result"}])`` and audits each."""
    requests = state.get("requests") or {}
    quorum_now = quorum_now_ns(state)
    if quorum_now is None or not any(e["status"] == "approved" and e["effective_ns"] <= quorum_now
                                     for e in requests.values()):
        return state, []
    trust = command.get(_TRUST) if isinstance(command, dict) else None
    out = []
    for req_id, entry in list(requests.items()):
        if entry["status"] != "approved" or entry["effective_ns"] > quorum_now:
            continue
        try:
            state, done = _run_action(state, entry, f"{req_id}@{entry['effective_ns']}", quorum_now, trust)
            result = done["result"]
        except _Refusal as refusal:
            result = _refused(refusal.code, refusal.message, **refusal.evidence)
            failed = {**entry, "status": "failed", "result": result, "applied_ns": quorum_now}
            state = {**state, "requests": {**state["requests"], req_id: failed}}
        out.append({"request": req_id, "status": "applied" if result.get("ok") else "failed",
                    "action": entry["action"], "volume": entry["args"].get("volume"), "result": result})
        state = _with_audit(state, {"op": entry["action"], "by": entry["by"], "volume": entry["args"].get("volume"),
                                    "now_ns": quorum_now}, result, entry["by"])  # the requester signed it
    return state, out


def revoked_sites(state: dict) -> frozenset[str]:
    """The sites :func:`is_revoked` says are revoked now. Pure."""
    return frozenset(s for s in (state.get("revoked") or {}) if is_revoked(state, s))


def is_revoked(state: dict, site_id: str) -> bool:
    """True when a majority revoked ``site_id`` through Raft (``revoke_site``) and it has not
    rejoined since: it may not be promoted and does not count as a holder of a new snapshot.
    A site rejoins when, rebuilt with a new key pinned in every config, it registers again
    (``register_site`` signed by a key not revoked: ``rejoined_ns`` in its ``revoked``
    entry); its revoked keys stay refused."""
    entry = (state.get("revoked") or {}).get(site_id)
    return entry is not None and "rejoined_ns" not in entry


def _revoke_keys(cmd: dict, trust: Any) -> list[bytes]:
    """The raw keys a ``revoke_site`` names (``keys``: ``"ed25519:<base64>"`` strings, the
    proposer's pinned keys of the site when it made the request, inside the signed command).
    ``bad_request`` unless they are distinct well-formed keys, at most
    :data:`identity.MAX_KEYS_PER_SITE`, and at least one in a signed cluster. Never depends on
    the applying site's config: every site revokes exactly the same keys."""
    value = cmd.get("keys")
    if not isinstance(value, list) or len(value) > identity.MAX_KEYS_PER_SITE or \
            not all(isinstance(k, str) and len(k) <= 128 for k in value) or len(set(value)) != len(value):
        raise _Refusal("bad_request", f"keys must be a list of at most {identity.MAX_KEYS_PER_SITE} distinct "
                       "public keys (ed25519:<base64>)", field="keys")
    raw = []
    for text in value:
        try:
            raw.append(identity.parse_public_key(text))
        except ValueError as err:
            raise _Refusal("bad_request", f"keys: {err}", field="keys", key=_safe(text)) from None
    if not raw and trust is not None and trust.keys is not None:
        raise _Refusal("bad_request", "a revocation names the keys it revokes (the proposer's pinned keys of the "
                       "site)", field="keys")
    return raw


def _op_revoke_site(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Revoke a site's identity (only as an approved request): exactly the keys the request
    names (``keys``, taken by the proposer from its pinned keys when it made the request) are
    recorded in ``revoked``, added to any revoked before; from then on every command signed by
    one of them is refused (``revoked``), in every site's state machine, whatever the configs
    pin at apply time (a replay after a config change revokes the same keys). Its pending or
    approved requests are cancelled and its approvals of others' pending ones withdrawn. A
    rebuilt site with a new key (pinned in every config) speaks again."""
    site_id = _site_id(cmd, "site_id")
    keys = _revoke_keys(cmd, cmd.get(_TRUST))
    if site_id not in state["sites"]:
        raise _Refusal("not_found", f"site {site_id!r} is not a registered site", site_id=site_id)
    _needs_approval(cmd, f"revoking {site_id!r}", site_id=site_id)
    old = (state.get("revoked") or {}).get(site_id)
    keys = sorted(set(keys) | set((old or {}).get("keys", ())))
    revoked = {**(state.get("revoked") or {}), site_id: {"keys": keys, "at_ns": cmd["now_ns"], "by": cmd["by"]}}
    requests = {}
    for req_id, entry in (state.get("requests") or {}).items():
        if entry["status"] in ("pending", "approved") and entry["by"] == site_id:
            entry = {**entry, "status": "vetoed", "vetoed_by": f"revocation of {site_id}"}
        elif entry["status"] == "pending" and site_id in entry["approvals"]:
            entry = {**entry, "approvals": [s for s in entry["approvals"] if s != site_id]}
        requests[req_id] = entry
    return ({**state, "revoked": revoked, "requests": requests},
            {"ok": True, "site_id": site_id, "revoked_keys": len(keys)})


def _not_its_own_revocation(cmd: dict, entry: dict, what: str) -> None:
    """``conflict`` when the signing site is the one ``entry`` (a ``revoke_site`` request)
    revokes: a compromised site may neither veto nor approve its own revocation."""
    if entry["action"] == "revoke_site" and entry["args"].get("site_id") == cmd["by"]:
        raise _Refusal("conflict", f"{cmd['by']!r} may not {what} request {entry['id']}: it revokes {cmd['by']!r} "
                       "itself", request=entry["id"], by=cmd["by"], action="revoke_site", own_revocation=True)


def _op_veto(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Any registered site stops a request that has not taken effect (pending or cooling off),
    except the request revoking that site, a role change and a new maximum size up to
    :func:`max_size_at_once` (:data:`NOT_VETOABLE`: ``conflict``,
    evidence ``refusal`` ``not_vetoable``, counted). A site whose revocation is pending may still veto
    other requests until the revocation applies (its vetoes only ever keep protection). One
    site's veto blocks (ARCHITECTURE, Choices: "A veto blocks"); each is counted per vetoing
    site in ``vetoes`` (``replicad_request_vetoes_total``) and the result names the request's
    ``action``, ``requested_by`` and ``volume`` and the site's ``vetoes`` so far, for every
    site's AUDIT line. The requester's own veto is a withdrawal (status ``withdrawn``, with ``was``, the
    status it had): the record goes and no veto is counted, so a site cannot fill the request table
    with requests it vetoes itself (review R9, F1)."""
    req_id = _str(cmd, "request", 32)
    if cmd["by"] not in state["sites"]:
        raise _Refusal("not_found", f"site {cmd['by']!r} is not a registered site", site_id=cmd["by"])
    entry = (state.get("requests") or {}).get(req_id)
    if entry is None:
        raise _Refusal("not_found", f"unknown request {req_id!r}", request=req_id)
    if entry["status"] not in ("pending", "approved"):
        raise _Refusal("conflict", f"request {req_id} is {entry['status']}: only a pending or approved request "
                       "can be vetoed", request=req_id, status=entry["status"])
    _not_its_own_revocation(cmd, entry, "veto")
    if entry["by"] == cmd["by"]:  # its own request: a withdrawal, which leaves no record (review R9, F1)
        requests = {r: e for r, e in state["requests"].items() if r != req_id}
        return ({**state, "requests": requests},
                {"ok": True, "request": req_id, "status": "withdrawn", "withdrawn_by": cmd["by"],
                 "approvals": list(entry["approvals"]), "needed": entry["needed"], "action": entry["action"],
                 "requested_by": entry["by"], "volume": entry["args"].get("volume"), "was": entry["status"]})
    cooling_max_size = entry["action"] == "set_max_size" and (entry["status"] == "approved" or
                                                               max_size_cools_off(state, entry))
    if entry["action"] in NOT_VETOABLE and not cooling_max_size:
        # a veto stops a weakening during its cooling-off; a role change has none, only approvals,
        # and a veto of one let the site that had just taken the volume (a Raft leader sees each
        # request first) keep the honest sites from taking it back (review R6); a grown volume's
        # new maximum likewise (vetoed at each cycle's request, the volume replicated nothing)
        raise _Refusal("conflict", f"request {req_id} ({entry['action']} of volume {entry['args'].get('volume')!r}, "
                       f"requested by {entry['by']!r}) cannot be vetoed: it waits for approvals only "
                       "(withhold yours)", request=req_id, by=cmd["by"], action=entry["action"],
                       requested_by=entry["by"], volume=entry["args"].get("volume"), refusal="not_vetoable")
    vetoed = {**entry, "status": "vetoed", "vetoed_by": cmd["by"]}
    vetoes = state.get("vetoes") or {}
    vetoes = {**vetoes, cmd["by"]: int(vetoes.get(cmd["by"], 0)) + 1}
    return ({**state, "requests": {**state["requests"], req_id: vetoed}, "vetoes": vetoes},
            {"ok": True, "request": req_id, "status": "vetoed", "vetoed_by": cmd["by"],
             "approvals": list(entry["approvals"]), "needed": entry["needed"], "action": entry["action"],
             "requested_by": entry["by"], "volume": entry["args"].get("volume"), "vetoes": vetoes[cmd["by"]]})


def _swept_requests(state: dict) -> dict:
    """The request records with expired pending ones marked ``expired``."""
    out = {}
    for req_id, entry in (state.get("requests") or {}).items():
        if entry["status"] == "pending" and request_expired(state, entry):
            entry = {**entry, "status": "expired"}
        out[req_id] = entry
    return out


def _kept_retention_records(requests: dict) -> set[str]:
    """Ids of the newest :data:`RETENTION_RECORDS_PER_VOLUME` applied ``set_retention`` records of
    each volume (:func:`locally_effective_retention` reads their ``previous`` policy)."""
    per_volume: dict[Any, list[str]] = {}
    for req_id, entry in requests.items():
        if entry["status"] == "applied" and entry["action"] == "set_retention":
            per_volume.setdefault(entry["args"].get("volume"), []).append(req_id)
    return {r for ids in per_volume.values() for r in ids[-RETENTION_RECORDS_PER_VOLUME:]}


def _bounded_requests(requests: dict, by: str) -> tuple[dict, list[dict]]:
    """``(records, forgotten)``: the request records with the oldest finished ones of ``by`` (the
    site that just made a request) forgotten past :data:`REQUESTS_MAX`, and a summary ``{"request",
    "status", "action", "requested_by"}`` of each forgotten one (every site logs them).

    Never forgotten: pending records (at most :data:`REQUESTS_PENDING_PER_SITE` per site),
    ``approved`` ones (cooling off: a majority's decision, a revocation among them) and the newest
    :data:`RETENTION_RECORDS_PER_VOLUME` applied retention changes of each volume; never another
    site's records. Before (review R9, F1) the table held 64 records in all and forgot finished
    ones oldest first, ``approved`` counting as finished: a site repeating a request and its own
    veto 64 times erased its approved revocation, silently at every site. Insertion order is
    creation order (``r<n>``), so the first records are the oldest."""
    finished = [r for r, e in requests.items() if e["by"] == by and e["status"] not in ("pending", "approved")]
    if len(finished) <= REQUESTS_MAX:
        return requests, []
    kept = _kept_retention_records(requests)
    candidates = [r for r in finished if r not in kept]
    drop = candidates[:max(0, len(finished) - REQUESTS_MAX)]
    out = {r: e for r, e in requests.items() if r not in set(drop)}
    return out, [{"request": r, "status": requests[r]["status"], "action": requests[r]["action"],
                  "requested_by": by} for r in drop]


def _members(cmd: dict) -> list[dict]:
    """The ``members`` argument of ``found``/``set_members``, canonical (sorted by site id, keys
    sorted); ``bad_request`` unless each is ``{site_id, raft, kind, keys}`` with distinct site ids."""
    value = cmd.get("members")
    if not isinstance(value, list) or not 0 < len(value) <= SITES_MAX:
        raise _Refusal("bad_request", f"members must be a list of 1 to {SITES_MAX} sites", field="members")
    out = []
    for m in value:
        if not isinstance(m, dict) or set(m) != {"site_id", "raft", "kind", "keys"} or \
                not isinstance(m["site_id"], str) or not 0 < len(m["site_id"]) <= NAME_MAX_CHARS or \
                not isinstance(m["raft"], str) or not 0 < len(m["raft"]) <= NAME_MAX_CHARS or \
                m["kind"] not in SITE_KINDS or not isinstance(m["keys"], list) or \
                len(m["keys"]) > MEMBER_KEYS_MAX or not all(isinstance(k, str) and len(k) <= 128 for k in m["keys"]):
            raise _Refusal("bad_request", "each member is {site_id, raft, kind, keys}", field="members",
                           member=_safe(str(m)[:200]))
        out.append({"site_id": m["site_id"], "raft": m["raft"], "kind": m["kind"], "keys": sorted(set(m["keys"]))})
    out.sort(key=lambda m: m["site_id"])
    if len({m["site_id"] for m in out}) != len(out):
        raise _Refusal("bad_request", "members names a site twice", field="members")
    return out


def _founding_reference(state: dict, trust: Trust | None) -> list[str] | None:
    """The configured site ids a ``found`` must win a majority of: ``limits.members`` (every
    site's ``[[sites]]``, given by the Raft node), else the sites ``trust`` pins keys for, else
    None (unit tests of the ops: a majority of the proposed list only)."""
    configured = (state.get("limits") or {}).get("members")
    if configured is not None:
        return list(configured)
    if (state.get("limits") or {}).get("joining"):  # a site that joined later replays the founding as
        return None                                  # its honest founders decided it (``[raft] join``)
    if trust is not None and trust.keys is not None:
        return sorted(trust.keys)
    return None


def founding_needed(members: list[dict], reference: list[str] | None) -> int:
    """Proposals of one identical list needed to adopt it: a majority of the sites it names
    and of ``reference`` (:func:`_founding_reference`) when known."""
    needed = len(members) // 2 + 1
    if reference is not None:
        needed = max(needed, len(reference) // 2 + 1)
    return needed


def _op_found(state: dict, cmd: dict, max_rules: int = RULES_MAX) -> tuple[dict, dict]:
    """Record the signing site's proposal of the incarnation and membership; adopt the list
    when a majority proposes it identically (see the module docstring, ``found``). A ``rules``
    it carries past ``max_rules`` is ``out_of_range`` (under rules 2 :data:`RULES2_MAX`, under rules 3
    :data:`RULES3_MAX`: :func:`apply`)."""
    inc = cmd.get("incarnation")
    if not isinstance(inc, bytes) or len(inc) != INCARNATION_BYTES:
        raise _Refusal("bad_request", f"incarnation must be {INCARNATION_BYTES} bytes", field="incarnation")
    members = _members(cmd)
    if RULES in cmd:  # the rules it founds the cluster under (apply, founding_rules): a state already there
        wanted = _int(cmd, RULES, 1)
        if wanted > max_rules:
            raise _Refusal("out_of_range", f"found with rules {wanted}: this code applies rules 1..{max_rules}",
                           field=RULES, to=wanted, max_rules=max_rules)
    current = state.get("incarnation")
    if current is not None:
        return state, {"ok": True, "created": False, "adopted": True, "incarnation": current["id"],
                       "members": current["members"]}
    ids = {m["site_id"] for m in members}
    if cmd["by"] not in ids:
        raise _Refusal("conflict", f"found by {cmd['by']!r}: not in the members it names", by=cmd["by"])
    reference = _founding_reference(state, cmd.get(_TRUST))
    if reference is not None and cmd["by"] not in reference:
        raise _Refusal("conflict", f"found by {cmd['by']!r}: not a configured site", by=cmd["by"])
    founding = dict(state.get("founding") or {})
    if cmd["by"] not in founding and len(founding) >= SITES_MAX:
        raise _Refusal("conflict", f"{SITES_MAX} sites already proposed a membership", by=cmd["by"])
    founding[cmd["by"]] = {"members": members, "incarnation": inc, "at_ns": cmd["now_ns"]}
    agreeing = sorted(site for site, p in founding.items() if p["members"] == members and
                      (reference is None or site in reference))
    needed = founding_needed(members, reference)
    if len(agreeing) < needed:
        return ({**state, "founding": founding},
                {"ok": True, "created": False, "adopted": False, "incarnation": None, "members": None,
                 "agreeing": agreeing, "needed": needed})
    new_id = hashlib.blake2b(b"".join(founding[site]["incarnation"] for site in agreeing),
                             digest_size=INCARNATION_BYTES).digest()
    entry = {"id": new_id, "members": members, "by": cmd["by"], "at_ns": cmd["now_ns"], "founders": agreeing}
    # the configured limits (the Raft node's config) end with the adoption: from then on the agreed
    # membership bounds registration, so the state no longer depends on any site's config
    adopted = {k: v for k, v in state.items() if k not in ("founding", "limits")}
    adopted["sites"] = _with_member_kinds(state["sites"], members)
    return ({**adopted, "incarnation": entry},
            {"ok": True, "created": True, "adopted": True, "incarnation": new_id, "members": members,
             "agreeing": agreeing, "needed": needed})


def _op_set_members(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Replace the agreed membership (only as an approved request)."""
    members = _members(cmd)
    current = state.get("incarnation")
    if current is None:
        raise _Refusal("not_found", "the cluster has no agreed membership yet (no found command applied)")
    _needs_approval(cmd, "changing the cluster's membership")
    if _APPROVALS in cmd:  # run for an approved request (not the check when it is made)
        must = membership_change(state, "set_members", {"members": members})["must_approve"]
        missing = sorted(set(must) - set(cmd[_APPROVALS]))
        if missing:
            raise _Refusal("approval_required", f"changing the entry of {', '.join(missing)} needs its own approval "
                           "(a member's Raft address, kind or keys never change without it)", waiting_for=missing)
    witnesses = {m["site_id"] for m in members if m["kind"] == "witness"}
    primary_of = sorted(n for n, v in state["volumes"].items() if v["primary"] in witnesses)
    if primary_of:
        raise _Refusal("conflict", f"the sites primary of {primary_of} cannot become witnesses", volumes=primary_of)
    changed = members != current["members"]
    return ({**state, "incarnation": {**current, "members": members},
             "sites": _with_member_kinds(state["sites"], members)},
            {"ok": True, "members": members, "changed": changed})


# op -> (handler, allowed arg keys, required arg keys)
def _op_vouch(state: dict, cmd: dict) -> tuple[dict, dict]:
    """Record the signing site's vouch for the state after ``n`` applied commands (see the
    module docstring, ``vouch``)."""
    by = cmd["by"]
    n = _int(cmd, "n", 1)
    digest = cmd.get("hash")
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise _Refusal("bad_request", f"hash must be {DIGEST_BYTES} bytes", field="hash")
    if by not in state["sites"]:
        raise _Refusal("not_found", f"vouch by {by!r}: not a registered site", site_id=by)
    applied = state.get("applied", 0)
    if n > applied:
        raise _Refusal("conflict", f"vouch by {by!r} for the state after {n} commands: only {applied} were applied",
                       by=by, n=n, applied=applied)
    vouches = state.get("vouches") or {}
    mine = list(vouches.get(by) or ())
    if mine and n <= mine[-1][0]:
        raise _Refusal("conflict", f"vouch by {by!r} for {n}: not above its last vouch ({mine[-1][0]})",
                       by=by, n=n, last_n=mine[-1][0])
    kept = (mine + [[n, digest]])[-VOUCHES_PER_SITE:]
    return {**state, "vouches": {**vouches, by: kept}}, {"ok": True, "n": n}


def _op_rules(state: dict, cmd: dict, max_rules: int = RULES_MAX) -> tuple[dict, dict]:
    """Raise the state's rules version (:data:`RULES`) to ``to`` (module docstring, "Rules
    version"): by a registered site (``not_found``), only upward (a lower ``to`` is ``conflict``,
    evidence ``refusal`` ``rules_lower``), at most :data:`RULES_MAX`, the highest this code applies
    (``out_of_range`` past it, or below 1), in a founded cluster (``conflict`` ``rules_not_founded``)
    with a majority clock (``rules_no_clock``: a report's age could not be judged), and only with
    ``reports`` (:func:`rules_reports_problems`) showing either

    1. that every unrevoked member runs a release applying ``to``; or
    2. that a majority of them does, AND the consent of a majority of the unrevoked members'
       operators to leave behind the members without a good report (:func:`rules_consents`: a
       good report whose signed ``leave_behind`` covers every one of them).

    Else ``conflict``: evidence ``refusal`` ``rules_unreported`` (fewer than a majority of good
    reports; the members' ``problems``, ``reported``, ``needed``) or ``rules_no_consent`` (a
    majority reported, too few operators consented to leave the others behind: ``problems``,
    ``consented``, ``needed``). Why both (ARCHITECTURE.md, Choices, "The state's rules version"):
    every member's report alone lets one hostile member hold rules 1 for ever by withholding its
    own (and under rules 1 it can flood the request table until an approved revocation of itself
    is forgotten); a majority's reports alone let one hostile member raise with its own lying
    report and one upgraded honest site's served report while an honest member still runs the
    previous release, which then parts from the others. A consent travels only inside an honest
    site's signed report, given by its operator (``replicad raise-rules --leave-behind``), so one
    site can neither hasten a raise past an honest member (a second operator must consent) nor
    hold rules 1 (a majority of operators can leave it behind). The version the state has already
    is answered ``changed`` false (no reports needed). Under rules 1 only a raise accepted here is
    this code's: every other ``rules`` command is decided by :mod:`replicad.core.state_rules1` (an
    unknown op, as b976d0a answers it); under rules 2 with ``max_rules`` :data:`RULES2_MAX` in
    place of :data:`RULES_MAX` (:func:`apply`: as 84f7f0f and 74f9f08 answer it), under rules 3
    with :data:`RULES3_MAX` (as 64af970 answers it). The raise to :data:`RULES_AUDIT_BY_SIGNER`
    attributes the audit records kept from before (:func:`audit_by_signer`).

    ``reports``: ``{site_id: [rules_max, at_ns, sig]}`` or ``[rules_max, at_ns, sig, leave_behind]``,
    each member's release report (:func:`replicad.core.identity.release_report_bytes`; ``sig`` 64
    bytes, or None unsigned; ``leave_behind`` sorted site ids). Result: ``{"ok", "rules": int,
    "previous": int, "changed": bool}``, and on a raise ``behind``: ``{site_id: why}`` of the members
    whose reports did not show the new rules ({} when all did) and, when some were left behind,
    ``consented``: the sites whose operators consented to leave them behind."""
    to = cmd.get("to")
    if not _is_int(to):
        raise _Refusal("bad_request", "to must be an integer rules version", field="to", value=_safe(to))
    if cmd["by"] not in state["sites"]:
        raise _Refusal("not_found", f"site {cmd['by']!r} is not a registered site", site_id=cmd["by"])
    if not 1 <= to <= max_rules:
        raise _Refusal("out_of_range", f"rules {to}: this code applies rules 1..{max_rules}", to=to,
                       max_rules=max_rules)
    current = rules(state)
    if to < current:
        raise _Refusal("conflict", f"rules {to}: the state is decided under rules {current} already; a rules "
                       "version is only ever raised", to=to, rules=current, refusal="rules_lower")
    if to == current:
        return state, {"ok": True, "rules": current, "previous": current, "changed": False}
    reports = cmd.get("reports")
    if not isinstance(reports, dict) or len(reports) > SITES_MAX:
        raise _Refusal("bad_request", f"rules {to}: a raise carries reports, a map of at most {SITES_MAX} members' "
                       "release reports", field="reports")
    if state.get("incarnation") is None:
        raise _Refusal("conflict", f"rules {to}: the cluster is not founded yet (no agreed membership to count "
                       "the release reports against)", to=to, refusal="rules_not_founded")
    if quorum_now_ns(state) is None:
        raise _Refusal("conflict", f"rules {to}: no majority clock yet (a release report's age cannot be judged)",
                       to=to, refusal="rules_no_clock")
    members = rules_members(state)
    problems = rules_reports_problems(state, reports, to, cmd.get(_TRUST))
    reported = len(members) - len(problems)
    needed = len(members) // 2 + 1
    said = '; '.join(f'{site}: {why}' for site, why in sorted(problems.items()))
    if reported < needed:
        raise _Refusal("conflict", f"rules {to}: {reported} of {len(members)} unrevoked members reported a release "
                       f"applying it, a majority ({needed}) must ({said})", to=to,
                       refusal="rules_unreported", problems=problems, reported=reported, needed=needed)
    consented = rules_consents(state, reports, problems) if problems else []
    if problems and len(consented) < needed:
        raise _Refusal("conflict", f"rules {to}: {len(consented)} of {len(members)} unrevoked members' operators "
                       f"consented to leave behind {', '.join(sorted(problems))}, a majority ({needed}) must "
                       f"(replicad raise-rules --leave-behind at each site; {said})", to=to,
                       refusal="rules_no_consent", problems=problems, consented=consented, needed=needed)
    raised = {**state, RULES: to}
    if current < RULES_SIGNER_KEYED <= to:  # the exactly-once memory is keyed by signer from now on
        raised["applied_ops"] = applied_by_signer(state)
    if current < RULES_AUDIT_BY_SIGNER <= to:  # the audit is kept per signing site from now on
        raised["audit"] = audit_by_signer(state)
        raised[AUDIT_UNCOUNTED] = _applied_count(state)  # the records kept are of commands up to it
    return (raised,
            {"ok": True, "rules": to, "previous": current, "changed": True, "behind": problems,
             **({"consented": consented} if problems else {})})


def rules_members(state: dict) -> list[str]:
    """The sites whose release reports a raise of the rules counts (:func:`_op_rules`: a majority
    of them): the unrevoked members of the agreed membership (data sites and witnesses: each
    applies every command), or, before an incarnation (no raise is accepted then), the
    registered sites not revoked. Sorted; pure."""
    inc = state.get("incarnation")
    sites = [m["site_id"] for m in inc["members"]] if inc is not None else list(state.get("sites") or {})
    revoked = state.get("revoked") or {}
    return sorted(s for s in sites if s not in revoked)


def rules_reports_problems(state: dict, reports: Any, to: int, trust: Trust | None) -> dict[str, str]:
    """``{site_id: why}`` for each member (:func:`rules_members`) whose release report in ``reports``
    (``{site_id: [rules_max, at_ns, sig]}``, or ``[rules_max, at_ns, sig, leave_behind]`` with its
    operator's consent, ``leave_behind`` a sorted list of at most :data:`SITES_MAX` distinct site
    ids, signed with it) does not show a release applying rules ``to``:
    ``not reported``, ``malformed``, ``runs rules 1..N`` (N < ``to``), ``stale`` (``at_ns``
    more than :data:`RULES_REPORT_TTL_NS` from the majority clock, when there is one), or the
    signature's problem (signed clusters: under the keys the state records for the member,
    revoked keys refused; :func:`replicad.core.identity.release_report_problem`). {} when every
    member reported. Reports of other sites are ignored. Pure; never raises."""
    problems: dict[str, str] = {}
    reports = reports if isinstance(reports, dict) else {}
    quorum_now = quorum_now_ns(state)
    revoked_keys = {k for entry in (state.get("revoked") or {}).values() for k in entry.get("keys", ())}
    for site in rules_members(state):
        entry = reports.get(site)
        if entry is None:
            problems[site] = "not reported"
            continue
        if not (isinstance(entry, (list, tuple)) and len(entry) in (3, 4) and _is_int(entry[0])
                and _is_int(entry[1]) and (entry[2] is None or isinstance(entry[2], bytes))
                and (len(entry) == 3 or leave_behind_ok(entry[3]))):
            problems[site] = "malformed"
            continue
        rules_max, at_ns, sig = entry[:3]
        leave_behind = list(entry[3]) if len(entry) == 4 else None
        if rules_max < to:
            problems[site] = f"runs rules 1..{rules_max}"
        elif quorum_now is not None and abs(at_ns - quorum_now) > RULES_REPORT_TTL_NS:
            problems[site] = "stale"
        elif trust is not None and trust.keys is not None:
            keys = member_keys(state, site) if state.get("incarnation") is not None else (trust.keys.get(site) or ())
            problem = identity.release_report_problem(sig, keys, trust.cluster_id, site, rules_max, at_ns,
                                                      revoked_keys, leave_behind)
            if problem is not None:
                problems[site] = problem
    return problems


def leave_behind_ok(value: Any) -> bool:
    """A report's ``leave_behind``: a sorted list of at most :data:`SITES_MAX` distinct site ids
    (strings of at most :data:`NAME_MAX_CHARS`, printable). Pure."""
    return (isinstance(value, (list, tuple)) and len(value) <= SITES_MAX
            and all(isinstance(s, str) and 0 < len(s) <= NAME_MAX_CHARS and printable(s) for s in value)
            and list(value) == sorted(set(value)))


def rules_consents(state: dict, reports: Any, problems: dict[str, str]) -> list[str]:
    """The members whose operators consent to a raise of the rules leaving behind every member in
    ``problems`` (:func:`rules_reports_problems` of the same ``reports``): each member without a
    problem whose report carries a ``leave_behind`` covering all of ``problems`` (the signature
    covers it: checked there). A member's consent to leave behind more members than ``problems``
    counts (it agreed to lose those and others); one leaving fewer does not. Sorted; pure; never
    raises."""
    reports = reports if isinstance(reports, dict) else {}
    behind = set(problems)
    out = []
    for site in rules_members(state):
        entry = reports.get(site)
        if site in problems or not isinstance(entry, (list, tuple)) or len(entry) != 4:
            continue
        if leave_behind_ok(entry[3]) and behind <= set(entry[3]):
            out.append(site)
    return out


_OPS: dict[str, tuple[Callable[[dict, dict], tuple[dict, dict]], frozenset[str], frozenset[str]]] = {
    "register_site": (_op_register_site, frozenset({"site_id", "peer_url", "kind"}),
                      frozenset({"site_id", "peer_url", "kind"})),
    "add_volume": (_op_add_volume, frozenset({"volume", "primary", "block_size", "size_bytes",
                                              "min_copies", "retention", "detection", "max_size_bytes"}),
                   frozenset({"volume", "primary", "block_size", "size_bytes", "min_copies", "retention"})),
    "commit_snapshot": (_op_commit_snapshot,
                        frozenset({"volume", "seq", "epoch", "root", "parent_seq", "created_at_ns",
                                   "holders", "stats", "verdict", "size_bytes", "acks"}),
                        frozenset({"volume", "seq", "epoch", "root", "parent_seq", "created_at_ns",
                                   "holders", "stats", "verdict"})),
    "add_holder": (_op_add_holder, frozenset({"volume", "seq", "site_id"}),
                   frozenset({"volume", "seq", "site_id"})),
    "remove_holder": (_op_remove_holder, frozenset({"volume", "seq", "site_id"}),
                      frozenset({"volume", "seq", "site_id"})),
    "promote": (_op_promote, frozenset({"volume", "to", "expected_epoch", "force", "snapshot", "instant"}),
                frozenset({"volume", "to", "expected_epoch"})),
    "demote": (_op_demote, frozenset({"volume", "expected_epoch", "force"}),
               frozenset({"volume", "expected_epoch"})),
    "mark_verdict": (_op_mark_verdict, frozenset({"volume", "seq", "verdict", "reason"}),
                     frozenset({"volume", "seq", "verdict", "reason"})),
    "set_retention": (_op_set_retention, frozenset({"volume", "retention"}),
                      frozenset({"volume", "retention"})),
    "set_max_size": (_op_set_max_size, frozenset({"volume", "max_size_bytes"}),
                     frozenset({"volume", "max_size_bytes"})),
    "prune_snapshots": (_op_prune_snapshots, frozenset({"volume", "seqs"}), frozenset({"volume", "seqs"})),
    "remove_volume": (_op_remove_volume, frozenset({"volume"}), frozenset({"volume"})),
    "request": (_op_request, frozenset({"action", "args", "reason"}), frozenset({"action", "args"})),
    "approve": (_op_approve, frozenset({"request"}), frozenset({"request"})),
    "veto": (_op_veto, frozenset({"request"}), frozenset({"request"})),
    "revoke_site": (_op_revoke_site, frozenset({"site_id", "keys"}), frozenset({"site_id", "keys"})),
    "clock": (lambda state, cmd: (state, {"ok": True}), frozenset(), frozenset()),
    "vouch": (_op_vouch, frozenset({"n", "hash"}), frozenset({"n", "hash"})),
    "rules": (_op_rules, frozenset({"to", "reports"}), frozenset({"to"})),
    "found": (_op_found, frozenset({"incarnation", "members", RULES}), frozenset({"incarnation", "members"})),
    "set_members": (_op_set_members, frozenset({"members"}), frozenset({"members"})),
    "set_detection": (_op_set_detection, frozenset({"volume", "policy"}), frozenset({"volume", "policy"})),
    "site_verdict": (_op_site_verdict, frozenset({"volume", "seq", "verdict", "score_ppm", "cumulative_ppm",
                                                  "first_seq", "reason"}),
                     frozenset({"volume", "seq", "verdict", "score_ppm", "cumulative_ppm", "reason"})),
}

OPS: tuple[str, ...] = tuple(_OPS)
"""The names of every op the state machine knows."""

_OPS_RULES3: dict[str, tuple[Callable[[dict, dict], tuple[dict, dict]], frozenset[str], frozenset[str]]] = {
    **_OPS,
    "rules": (lambda state, cmd: _op_rules(state, cmd, max_rules=RULES3_MAX), _OPS["rules"][1], _OPS["rules"][2]),
    "found": (lambda state, cmd: _op_found(state, cmd, max_rules=RULES3_MAX), _OPS["found"][1], _OPS["found"][2]),
}
"""The op table a state under rules 3 is decided by (:func:`apply`): that of 64af970, whose
:data:`RULES_MAX` was :data:`RULES3_MAX`: ``rules`` and ``found`` bounded at 3."""

_OPS_RULES2: dict[str, tuple[Callable[[dict, dict], tuple[dict, dict]], frozenset[str], frozenset[str]]] = {
    **_OPS,
    "rules": (lambda state, cmd: _op_rules(state, cmd, max_rules=RULES2_MAX), _OPS["rules"][1], _OPS["rules"][2]),
    "found": (lambda state, cmd: _op_found(state, cmd, max_rules=RULES2_MAX), _OPS["found"][1], _OPS["found"][2]),
}
"""The op table a state under rules 2 founded under rules (:data:`FOUNDED_RULES`) is decided by
(:func:`apply`): that of 74f9f08, whose :data:`RULES_MAX` was :data:`RULES2_MAX`: ``rules`` and
``found`` bounded at 2."""

_OPS_RULES2_PLAIN: dict[str, tuple[Callable[[dict, dict], tuple[dict, dict]], frozenset[str], frozenset[str]]] = {
    **_OPS_RULES2,
    "found": (_op_found, _OPS["found"][1] - {RULES}, _OPS["found"][2]),
}
"""The op table any other state under rules 2 (raised to 2, as release 84f7f0f raises it) is
decided by (:func:`apply`): release 84f7f0f's: ``rules`` bounded at 2, a ``found`` carrying
``rules`` refused ``bad_request`` for the unknown key (its message and evidence)."""
