"""Raft through pysyncobj 0.3.17, hardened, with an asyncio bridge.

:class:`RaftNode` replicates the pure state machine of :mod:`replicad.core.state`. Everything
pysyncobj-specific stays in this module; callers see :mod:`replicad.core.errors` only.

Design (FIELD-NOTES.md, "pysyncobj"):

* **One replicated entry point** taking msgpack bytes (``_StateConsumer.apply_command``).
  It decodes, calls :func:`replicad.core.state.apply` (which never raises) and never raises
  itself: an exception inside a replicated method wedges every node.
* **Consumer pattern**: the state lives on a ``SyncObjConsumer`` built before the
  ``SyncObj`` starts, so full dumps and restores find it.
* **journalFile and fullDumpFile both set** (``raft.journal``, ``raft.dump`` in ``data_dir``).
* **asyncio bridge**: :meth:`RaftNode.propose` hands the command to pysyncobj's queue with
  a callback (never a ``sync=True`` call on the loop); the callback runs on the tick thread
  and settles an ``asyncio.Future`` through ``loop.call_soon_threadsafe``.
* ``appendEntriesUseBatch=False`` (commit ~1 ms instead of ~100 ms on loopback),
  ``dynamicMembershipChange=False``, ``password`` set (Fernet), and the server bound to
  the configured address only.

Hardening installed at import (idempotent, process-wide, since pysyncobj looks these
names up in its own modules):

1. **Restricted unpickler.** pysyncobj's wire format and log entries are pickle. Its
   modules do ``import pysyncobj.pickle as pickle`` and call ``pickle.loads`` /
   ``pickle.load`` at call time; ``journal.py`` bound ``loads`` at import. Both are
   replaced by :func:`restricted_loads` / :func:`restricted_load`, which only resolve the
   globals a protocol-2 pickle of pysyncobj's own messages needs: ``_codecs.encode``
   (how protocol 2 spells ``bytes``; only the ``latin1`` codec is allowed),
   ``builtins.bytes``/``bytearray`` (only from bytes-like or no arguments) and
   ``builtins.set``/``frozenset``. Everything else (``os.system``, ``TCPNode`` ...) raises
   ``pickle.UnpicklingError``. Node objects are never needed: membership changes are
   disabled and the full dump is msgpack (below). A refused frame makes pysyncobj drop the
   connection; a refused log entry is skipped (point 4).
2. **Durable log (O6).** pysyncobj's ``FileJournal`` appends through an mmap that is never
   msync'ed, and its meta file (currentTerm, votedFor) is written without fsync: a power
   loss on a majority could lose acknowledged entries or let a node vote twice in a term.
   ``pysyncobj.syncobj.createJournal`` (imported by name into ``syncobj``) is replaced to
   build a :class:`DurableJournal`: a plain append-only file of CRC-checked records where
   ``add()`` writes and ``fdatasync``s before returning, ``deleteEntriesFrom()`` truncates
   and syncs, compaction rewrites into a temporary file that is fsync'ed and renamed (and
   the directory fsync'ed), and the meta file is written tmp + fsync + rename + directory
   fsync. A follower acknowledges entries (``next_node_idx``) in the same tick, *after*
   ``add()`` returned, and the leader counts its own copy only after its own ``add()``:
   so every acknowledged entry is on disk first. A torn record at the tail (crash during
   a write) fails its CRC and is dropped at load; it was never acknowledged.
3. **Full dump written atomically and durably, without pickle.** With pysyncobj's own
   serializer the dump is a forked child's gzip pickle renamed into place without fsync.
   We pass ``serializer``/``deserializer`` to ``SyncObjConf``: the dump is a msgpack
   document ``{v, state, last, prev, cluster}`` written to pysyncobj's temporary name
   and fsync'ed; pysyncobj renames it; the journal compaction that follows fsyncs the
   directory before and after rewriting the log. The deserializer (also used when a
   leader installs its dump on a lagging follower, after pysyncobj renamed the received
   file) fsyncs the file and directory before trusting it. A dump that cannot be read
   marks the node broken: :meth:`RaftNode.propose` then raises ``InternalError`` and
   :meth:`RaftNode.status` reports ``dump_error`` (pysyncobj itself only logs it).
4. **Log entries checked at both ends.** ``_HardenedSyncObj._applyCommand`` (every
   command reaching a leader, local or forwarded) accepts only a regular command calling
   our one method with one ``bytes`` argument of at most :data:`MAX_COMMAND_BYTES`;
   membership and code-version commands are refused (a password holder could otherwise
   change the membership even with dynamic membership disabled, or wedge every node with
   an unknown code version). When applying, entries other than regular and no-op are
   skipped, and an entry that fails to decode is logged and skipped instead of raising
   out of the tick (which would retry it forever).
5. **Bounded frames.** ``tcp_connection.py`` has no maximum message size: it buffers until
   the declared length arrived (64 MiB of junk grew a process by ~115 MB). Connections are
   built from :class:`_BoundedTcpConnection` (patched into ``pysyncobj.transport`` and
   ``pysyncobj.tcp_server``): every frame header is checked as it arrives, and a declared
   length outside ``[0, MAX_FRAME_BYTES]`` (2 MiB, ten times the largest legitimate frame)
   drops the connection. Until a connection delivered a frame that decrypted (the peer's
   session key), the limit is :data:`MAX_HANDSHAKE_FRAME_BYTES` (4 KiB) and the buffer at
   most twice that: a client without the password holds at most ~70 KiB per connection.
6. **Raft's append rule.** pysyncobj's leader pipelines ``append_entries`` and moves
   ``nextIndex`` back to the index in each success answer, so it resends entries already
   in flight; its follower then deletes everything after ``prevLogIdx`` and appends the
   message's entries, even when they are identical, logging at CRITICAL "truncating
   already-applied log entries" when some were applied. The re-appended entries were the
   same (the state stayed equal on all nodes), but an entry the follower had acknowledged
   was briefly missing from its durable log (a crash then loses it: O6), and a shorter
   resend batch (64 KiB) could leave it missing until the next message. The follower now
   follows Raft §5.3 (:func:`plan_append_entries`: delete only from a conflicting entry,
   acknowledge only what the message vouched for, commit at most up to it) and the leader
   never moves ``nextIndex`` back on a success answer (a reset still does).
7. **PreVote** (Ongaro, "Consensus: Bridging Theory and Practice", 2014, §9.6; etcd's
   ``PreVote``). pysyncobj starts an election, with a new term, whenever its election
   deadline passed on a tick. A node whose tick thread was stalled (a 3 s fsync, SIGSTOP,
   a one-way cut that only loses the leader's messages) finds its deadline passed and
   bumps its term; its higher term then deposes a healthy leader, again and again (an
   election storm: terms 1 to 11 and no commit for ~39 s in the ``slow-fsync`` chaos
   campaign). Now a node whose deadline passed first asks every peer ``pre_vote`` (the
   term it *would* use, its last log index and term) without changing any state. A peer
   grants only if that term is above its own, the log is at least as up to date as its
   own, it is not the leader and it has not heard from a leader for ``raftMinTimeout``
   (the leader lease). Only with a majority of grants (counting itself) does the node
   start pysyncobj's real election. A leader transfer (``timeout_now``) skips the round.
   A round ends when a leader is heard (an ``append_entries`` at this node's term or above) and
   when its win is used, and a win is used only within ``raftMaxTimeout`` of its majority:
   a win kept past the leader's heartbeat (the grant and the heartbeat in one poll), late grants
   of a round that ended so, or a win whose tick was held up, started a real election later that
   the members inside their leader's lease refused (``vote_in_lease``: a grant exempts only a
   request_vote within ``raftMaxTimeout``), leaving the node one term above its healthy leader,
   dropping the leader's messages, never in sync again (the state a site upgraded beside a
   b976d0a leader under load was seen in, 2 runs in 5; the paths are reproduced on real nodes in
   ``tests/unit/consensus/test_stranded_term.py``, the runs were not). A node stranded
   above its leader's term by another path (a granter that answers its queue late) still stays
   there while the others keep their lease; its commands commit through the relay (point 20).
   No exception to the lease. There was one (chaos ``one-way`` campaign): a volume primary
   (``needs_leader``) that had heard no leader for :data:`ISOLATED_AFTER_S` was granted despite
   the lease, so that a primary whose link to the leader is cut, while both reach the third site,
   could commit again; and a follower adopted the term of such a primary stranded above its
   leader's term with a log behind. Both rested on the asker's own word, and both gave a
   compromised primary the lead at will (attacker review R7 F1: it claimed isolation with an
   up-to-date log and took the lead from an honest leader in ~1 s, term 1 -> 2; a claimed
   stranded term could make a follower adopt it, drop its leader's lower-term messages, lose its
   lease and then grant the liar's up-to-date pre-vote: reasoned from the code, not run). And they bought the honest primary ~nothing: every site commits a
   signed ``clock`` every 5 s (``site/daemon.py``), so a primary truly cut off for 10 s has a log
   behind the third site's, which refuses it on the log rule anyway; only a member that is NOT
   cut off could win under the exception. A cut-off (or stranded) primary's commands now commit
   through the members it still reaches (point 20); it applies them, and anything else, once it
   hears a leader again. Its pre-vote messages still carry ``needs_leader`` and ``isolated_s``
   (older members read them); nobody acts on them.

8. **Members only, bounded, bound to one site** (:mod:`replicad.consensus.channel`). ``SyncObj``
   is built with :class:`~replicad.consensus.channel.MemberOnlyTransport`: read-only observers,
   unknown or impostor addresses (a member that never dials us), utility commands (status,
   add/remove, set_version, transfer) and second connections of a live member are refused
   and closed; handshakes must finish within 2 s and are capped per source address;
   frames are inflated to at most 1 MiB, and the frame parser checks replayed timestamps
   and session keys without ``assert``. In a signed cluster (``trust.keys``) the handshake
   is mutual and signed by each end's pinned site key, and each connection's frames are
   encrypted under its own X25519-derived key (``bad_identity``); the applied state's
   revocations drop, refuse and stop dialing a revoked site (``revoked_site``).
9. **Who may say what** (:mod:`replicad.consensus.guard`, ``_HardenedSyncObj._authority_problem``):
   every message is shape-checked before pysyncobj indexes it, and terms are bounded
   (``term <= own + MAX_TERM_STEP``). Leader stickiness (Raft thesis §4.2.3, etcd's
   CheckQuorum): while this node's leader lease holds (a follower heard its leader within
   ``raftMinTimeout``, a leader heard a majority within it) a ``request_vote`` at a higher
   term is ignored (unless this node just granted that candidate a pre-vote, point 7) and
   an ``append_entries`` at a higher term from any member but the leader is refused; a
   second leader in the same term is refused; a full state install (``append_entries``
   with ``serialized``) is accepted only from the leader this node follows in its current
   term; ``apply_command_response`` only from the leader; a vote counts once per member.
   Every refusal is counted (``status()["refused"]``, ``replicad_raft_refused_total``)
   and logged at WARNING (rate-limited per reason).
12. **A journal that cannot be written or was lost** (issue 13; :mod:`replicad.consensus.journal`).
   An append that fails for lack of space raises ``StoreFullError`` and leaves the file as it
   was (never a torn record before later ones). A leader whose append fails steps down (it
   could commit nothing while keeping the role); while the journal's file system is still
   full the node runs for no election and refuses proposals at once with ``store_full``
   (HTTP 507) instead of a ``no_quorum`` timeout. A node whose journal is missing while its
   meta or dump exist (the operator moved a damaged journal aside) grants no vote and no
   pre-vote and runs for no election until its commit index reached the leader's: an empty
   log would otherwise vouch for any candidate, and could elect one lacking committed entries.
   A full node grants no pre-vote either (it could not store the vote it promises), and its
   term moves only once stored (pysyncobj set it in memory first: a failed meta write left
   the full node at a term it never stored, and its answers drove the others' terms up,
   1 to 11 in 4 s with commits stalled, measured; now one election).
10. **Liveness after term inflation.** A pre-vote answer carries the responder's term; a
   node refused by a member at a higher term adopts it (at most ``MAX_TERM_STEP`` at once)
   and asks again at once; a leader that has not heard from a majority for
   ``raftMaxTimeout`` steps down when a pre-vote shows a member at a higher term. Before,
   a follower inflated to term + 10^6 whose log was behind refused every pre-vote of the
   other honest site while that one refused its own: no leader for as long as observed
   (97 s and 60 s). A leader not heard from within an election timeout is forgotten
   (``status()["leader"]`` None) instead of being reported until the next election.
11. **Full states checked before they are written** (:class:`~replicad.consensus.guard.GuardedSerializer`,
   :func:`replicad.core.state.dump_problems`): a dump from the leader must keep every
   site and volume, never move an epoch or last seq back, keep every committed snapshot
   record with the same root, epoch and time, and may lack only records older than the
   lock window by this node's clock. Otherwise it is refused (ERROR, counted as
   ``snapshot_regresses``) before it replaces ``raft.dump``.

14. **Full states only from vouched checkpoints** (:mod:`replicad.consensus.checkpoint`;
   issue 11 part 4). Every site counts the commands it applies (``state["applied"]``),
   digests its state every :data:`~replicad.consensus.checkpoint.CHECKPOINT_EVERY` commands
   and proposes a signed ``vouch {n, hash}`` (from the tick callback, never from inside the
   replicated method, once it applied everything it knows committed). A dump is the newest
   checkpoint a majority vouched (or the initial state) plus the signed commands since;
   loading one (from the leader, through the guard, and this site's own at start) replays
   them through ``apply`` and requires the majority's vouches among them
   (``dump_not_vouched``, ``dump_bad_command``, ``dump_malformed``: ERROR, counted, state and
   file untouched), then ``dump_problems`` as a second gate. No vouched checkpoint kept: no
   dump is written, so pysyncobj keeps its log. A damaged, zeroed, truncated or missing own
   dump (over a compacted journal) refuses to start (``DumpDamagedError``, exit 5). The file
   carries a BLAKE3 checksum of its body (format 3, :mod:`replicad.consensus.dumpfile`): a
   damaged command in the suffix would otherwise fail its signature and be replayed as
   refused, silently; a mismatch refuses the own dump at start and a received one
   (``dump_damaged``, counted like the other refusals).

15. **A leader that cannot send its dump, a follower that cannot catch up** (issue 13). A
   follower behind the leader's compacted log needs the leader's dump; pysyncobj logged a
   traceback for every failed read of it and retried in a busy loop (~3,000 a second here),
   kept the leadership, and the follower never caught up. :class:`GuardedSerializer` now
   reads the dump for sending, hands an ``OSError`` to the node without a traceback and
   holds that member for ``guard.DUMP_SEND_RETRY_S`` (it gets a plain heartbeat, an
   ``append_entries`` with ``serialized`` None, which the guard accepts as such); after
   :data:`DUMP_SEND_FAILURES_MAX` failures within :data:`DUMP_FAILURE_WINDOW_S` the leader
   steps down with one ERROR line, counts them (``dump_send_failures``), and runs for no
   election for :data:`DUMP_NO_CANDIDACY_S`, so that a member that can read its own dump
   leads and serves the follower. (Were it the only up-to-date member, nothing could commit
   anyway: the follower it cannot serve is the majority's second vote.) A follower compares
   what it applied with the commit index its *leader* reports (``leader_commit_index``);
   ``caught_up`` (``Cluster.raft_synced``) is false until it reached it once since start and
   whenever it stays behind longer than :data:`SYNCED_GRACE_S`, with a WARNING after
   :data:`CATCH_UP_STALL_S` without progress. A dump it cannot store is ``dump_unwritable``.

17. **Commands forwarded to the leader are checked at the door** (issue 11's open item: one
   site flooding the log). A member forwards its own proposals to the leader
   (``apply_command``); before pysyncobj appends one, :meth:`RaftNode._door_check` refuses it
   (``REQUEST_DENIED`` to the sender, counted and logged at WARNING) when it is not a replicad
   command (``forwarded_malformed``), when, in a signed cluster with an agreed membership, it is
   not signed by the forwarding member's own site (``forwarded_not_own``: an honest daemon only
   ever forwards its own commands) or its signature does not verify under the keys the state
   gives that site (``forwarded_bad_signature``), or when the member is over its budget
   (``forwarded_over_budget``: a token bucket per member, :class:`MemberBudget`, of :data:`FORWARD_CMDS_PER_S`
   commands and :data:`FORWARD_BYTES_PER_S` bytes a second, bursts of
   :data:`FORWARD_BURST_S` seconds' worth). A site's ``clock`` heartbeats, forwarded or relayed
   (point 20), have a rate of their own, :class:`~replicad.consensus.guard.ClockRate` (5 times an
   honest site's: ``forwarded_clock_over_rate``, ``relay_clock_over_rate``; attacker review r13, F3:
   one site's 6,000 heartbeats in 17 s made every site compact its log, and a site away then catches
   up from a full state). A non-leader never relays a member's ``apply_command``
   sent without a request id (pysyncobj would forward it as its own, spending the honest site's
   budget in the attacker's place: ``forwarded_to_follower``). Before, a compromised member had every site journal
   ~4 MB/s of forged commands, each refused only when applied. The state machine still checks
   every applied command (the leader itself is not checked here: a compromised leader appends
   what it likes, and only what it signs itself takes effect; point 18 deposes it).

18. **A leader that appends what an honest leader's door refuses is deposed.** An honest leader
   never appends such an entry (point 17 refuses it when forwarded; its own are signed by itself),
   so each follower counts, per leader term, the entries it applied that the door would have
   refused whoever forwarded them (:func:`door_refusal`, sharing the door's signature check):
   not a replicad command (``malformed``: an entry that does not decode, another pysyncobj entry
   type, or a payload that is no command map) and, in a signed cluster with an agreed membership,
   a signature that does not verify under the keys the state before the entry gives the site in
   ``by`` (``bad_signature``). Not counted, because an honest leader's door lets them through: a
   command signed for another cluster, replayed or expired (refused only when applied), a key
   revoked between the door and the entry, anything before the founding, and signatures in the
   first :data:`DEPOSE_GRACE_ENTRIES` entries after the agreed membership changed (a leader
   door-checks under the keys it has applied, which may lag a key change in its log). Once a
   term reaches :data:`DEPOSE_AFTER` (:class:`MisbehaviourCount`), a follower that follows that
   term's leader deposes it: one ERROR line with the evidence (term, leader address and site,
   count per reason, log indexes), counted as ``leader_deposed`` (``replicad_raft_refused_total``,
   alert ``ReplicadRaftLeaderDeposed``), ``status()["deposed"]``; it forgets the leader and its
   lease and asks for pre-votes at once. For :data:`DEPOSE_HOLD_S` it refuses that member's
   ``append_entries`` at the deposed term and any later one (``from_deposed_leader``: a term it
   would claim without this site's vote) and its ``request_vote`` and ``pre_vote``
   (``vote_for_deposed``). Every honest follower applies the same log, so they all depose it and a
   majority of them elects one of themselves (to the deposed leader it looks like lost
   messages). Refusing messages is what a lossy network does, so Raft's safety (and points 7,
   12, 14, 15, 17) holds; only liveness is traded: during the hold a deposed site cannot lead even
   if honest (an honest site whose key was rotated but that still signs with the old one). The
   count is at apply time: entries a leader sends but never commits are not judged (see below).

19. **A leader that withholds a site's commands is deposed by that site** (attacker review F3: a
   leader that dropped every forwarded ``apply_command`` kept its lease at every follower, since it
   kept heartbeating and committing its own entries; forced promotions, revocations of it and
   verdict votes of the two honest sites all failed with ``no_quorum`` and nothing named it). Each
   follower watches its own commands on their way to the leader (:class:`WithheldWatch`, keyed by
   the entry's bytes: a retry with the same ``op_id`` is the same record, dated from its first
   send) until an entry with those bytes is applied here (a full state installed forgets them all:
   its entries are never applied one by one). One not in the log after
   :data:`WITHHELD_RESEND_S` is sent to the leader again (pysyncobj drops a command sent on a
   connection that breaks and never resends it). When one stays out for :data:`WITHHELD_AFTER_S`,
   was sent at least twice while the leader was connected, and this follower is in that leader's
   lease (its heartbeats arrive) and has applied all the leader reports committed, the follower
   deposes it as in point 18 (``_depose``: no append entries, votes or pre-votes from it for
   :data:`WITHHELD_HOLD_S`, lease forgotten, pre-votes asked at once), with one ERROR line naming the
   leader's site and address, the term, how long and how often the command waited and how many
   other entries the leader committed meanwhile (or that it committed nothing), counted as
   ``leader_withholds`` (alert ``ReplicadRaftLeaderWithholds``). A leader that answers a forward
   with ``REQUEST_DENIED`` (point 17) without appending it is judged the same: only the log counts.
   Every honest follower whose commands are withheld does this on its own, and a majority of them
   then grant each other's pre-votes (none is in the withholding leader's lease any more) and elect
   one of themselves; the deposed leader's own pre-votes are refused by them.
   Why one site cannot depose an honest leader at will with it: (a) the trigger is this site's own
   observation and never leaves it; nothing another node decides reads it. (b) What the depose does
   at the deposing site, refusing the leader's messages and asking for pre-votes early, a compromised
   site can do anyway (drop messages; a pre-vote changes no state). (c) Every other member grants a
   pre-vote by its own rules only: outside its own lease of the leader (it deposed it itself, or
   heard no leader for ``raftMinTimeout``) and to an up-to-date log (point 7 has no exception).
   (d) An honest leader that appends the honest followers' commands, and the relays they pass on
   (point 20), keeps its lease at each of them, so a lying follower can at most stop following (a
   one-site outage) and ask for elections the honest majority refuses, as before.
   An honest leader is judged only when a command it received twice on a live connection stays out
   of its log for :data:`WITHHELD_AFTER_S` (an honest leader appends on the tick a forward arrives;
   a leader that commits nothing at all while heartbeating, having lost its majority, also fails
   this site and is better replaced). A leader that withholds only ONE site's commands, while
   committing the others', was deposed by that site alone (the others kept their lease: R7 F1);
   now that site's commands are relayed through the others, which watch them too (point 20), so
   the majority deposes it. A leader that appends each
   command just under the threshold is not judged (a bounded delay). A connection the leader drops
   now and then does not reset the clock (dated from the first send; resent once connected).

20. **A site's own commands relayed through the other members** (R7 F1; the standard answer to a
   leader that censors requests: PBFT, Castro & Liskov, OSDI 1999, §4.4, a backup that receives a
   request forwards it to the primary and starts a timer). Each node remembers its own proposals
   (the entry's bytes) until an entry with those bytes is applied here. One not in this node's log
   :data:`WITHHELD_RESEND_S` after it was proposed is handed, unchanged (its own signed bytes), to
   every connected member, the leader included, as ``relay_command``; again every
   :data:`WITHHELD_RESEND_S`, for at most :data:`RELAY_FOR_S`, :data:`RELAY_PER_CHECK` per check (a
   leader appends its own waiting ones itself). A member receiving one (shape-checked by the guard,
   at most 96 KiB; members only, point 8) takes it only within the sender's budget
   (:class:`MemberBudget`, :data:`RELAY_CMDS_PER_S`, :data:`RELAY_BYTES_PER_S`: ``relay_over_budget``)
   and when :meth:`RaftNode._relay_check` passes it: a replicad command (``relay_malformed``) and,
   in a signed cluster with an agreed membership, signed by another member's site
   (``relay_not_member``, ``relay_own_site``) under the keys the state gives it and for this
   cluster (``relay_bad_signature``); one whose op id was applied already or that is older than the
   replay window is dropped uncounted (``known``: a command that just committed). Refusals are
   counted and logged at WARNING (``replicad_raft_refused_total``). The leader appends it; a
   follower that is not in its log passes it on to its leader (at half the budget, so an honest
   leader never refuses an honest member's relays for budget) and the send is noted in point 19's
   watch like its own commands: a leader that withholds the relayed command is deposed by this
   member too, so a leader withholding ONE site's commands is deposed by the majority. The same
   command arriving directly and relayed is appended once: the leader drops a forward or relay whose
   bytes it queued in its current term or holds unapplied (:meth:`_HardenedSyncObj._appended_already`),
   and a node sends no ``apply_command`` for an own command already applied (it answers the waiting
   proposal with the result instead): the state machine would refuse the second copy as
   ``replayed``, in the honest site's name. A proposal is answered by the first of pysyncobj's reply
   and its entry applied here (a relayed copy gets no reply); a member watches only for application,
   so an honest leader appending a command the state machine refuses is not judged.
   Why a lying member gains nothing: it can relay only what an honest leader's door would let through
   from the command's own site (its own commands it can forward anyway; another site's it cannot
   sign; a captured one that is applied is ``known``, so no replay is appended in an honest site's
   name); its relays are bounded per sender at every member and, passed on, per member at the leader;
   a relay an honest member passes on is one the honest leader appends, so no honest member holds it
   against an honest leader. The relay commits a cut-off primary's commands (point 7) but does not
   bring its state up to date: it applies them when it hears a leader again (open: a primary cut off
   from the leader for long stays unsynced and its daemon does not act as primary meanwhile).
   A command the daemon gave up on (``no_quorum`` after 15 s) can still commit later through a
   relay, once (``NoQuorumError`` says "may still commit later").

21. **A leader that front-runs a site's command is deposed by that site** (attacker review r13,
   F5: a hostile leader appended, before each command another site forwarded, a command of its
   own, signed by itself, with the same op id; under rules 1 and 2 the state machine answers a
   known op id with its stored result, so the honest command was answered with the leader's
   result and never applied, and being appended it was not withheld: revocations, vetoes,
   verdicts and raises of the rules were cancelled unseen). Each node remembers the op ids of its
   own proposals (pending, and the last :attr:`_HardenedSyncObj.OWN_RESULTS_KEPT` applied). An
   applied entry carrying one of them with other bytes, whose signature verifies under the keys
   of the state before it (:func:`signature_refusal`: a forged one proves nothing and, refused as
   forged, is remembered nowhere) and not this site's own (a retry with a new stamp), shows a
   site that signed another site's op id, which an
   honest site never does (op ids are random). When that site is the one of the leader this node
   follows in the entry's term, the node logs ERROR naming the leader, the entry (index, term, op)
   and the op id, counted as ``leader_front_runs`` (alert ``ReplicadRaftLeaderFrontRuns``), and
   under rules 1 and 2 deposes it as in point 19 (``_depose``, hold :data:`WITHHELD_HOLD_S`);
   under rules 3 it does not (attacker review r14, A2): the command applies anyway, and one
   front-run entry would cut this site off for the hold while the other members keep following
   that leader (a primary committing nothing for 2 minutes, its operators' requests answered
   ``no_quorum`` while they commit through relays), at the cost of one entry, again after every
   hold. A command of this site that reached the leader relayed by another member (point 20) is
   judged alike when the entries are applied here. When the signer is another site (another
   member that learned the op id, e.g. from a relay, point 20; or a leader of an earlier term) it
   logs ERROR naming that site, counted as ``op_id_taken``, and deposes nobody (the leader that
   appended it may be honest). This node's own proposal, when the state machine answered it from
   the memory with the answer of such an entry (rules 1 and 2, and only when that entry was decided
   before this site's own command, so that its answer is the one stored under the op id: a retry
   of a command already applied is answered with its own first answer, and proposing it anew would
   apply it twice; under rules 3 the memory is keyed by signing site and op id and the command
   applies, so never), is answered with a ``leader_front_run`` refusal
   (:class:`~replicad.core.errors.LeaderFrontRunError`), never with the other site's result, and
   :meth:`replicad.site.cluster.Cluster.propose` proposes it again as a new command. And a
   proposal is answered only by the application here of an entry with its own bytes (point 20),
   never by pysyncobj's reply, which names a log index the leader chooses: a hostile leader
   could name another entry's; or, when a leader's full state covers it, by the answer that state
   stores as this site's (:meth:`_HardenedSyncObj._answer_installed`). Only the site whose
   command was front-run deposes (a third site cannot tell a front-run from a member copying the
   leader's op id to frame it); under rules 1 and 2 a leader that front-runs every site's commands
   loses the majority, one that front-runs one site's only is left by that site alone; under
   rules 3 it cancels nothing and keeps leading, alerted at each site it front-ran (its operators
   revoke it: README "A site is compromised").

22. **What one member can make the others keep** (attacker review R16 F3). The log compacts only at
   a checkpoint a majority vouched (point 14); while an honest site is down a compromised member that
   withholds its vouches blocks that, and then filled the log with large signed commands the state
   machine refuses later (a veto of no request with a 36 KB pad): leading, at ~6 MB/s (its own
   entries passed no door; point 18 counts forged and malformed ones only), 1,056 MB of Raft dir and
   1,274 MB RSS at the honest survivor in 180 s; following, within its forwarding budget, ~0.65 MB/s.
   Now (a) each follower charges the entries its leader appends in its term signed by the leader's
   own site to a member's forwarding budget (point 17's :data:`FORWARD_CMDS_PER_S`,
   :data:`FORWARD_BYTES_PER_S`, :data:`FORWARD_BURST_S`; only while this node is in sync, since a
   node catching up applies old entries at its own pace) and (b) every node counts, per signing site,
   the commands its log kept since its last compaction (:class:`LogShare`; reset when a dump is
   written or installed). The leader's door refuses a member's forwarded command beyond its share
   (:data:`LOG_SHARE_BYTES`, :data:`LOG_SHARE_ENTRIES`: ``forwarded_over_share``, WARNING naming the
   member), a node refuses its own proposal beyond :data:`LOG_SHARE_OWN` of it (``NoQuorumError``
   ``log_share``: before the door, whose refusal point 19 would hold against an honest leader), and a small
   ``vouch`` is never refused (it is what lets the log compact again). A follower that counted
   :data:`DEPOSE_AFTER` of its leader's own entries of the current term over the budget or over the
   share (times :data:`LOG_SHARE_SLACK`: nodes compact at different moments) deposes it as in point 18
   (``_depose``, hold :data:`DEPOSE_HOLD_S`): ERROR naming the leader's address and site, counted as
   ``leader_over_budget`` (:class:`LeaderBudgetWatch`). An honest leader's own traffic is what it would
   forward as a follower, within the same budget and share. The ERROR "not compacting the log" names
   the sites that vouched none of the checkpoints kept (:func:`~replicad.consensus.checkpoint.lagging`)
   and the log kept per signing site. And (R16 F2: one member forced every site to compact in 20 s
   with ~280 accepted no-ops a second, so that a site away 20 s caught up from a full state) the door
   and the relay check take commands of ops outside :data:`ROUTINE_OPS` from one member at
   :data:`OPS_PER_S`, bursts of :data:`OPS_BURST` (``forwarded_ops_over_rate``, ``relay_ops_over_rate``,
   keyed as ``clock`` commands are). And (attacker review R17 F1: a leader re-appended an honest site's
   own applied entries, refused as ``replayed``, which the share charged to that site: its proposals
   were refused and the ERROR named it as filling the log) an entry the state machine refuses for its
   identity (``state.IDENTITY_REFUSALS``) is charged to the site of the leader of the term that appended
   it (:meth:`_HardenedSyncObj.appender_site`; ``"?"`` when not known here), and
   :data:`REPLAYED_DEPOSE_AFTER` entries of one term refused as ``replayed`` depose that term's leader as
   in point 18 (an honest leader never re-appends applied bytes: :meth:`_HardenedSyncObj._appended_already`),
   copies answered from the exactly-once memory likewise (:func:`copy_of_applied`);
   a node refusing its own proposal for the share says so at ERROR (:data:`OWN_SHARE_LOG_EVERY_S`).
   Left: a leader's own such ops are held to the budget only, not to that rate; fewer than :data:`REPLAYED_DEPOSE_AFTER` copies a term depose
   nobody; a leader that keeps a follower out of sync (a commit index it never reaches) escapes the rate
   there, not the share.

16. **What the members say the membership is.** A site that has not joined the cluster yet
   cannot trust its own replay of the log to learn the agreed membership when its config
   differs from the founders' (the founding rule's reference is its config, and a leader its
   config lacks is refused as ``unknown_node``: it waited forever, seen in CI). While the daemon
   asks (:meth:`RaftNode.ask_membership`), the node sends each connected member a
   ``membership_query`` every :data:`MEMBERSHIP_ASK_S`; a member that has an agreed membership
   answers ``membership_report`` with its incarnation id and member list (at most once per
   member per :data:`MEMBERSHIP_ASK_S`). The channel binds each connection to one member site
   (point 8), so a report is that site's word; the daemon acts only on a majority of its
   configured sites reporting the same list (:meth:`RaftNode.membership_reports`), which one
   compromised site cannot make up.

13. **Signed commands** (:mod:`replicad.core.identity`): :meth:`RaftNode.propose` signs each
   command with this site's key (``signer``); every node's state machine verifies it
   against the keys pinned in the config (``trust``) and refuses a command not signed by
   the site in ``by``, signed for another cluster, replayed, or stamped before the replay
   window (``bad_signature``, ``replayed``, ``expired``: audited in the Raft state, logged
   at WARNING and counted here on every honest node).

What a member that IS the Raft leader can still do (Raft is crash-tolerant, not Byzantine):
append any well-formed command to the log, but only commands signed by itself take effect
(the others are refused by every state machine, see point 13), and once it committed
:data:`DEPOSE_AFTER` that an honest leader's door refuses in its term (after a membership change,
:data:`DEPOSE_GRACE_ENTRIES` more) the honest followers depose it (point 18); it can still grow
the log with valid commands signed by itself, or with entries it never commits (the followers
journal them; only the disk bound of point 12 stops that); so it can commit in its own
name what the state machine accepts from it (a forced promotion to itself, a request for a
weaker retention that others must still approve); delay or reorder other sites' commands
(a command withheld for :data:`WITHHELD_AFTER_S` makes its site depose the leader, point 19,
and the members that relay it, point 20: withholding one site's commands loses the majority);
inflate the terms of its followers (bounded per message); and, for a follower it
feeds log entries or a dump, omit or reorder other sites' commands after the newest vouched
checkpoint (point 14: the follower then computes another digest for the next checkpoint and
reports ``checkpoint_divergent``). It cannot install a state a majority did not vouch for
(point 14). It cannot make a follower forget committed snapshots
inside the lock window, rewrite their roots, move epochs back, or install a state at all
from a connection that is not its member connection.

Not fixed here (operator's job, see ARCHITECTURE.md): in unsigned lab mode the Fernet key
of the Raft channel is one shared secret without per-site identity (a holder can name itself
as another member whose address sorts above the target's while that member is disconnected);
the Raft port must then be reachable only through an authenticated encrypted channel.
Leadership is a hint: fencing rests on committed epochs, never on ``is_leader``.

Threading: ``SyncObj`` runs its tick thread until :meth:`RaftNode.close`, and stops when
the thread that called :meth:`RaftNode.start` ends, so call ``start`` from the main thread.
"""

from __future__ import annotations

import asyncio
import codecs
import copy
import hashlib
import io
import itertools
import json
import logging
import os
import pickle
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack
import pysyncobj.journal
import pysyncobj.pickle
import pysyncobj.syncobj
import pysyncobj.tcp_server
import pysyncobj.transport
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode
from pysyncobj.tcp_connection import TcpConnection

from replicad.consensus import channel as channel_module
from replicad.consensus import checkpoint, dumpfile
from replicad.consensus import journal as journal_module
from replicad.consensus.channel import (KNOWN_REASONS, MAX_DECOMPRESSED_BYTES, ChannelIdentity, DecompressionBombError,
                                       MemberOnlyTransport, RefusalLog, Revocations, bounded_decompress, refusals_of,
                                       refuse_undecryptable, revocations_of, transport_identity)
from replicad.consensus.guard import (CLOCK_BURST, CLOCK_PER_S, CLOCK_REASONS, MAX_TERM_STEP, ClockRate,
                                      GuardedSerializer, shape_problem)
from replicad.consensus.journal import (JOURNAL_MAGIC, JOURNAL_VERSION, META_VERSION,  # noqa: F401 (re-exported)
                                       DurableJournal, _create_journal)
from replicad.core import errors
from replicad.core import state as cluster_state
from replicad.core import identity
from replicad.core.identity import CanonicalError, Signer, Trust
from replicad.storage.durable import fsync_dir, write_durably

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 2 * 1024 * 1024
"""Largest pysyncobj frame accepted from an authenticated peer; beyond it the connection is dropped.

The largest legitimate frame is an ``append_entries`` batch: pysyncobj adds entries until
their commands reach ``appendEntriesBatchSizeBytes`` (64 KiB), so at most 64 KiB plus one
command (<= 2 * :data:`MAX_COMMAND_BYTES` after the leader's filter) plus per-entry pickle
overhead, zlib-compressed, then Fernet (x 4/3 base64, + 73 bytes): at most about 140 KiB
(measured on loopback with incompressible 40 KiB commands: 77 KiB). A full dump travels in
``logCompactionBatchSize`` (64 KiB) chunks: about 85 KiB per frame (measured: 83 KiB)."""
MAX_HANDSHAKE_FRAME_BYTES = 4 * 1024
"""Largest frame accepted before a connection delivered its first valid (decrypted) frame.

Until then the peer may only have sent its 32-byte session key (about 170 bytes once
pickled, compressed and encrypted): whoever does not know the password cannot make a
connection hold more than this (plus one ``recv`` of 64 KiB, checked at once)."""
MAX_COMMAND_BYTES = 40 * 1024
"""Largest msgpack command proposed (FIELD-NOTES: > 64 KiB hit a pysyncobj chunking bug)."""
DUMP_VERSION = checkpoint.DUMP_VERSION
VOUCH_RETRY_S = 5.0
"""A vouch not yet in the state is proposed again (same op id) after this many seconds."""
_REGULAR = b"\x00"  # pysyncobj _COMMAND_TYPE.REGULAR
_NO_OP = b"\x01"  # pysyncobj _COMMAND_TYPE.NO_OP
_RAFT_STATE_LEADER = pysyncobj.syncobj._RAFT_STATE.LEADER
# Point 7: a node that needs a leader to commit (a volume's primary) and heard from none this long
# says so at WARNING (~7 of pysyncobj's longest election timeouts, 1.4 s; above the 3-6 s gaps a
# stalled tick produces). It is granted nothing for it (no exception to the lease); its commands go
# through the relay (point 20).
ISOLATED_AFTER_S = 10.0
# pysyncobj redials a member it is not connected to at most this often (its default, 5 s, made
# a site that started before its peers listened, or a member back from a partition, wait up to
# 5 s more to be heard; a refused dial is one TCP SYN, refusals are logged at most every few s).
REDIAL_S = 1.0
# Point 15: a leader that cannot read its dump steps down after this many failed reads within
# the window (one try per member per guard.DUMP_SEND_RETRY_S: ~1 s), then stays out of
# elections long enough for a member that can read its own dump to be elected and serve it.
DUMP_SEND_FAILURES_MAX = 3
DUMP_FAILURE_WINDOW_S = 10.0
DUMP_NO_CANDIDACY_S = 30.0
# A follower is synced when it applied what its leader reports committed, or did within this
# grace (a healthy follower applies a commit on the tick it learns it); a WARNING when it made
# no progress for CATCH_UP_STALL_S while behind.
SYNCED_GRACE_S = 2.0
CATCH_UP_STALL_S = 10.0
FORWARD_CMDS_PER_S = 200.0
"""Point 17: commands a second one member may forward to the leader (sustained). An honest
primary of 50 volumes snapshotting every second forwards ~150 (commits, verdicts, holder acks)."""
FORWARD_BYTES_PER_S = 1024 * 1024
"""Point 17: bytes a second one member may forward to the leader (sustained; honest: ~300 KB/s
at that rate, commands of 1-2 KiB)."""
FORWARD_BURST_S = 10.0
"""Point 17: a member's bucket holds this many seconds of its budget (a backlog after a cut)."""
FORWARD_REASONS = ("forwarded_malformed", "forwarded_not_own", "forwarded_bad_signature", "forwarded_over_budget",
                   "forwarded_to_follower", "forwarded_over_share")
LOG_SHARE_BYTES = 256 * 1024 * 1024
"""Point 22: bytes of commands signed by one site that the Raft log kept since this node's last
compaction may hold before the leader's door refuses that site's forwarded commands
(``forwarded_over_share``) and a node refuses its own proposals. The log is compacted only at a
checkpoint a majority vouched (point 14); while that is blocked (a site down, a member not vouching)
the log grows, and this share is what one member can make every other member keep.

What an honest site sends in a day (sizes of signed msgpack commands as proposed here: ``clock`` 182 B,
``vouch`` 228 B, ``add_holder`` 226 B, ``commit_snapshot`` with stats and two holders' acks ~1,130 B):
the primary of 64 volumes at a 5-minute interval commits 18,432 snapshots (20.8 MB); holding the
snapshots of 128 volumes of the other sites it says ``add_holder`` 36,864 times (8.3 MB); its clock
every 5 s is 17,280 commands (3.1 MB); its vouches, one per 256 commands of the cluster, ~860
(0.2 MB): ~73,400 commands, ~32 MB a day. The share holds 8 days of that by bytes, 7 by commands; at a
1-minute interval (~294,000 commands, ~149 MB a day) 1.8 days. Each member's share is kept by every
member: a cluster of three keeps at most ~768 MiB of log however long compaction waits (the attacker's
share alone: 256 MiB, ~300 MB of memory: measured 1.2 MB of RSS per MB of log), where one member
filling its forwarding budget (:data:`FORWARD_BYTES_PER_S`) made each site keep ~86 GB a day (attacker
review R16 F3)."""
LOG_SHARE_ENTRIES = 524_288
"""Point 22: commands signed by one site the log kept since this node's last compaction may hold (as
:data:`LOG_SHARE_BYTES`, the bound for small commands; see there for an honest site's day)."""
LOG_SHARE_SLACK = 1.25
"""Point 22: a follower judges its leader's own site over its share only beyond this many times
:data:`LOG_SHARE_BYTES` / :data:`LOG_SHARE_ENTRIES`: each node counts since its own last compaction,
and nodes compact at different moments (pysyncobj: every 5,000 entries or 300 s when allowed)."""
ROUTINE_OPS = frozenset({"clock", "vouch", "commit_snapshot", "site_verdict", "add_holder", "remove_holder",
                         "mark_verdict", "prune_snapshots"})
"""Point 22: the ops a site's daemon proposes by itself as it runs (``clock`` has its own rate,
:data:`~replicad.consensus.guard.CLOCK_PER_S`; ``site_verdict``: every data site's own verdict on
every snapshot of every volume, 12.8 a second from a site judging 128 volumes at the 10 s default
interval, far over :data:`OPS_PER_S`; the same set as ``site.catchup.ROUTINE_OPS`` counts); every other op is an operator's or a site's event
(a volume added, a request, an approval, a promotion, a registration) and is held to :data:`OPS_PER_S`."""
OPS_PER_S = 2.0
"""Point 22 (attacker review R16 F2): commands of ops outside :data:`ROUTINE_OPS` a member may forward
(or relay for one site) a second, sustained, in bursts of :data:`OPS_BURST`. R16 F2: one member
forwarded ~280 accepted no-ops a second (``add_volume`` of an existing volume) from 32 tasks and so
forced every site to compact its log (5,000 entries) in 20 s, making a site away for 20 s catch up
from a full state; at this rate it takes ~40 minutes through the door alone. An honest site proposes
such ops at a person's pace, or at once at its start (at most 128 ``add_volume``, ``state.VOLUMES_PER_SITE_MAX``,
its ``register_site`` and the requests of its volumes' configured policies, which it files only while the state
takes more pending ones: ``state.REQUESTS_PENDING_PER_SITE``, 8), within the burst."""
OPS_BURST = 300
"""Point 22: commands outside :data:`ROUTINE_OPS` the leader takes from a member at once."""
OPS_REASONS = ("forwarded_ops_over_rate", "relay_ops_over_rate")
"""Point 22: counted refusals (``replicad_raft_refused_total{reason}``, WARNING): a member forwarded,
or relayed for one site, more commands outside :data:`ROUTINE_OPS` than :data:`OPS_PER_S` (a follower
passes relays on at half of it per site, as for ``clock``)."""
LOG_SHARE_OWN = 0.9
"""Point 22: a node refuses its own proposals beyond this many times its site's share, before the
leader's door would (a command the door refuses stays in point 19's watch, and its site would depose
an honest leader for it; the counts of two nodes differ by what one compacted and the other not yet)."""
OWN_SHARE_LOG_EVERY_S = 60.0
"""Point 22: a node refusing its own proposals for its share logs it at ERROR at most once per this many
seconds (attacker review R17 F1: the refusal was only returned to the caller)."""
SHARE_EXEMPT_BYTES = 1024
"""Point 22: a ``vouch`` of at most this many bytes is never refused for the share (vouches are what
lets the log compact again; an honest one is 228 bytes)."""
DEPOSE_AFTER = 64
"""Point 18: entries of one term a follower's state machine refused for a reason the leader's door
(point 17) refuses (:func:`door_refusal`) before it deposes that term's leader. An honest leader
appends none (the door refuses them, its own commands verify), bar a key change in flight, which
:data:`DEPOSE_GRACE_ENTRIES` covers."""
REPLAYED_DEPOSE_AFTER = 1024
"""Point 22 (attacker review R17 F1): entries of one term a follower's state machine refused as
``replayed`` (copies of signed commands applied already) before it deposes that term's leader as in
point 18. An honest leader never appends bytes it applied or queued in its term
(:meth:`_HardenedSyncObj._appended_already`); a copy reaches its log only when a site relays one of its
own commands (point 20) whose original this leader appended in an earlier term or more than 4,096
forwarded commands ago, while that site's log still lacks it after :data:`WITHHELD_RESEND_S`: at most
once per command and term, and a site keeps at most ``WithheldWatch.MAX_TRACKED`` (1,024) own commands.
So this is one site's whole relay memory; a leader re-appending captured entries at R17's pace (~400 a
second) reaches it within seconds."""
DEPOSE_HOLD_S = 300.0
"""Point 18: how long a follower refuses a deposed leader's votes, pre-votes and append entries."""
DEPOSE_GRACE_ENTRIES = 4096
"""Point 18: entries applied after a change of the agreed membership (keys) that are never counted: a
leader door-checks with the keys of its applied state, which may not have applied the change yet
(every member's forwarding bucket, :data:`FORWARD_CMDS_PER_S` x :data:`FORWARD_BURST_S`, is 2,000)."""
DEPOSE_REASONS = ("leader_deposed", "from_deposed_leader", "vote_for_deposed", "leader_withholds",
                  "leader_front_runs", "op_id_taken", "leader_over_budget")
"""Point 18: ``leader_deposed`` (once per depose, ERROR); a deposed leader's ``append_entries``
(``from_deposed_leader``) and ``request_vote``/``pre_vote`` (``vote_for_deposed``) refused.
Point 19: ``leader_withholds`` (once per depose for withheld commands, ERROR). Point 21:
``leader_front_runs`` (the leader's site signed an entry with one of this site's op ids: ERROR,
deposed under rules 1 and 2), ``op_id_taken`` (another site did: ERROR, nobody deposed). Point 22:
``leader_over_budget`` (the leader's own entries beyond a member's forwarding budget or its share
of the log: ERROR, deposed)."""
WITHHELD_AFTER_S = 45.0
"""Point 19: how long one of this site's forwarded commands may stay out of its applied log, while
the leader's heartbeats arrive and this site has applied all the leader reports committed, before
this site deposes that leader. An honest leader appends a forwarded command on the tick it arrives
(a commit takes ~1-10 ms here, seconds under a stalled fsync); the daemon gives a proposal
15 s (``cluster.PROPOSE_DEADLINE_S``), so by then every caller has long seen it fail."""
WITHHELD_RESEND_S = 10.0
"""Point 19: a forwarded command not in the log after this long is sent to the leader again (same
bytes, same request id): pysyncobj loses a command sent on a connection that drops, and never
sends it again. Only commands resent at least once while the leader was connected are judged."""
WITHHELD_CHECK_S = 1.0
"""Point 19: how often a follower looks at its forwarded commands."""
WITHHELD_HOLD_S = 120.0
"""Point 19: how long a follower refuses a leader it deposed for withholding (point 18's hold is
longer). Once the honest sites elected one of themselves, its lease keeps the withholding site
from leading again anyway; a site that deposed alone (the leader withheld from it only, or its
own link lost what it sent while the leader's heartbeats arrived) follows again this soon."""
RELAY_CMDS_PER_S = 20.0
"""Point 20: ``relay_command`` messages a second one member may send to this one (sustained, bursts of
:data:`RELAY_BURST_S`); beyond, refused (``relay_over_budget``), never passed on nor watched. A member
passes others' relays on to its leader at half this rate, so an honest leader never refuses an honest
member's relays for budget (its watch would then depose that leader)."""
RELAY_BYTES_PER_S = 256 * 1024
"""Point 20: bytes a second of ``relay_command`` one member may send to this one (sustained)."""
RELAY_BURST_S = 10.0
"""Point 20: a relay bucket holds this many seconds of its budget."""
RELAY_FOR_S = 120.0
"""Point 20: how long this site keeps relaying one of its own commands that is not applied here (the
daemon gives a proposal 15 s; a command committed later still holds, once)."""
RELAY_EXPIRY_MARGIN_NS = 600 * 10**9
"""Point 20: a relayed command stamped less than this before the end of the replay window (by the
majority clock) is not relayed, passed on nor watched: the leader might refuse it as expired before a
watch of :data:`WITHHELD_AFTER_S` ran out, and that leader would be deposed for it."""
RELAY_PER_CHECK = 8
"""Point 20: at most this many of this site's own commands relayed per :data:`WITHHELD_CHECK_S` (to
each member: below half of :data:`RELAY_CMDS_PER_S`)."""
FOUNDS_SEEN_MAX = 4096
"""``found`` commands before the founding a node notes (:meth:`_StateConsumer.note_found`) to
compare its founding with the members' reports (:meth:`RaftNode.refused_founder_of`); a site
proposes one every 2 s until the founding, so this covers hours of it."""
FOUNDERS_SCANNED = 8
""":meth:`_StateConsumer.note_found` tries every set of up to this many other sites proposing the
same list as the ``found`` just applied (at most 2^8 BLAKE2b hashes of a few hundred bytes a
``found``, on the tick thread, only while a refused proposal is among them)."""
FOUNDER_CANDIDATES_MAX = 16384
"""Incarnation ids a node keeps that a refused ``found`` would have made (~1.5 MB at most)."""
UNAPPLIED_SCANNED = 4096
"""Point 20: how many of the newest unapplied log entries a node compares a relayed or forwarded
command with (an honest backlog is a few entries; one of a leader without a majority grows)."""
RELAY_REASONS = ("relay_malformed", "relay_not_member", "relay_own_site", "relay_bad_signature",
                 "relay_over_budget")
"""Point 20: a ``relay_command`` refused (counted, WARNING): not a replicad command, by a site that is
not a member, by this site itself, a signature that does not verify (or signed for another cluster),
over the sender's budget (or this node's budget for passing relays on to its leader)."""
MEMBERSHIP_ASK_S = 2.0
"""Point 16: how often a node that asks queries each member, and answers each member at most."""
MEMBERSHIP_REPORT_TTL_S = 30.0
"""Point 16: how long a member's report counts."""
_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if isinstance(v, int)}
_NOT_APPLIED = object()


# --------------------------------------------------------------------------- 1. unpickler


def _latin1_encode(text: Any, encoding: str = "latin1", errors_: str = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode outside of protocol-2 bytes")
    return codecs.encode(text, "latin1")


def _safe_bytes_factory(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (bytes, bytearray))):
            raise pickle.UnpicklingError(f"refused {kind.__name__}() from {type(args[0]).__name__}")
        return kind(*args)
    return build


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _safe_bytes_factory(bytes),
    ("builtins", "bytearray"): _safe_bytes_factory(bytearray),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; everything else is ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found


def restricted_loads(data: bytes | str) -> Any:
    """``pickle.loads`` limited to the globals pysyncobj's messages need.

    Raises:
        pickle.UnpicklingError: the pickle names any other global.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def restricted_load(file: Any) -> Any:
    """``pickle.load`` limited like :func:`restricted_loads`."""
    return _RestrictedUnpickler(file).load()


# --------------------------------------------------------------------------- 2. durable journal
# DurableJournal lives in replicad.consensus.journal; _create_journal is installed below.



# --------------------------------------------------------------------------- 5. bounded frames


class _BoundedTcpConnection(TcpConnection):
    """pysyncobj connection that drops peers announcing oversized frames.

    Every frame header in the read buffer is checked as it arrives: its declared length
    must lie in ``[0, limit]``. Before the first frame was decrypted (``sendRandKey``
    unset on an encrypted connection) the limit is :data:`MAX_HANDSHAKE_FRAME_BYTES` and
    the buffer may hold at most twice that; afterwards the limit is :data:`MAX_FRAME_BYTES`,
    so a partial frame never holds more than that (complete frames are parsed right after
    the reads).
    """

    _scan_offset_bytes = 0  # first frame header in the read buffer not checked yet

    def _frame_limit_bytes(self) -> int:
        if self.encryptor is not None and not self.sendRandKey:
            return MAX_HANDSHAKE_FRAME_BYTES  # nothing authenticated on this connection yet
        return MAX_FRAME_BYTES

    def _TcpConnection__tryReadBuffer(self) -> None:
        # pysyncobj parses only after this drain, and parsing consumes whole frames: the
        # buffer starts at a frame boundary here and only grows until the drain ends.
        self._scan_offset_bytes = 0
        TcpConnection._TcpConnection__tryReadBuffer(self)

    def _TcpConnection__processRead(self) -> bool:
        more = TcpConnection._TcpConnection__processRead(self)
        buffer = self._TcpConnection__readBuffer
        limit = self._frame_limit_bytes()
        offset = self._scan_offset_bytes
        while offset + 4 <= len(buffer):
            (length,) = struct.unpack_from("i", buffer, offset)
            if not 0 <= length <= limit:
                return self._drop(f"a {length}-byte frame header", limit)
            offset += 4 + length
        self._scan_offset_bytes = offset
        if limit == MAX_HANDSHAKE_FRAME_BYTES and len(buffer) > 2 * limit:
            return self._drop(f"{len(buffer)} bytes before authenticating", limit)
        return more

    def _drop(self, what: str, limit: int) -> bool:
        refusals_of(self).refuse("frame_too_large", "peer sent %s (frame limit %d bytes): dropping the connection",
                                 what, limit)
        self.disconnect()
        return False

    def _TcpConnection__processParseMessage(self) -> Any:
        # pysyncobj's parser, with the inflated size bounded (channel.bounded_decompress), the
        # replay and session-key checks done without ``assert`` (they vanished under -O), and
        # every refusal counted instead of a silent disconnect.
        buffer = self._TcpConnection__readBuffer
        if len(buffer) < 4:
            return None
        (length,) = struct.unpack_from("i", buffer)
        if len(buffer) - 4 < length:
            return None
        data = buffer[4:4 + length]
        try:
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)
                if stamp < self.recvLastTimestamp:
                    raise ValueError("frame timestamp went backwards (replay)")
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            plain = bounded_decompress(data, MAX_DECOMPRESSED_BYTES)
            message = restricted_loads(plain)
            if self.recvRandKey:
                if not isinstance(message, tuple) or len(message) != 2 or message[0] != self.recvRandKey:
                    raise ValueError("frame without this connection's session key")
                message = message[1]
        except DecompressionBombError as exc:
            refusals_of(self).refuse("decompressed_too_large", "%s: dropping the connection", exc)
            self.disconnect()
            return None
        except Exception as exc:  # anything undecodable ends the connection, counted
            if not refuse_undecryptable(self, exc):  # a member with another Raft key: said so, plainly
                refusals_of(self).refuse("bad_frame", "undecodable frame (%s: %s): dropping the connection",
                                         type(exc).__name__, str(exc)[:120])
            self.disconnect()
            return None
        self._TcpConnection__readBuffer = buffer[4 + length:]
        return message


def install_hardening() -> None:
    """Install points 1, 2 and 5 of the module docstring into pysyncobj. Idempotent.

    Points 3, 4 and 6 live in :class:`RaftNode` and :class:`_HardenedSyncObj`.
    """
    pysyncobj.pickle.loads = restricted_loads
    pysyncobj.pickle.load = restricted_load
    pysyncobj.journal.loads = restricted_loads
    pysyncobj.syncobj.createJournal = _create_journal
    pysyncobj.transport.TcpConnection = _BoundedTcpConnection
    pysyncobj.tcp_server.TcpConnection = _BoundedTcpConnection
    pysyncobj.syncobj.Serializer = _make_serializer


_PLAIN_SERIALIZER = pysyncobj.syncobj.Serializer
_constructing = threading.local()  # (check, refusals) while a _HardenedSyncObj is being built


def _make_serializer(fileName: Any, *args: Any) -> Any:
    """pysyncobj's ``Serializer``, wrapped in a :class:`GuardedSerializer` for a hardened node."""
    inner = _PLAIN_SERIALIZER(fileName, *args)
    guard = getattr(_constructing, "guard", None)
    if guard is None or fileName is None:
        return inner
    check, refusals = guard
    return GuardedSerializer(inner, fileName, check, refusals)


class _DumpFailureFilter(logging.Filter):
    """pysyncobj logs "Failed to store full dump" on every tick while the dump writer raises
    (``checkpoint.NotCompacting``: vouches lag, the log is kept on purpose; this module logs
    why at ERROR once a minute): let that line through once a minute."""

    _last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != "Failed to store full dump":
            return True
        now = time.monotonic()
        if now - self._last < 60.0:
            return False
        self._last = now
        return True


install_hardening()
logging.getLogger("pysyncobj.syncobj").addFilter(_DumpFailureFilter())


# --------------------------------------------------------------------------- 4 + 6. hardened SyncObj


def plan_append_entries(log_entries: Sequence[tuple], prev_idx: Any, prev_term: Any,
                        entries: Sequence[tuple]) -> tuple[int, int, list, int | None] | None:
    """Raft §5.3 receiver rule for an ``append_entries`` that pysyncobj would mis-handle.

    pysyncobj's follower deletes every entry after ``prevLogIdx`` before appending the
    message's entries, even entries it already holds identically. Raft (Ongaro &
    Ousterhout 2014, Figure 2, AppendEntries receiver, steps 3-4) deletes only from the
    first entry whose term conflicts, and appends only entries not already in the log.

    Args:
        log_entries: the follower's log, ``(command, idx, term)`` with consecutive ``idx``.
        prev_idx, prev_term: the message's ``prevLogIdx`` / ``prevLogTerm``.
        entries: the message's ``(command, idx, term)`` entries, consecutive after ``prev_idx``.

    Returns:
        ``None`` when pysyncobj's own handling is already right (the previous entry is
        missing or differs, so pysyncobj answers with a reset; or the log ends at
        ``prev_idx``, a plain append; or the message is malformed). Otherwise
        ``(prev_idx, prev_term, entries, ack_next_idx)`` to hand to pysyncobj instead:
        entries already present are dropped and ``prev_idx`` moved to the last of them,
        so pysyncobj truncates only at a genuine conflict. When every entry is already
        present and the log goes on beyond them, the result is a heartbeat at the log's
        end (nothing deleted) and ``ack_next_idx`` is the index to acknowledge (the entry
        after the last one the message vouched for); otherwise ``ack_next_idx`` is None.
    """
    if not log_entries or not isinstance(prev_idx, int) or not isinstance(entries, (list, tuple)):
        return None
    first_idx, last_idx = log_entries[0][1], log_entries[-1][1]
    if prev_idx < first_idx or prev_idx >= last_idx:
        return None
    if log_entries[prev_idx - first_idx][2] != prev_term:
        return None
    matched_idx, matched_term, present = prev_idx, prev_term, 0
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or entry[1] != matched_idx + 1:
            return None
        if entry[1] > last_idx or log_entries[entry[1] - first_idx][2] != entry[2]:
            break  # first entry missing or in conflict: pysyncobj deletes from here on
        matched_idx, matched_term, present = entry[1], entry[2], present + 1
    rest = list(entries[present:])
    if rest:
        return matched_idx, matched_term, rest, None
    return last_idx, log_entries[-1][2], [], matched_idx + 1


def entry_call(full: Any) -> tuple[int, bytes] | None:
    """``(method id, msgpack payload)`` of a regular pysyncobj log entry carrying one replicad
    command (type byte, then the restricted pickle of ``(method id, (payload,))``, the payload at
    most ``MAX_COMMAND_BYTES``), or None for anything else. Never raises."""
    if not isinstance(full, bytes) or full[:1] != _REGULAR or len(full) > 2 * MAX_COMMAND_BYTES:
        return None
    try:
        decoded = restricted_loads(full[1:])
    except Exception:  # any undecodable entry is simply refused
        return None
    if (isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[0], (int, str))
            and isinstance(decoded[1], tuple)
            and len(decoded[1]) == 1 and isinstance(decoded[1][0], bytes)
            and len(decoded[1][0]) <= MAX_COMMAND_BYTES):
        return decoded[0], decoded[1][0]
    return None


def signature_refusal(state: dict, decoded: dict, trust: Trust | None) -> str | None:
    """Why the leader's door (point 17) refuses the signature of the decoded command ``decoded``
    under the applied ``state``: :func:`replicad.core.identity.signature_problem` against the keys
    the state gives ``decoded["by"]`` (``state.signing_keys``) with the keys revoked through Raft
    (``"revoked key"`` included), or None when it verifies or is not checked (unsigned cluster,
    ``trust`` None or without keys; no agreed membership yet)."""
    if trust is None or trust.keys is None or state.get("incarnation") is None:
        return None
    revoked = {k for entry in (state.get("revoked") or {}).values() for k in entry.get("keys", ())}
    return identity.signature_problem(decoded, cluster_state.signing_keys(state, decoded, trust), revoked)


def door_refusal(state: dict, payload: Any, trust: Trust | None) -> str | None:
    """Point 18's counting rule: the reason (``"malformed"`` or ``"bad_signature"``) the door check
    of an honest leader (point 17, :meth:`RaftNode._door_check`) refuses the command ``payload``
    (msgpack bytes of a log entry) whatever member forwarded it, judged under ``state``, the
    state before the entry is applied; None when an honest leader may append it.

    Counted: a payload that is not a command map (``forwarded_malformed``), and in a signed cluster
    with an agreed membership a signature that does not verify under the keys the state gives the
    site in ``by`` (``forwarded_bad_signature``; ``forwarded_not_own`` too, since a site that is not
    a member has no key). Not counted, since an honest leader's door lets them through: a command
    signed for another cluster (the door does not compare ``cluster``), replayed or expired (the
    door keeps no op ids and no majority clock), signed with a key revoked through Raft (a
    revocation may apply between the door and the entry), anything before the cluster's founding
    (the door checks no signature then), and what the state machine refuses for its content.
    Never raises."""
    decoded = checkpoint.decode_command(payload)
    if not isinstance(decoded, dict):
        return "malformed"
    try:
        problem = signature_refusal(state, decoded, trust)
    except Exception:  # a state this code cannot read: never a reason to depose anyone
        return None
    return None if problem in (None, "revoked key") else "bad_signature"


class MisbehaviourCount:
    """Point 18, per follower: the entries of each leader term this site's state machine refused
    for a reason an honest leader's door refuses (:func:`door_refusal`). Keeps the newest
    :attr:`TERMS_KEPT` terms. Not thread-safe (the tick thread only)."""

    TERMS_KEPT = 4

    def __init__(self, threshold: int = DEPOSE_AFTER) -> None:
        self.threshold = threshold
        self.terms: dict[int, dict] = {}  # term -> {"count", "reasons": {reason: n}, "first_idx", "last_idx"}

    def note(self, term: int, idx: int, reason: str) -> None:
        """Count the entry at log index ``idx`` of leader term ``term``, refused for ``reason``."""
        entry = self.terms.get(term)
        if entry is None:
            entry = self.terms[term] = {"count": 0, "reasons": {}, "first_idx": idx, "last_idx": idx}
            for old in sorted(self.terms)[:-self.TERMS_KEPT]:
                del self.terms[old]
        entry["count"] += 1
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
        entry["last_idx"] = idx

    def over(self, term: int) -> dict | None:
        """The evidence for ``term`` (a copy) when its count reached the threshold, else None."""
        entry = self.terms.get(term)
        if entry is None or entry["count"] < self.threshold:
            return None
        return {**entry, "reasons": dict(entry["reasons"]), "term": term}


class WithheldWatch:
    """Point 19, per follower: this site's own commands it forwarded to its leader that have not
    appeared in its applied log yet. Keyed by the log entry's bytes (a retry of a proposal with
    the same ``op_id`` is the same signed command, the same bytes: one record, dated from the first
    send); forgotten when they are applied (whoever appended them), and all at once when the leader
    or the term changes (pysyncobj fails the waiting proposals then; the daemon retries them under
    the new leader). At most :attr:`MAX_TRACKED` records (the oldest are kept: they are the
    evidence). Times are ``monotonic`` seconds passed in. Not thread-safe (the tick thread only).

    A record: ``{"message": the apply_command message, "first_s", "last_s": when first and last
    sent, "sends_connected": sends while the leader was connected, "leader_commit": the leader's
    commit index at the first send}``.
    """

    MAX_TRACKED = 1024

    def __init__(self) -> None:
        self.following: tuple = (None, None)  # (leader node id, term) the records were sent under
        self.pending: dict[bytes, dict] = {}

    @staticmethod
    def key(command: Any) -> bytes | None:
        """16-byte BLAKE2b of a log entry's bytes (None for anything else)."""
        if not isinstance(command, (bytes, bytearray)):
            return None
        return hashlib.blake2b(bytes(command), digest_size=16).digest()

    def follow(self, leader_id: Any, term: Any) -> None:
        """The leader and term now followed; records sent under another pair are dropped."""
        if (leader_id, term) != self.following:
            self.following = (leader_id, term)
            self.pending = {}

    def sent(self, message: dict, leader_id: Any, term: Any, connected: bool, leader_commit: Any,
             now_s: float) -> None:
        """``message`` (an ``apply_command`` with a request id) was sent to ``leader_id`` at ``term``."""
        self.follow(leader_id, term)
        key = self.key(message.get("command"))
        if key is None:
            return
        record = self.pending.get(key)
        if record is None:
            if len(self.pending) >= self.MAX_TRACKED:
                return
            record = self.pending[key] = {"message": message, "first_s": now_s, "last_s": now_s,
                                          "sends_connected": 0, "leader_commit": leader_commit}
        record["last_s"] = now_s
        record["sends_connected"] += 1 if connected else 0

    def applied(self, command: Any) -> None:
        """An entry with these bytes was applied here: not withheld."""
        if self.pending:
            key = self.key(command)
            if key is not None:
                self.pending.pop(key, None)

    def in_log(self, entries: Any) -> None:
        """These log entries (bytes) are in this node's log, not applied yet: the leader appended
        them, so they are not withheld (their commit may wait on a majority's slow disk); a resend
        would append them twice and the state machine refuse the second copy as replayed, under
        this site's name."""
        if self.pending:
            for command in entries:
                key = self.key(command)
                if key is not None:
                    self.pending.pop(key, None)

    def due_resends(self, now_s: float) -> list[dict]:
        """The messages not sent for :data:`WITHHELD_RESEND_S` (to send again)."""
        return [r["message"] for r in self.pending.values() if now_s - r["last_s"] >= WITHHELD_RESEND_S]

    def overdue(self, now_s: float) -> dict | None:
        """Evidence when the oldest record was first sent :data:`WITHHELD_AFTER_S` ago, sent at least
        twice while the leader was connected, the last time at least half of
        :data:`WITHHELD_RESEND_S` ago (an honest leader answers a command it got within a tick):
        ``{"waiting_s", "sends", "waiting": records, "leader_commit": at its first send}``; else None."""
        if not self.pending:
            return None
        oldest = min(self.pending.values(), key=lambda r: r["first_s"])
        if now_s - oldest["first_s"] < WITHHELD_AFTER_S or oldest["sends_connected"] < 2 \
                or now_s - oldest["last_s"] < WITHHELD_RESEND_S / 2:
            return None
        return {"waiting_s": now_s - oldest["first_s"], "sends": oldest["sends_connected"],
                "waiting": len(self.pending), "leader_commit": oldest["leader_commit"]}


class MemberBudget:
    """Points 17 and 20: a token bucket per key (a sender's node id) of ``rate_cmds`` messages and
    ``rate_bytes`` bytes a second, each holding ``burst_s`` seconds' worth. At most ``max_keys``
    keys (the members; an unknown key beyond is refused; None: no bound). With ``debt`` =
    ``(messages, bytes)``, a refused message is charged too, down to minus that much (point 17:
    a member over budget stays over while it keeps sending); without, a refused one costs nothing.
    Times are ``monotonic`` seconds passed in. Not thread-safe (the tick thread only)."""

    MAX_KEYS = 256

    def __init__(self, rate_cmds: float, rate_bytes: float, burst_s: float = RELAY_BURST_S,
                 max_keys: int | None = MAX_KEYS, debt: tuple[float, float] | None = None) -> None:
        self.rate_cmds, self.rate_bytes, self.burst_s = rate_cmds, rate_bytes, burst_s
        self.max_keys, self.debt = max_keys, debt
        self.buckets: dict[str, tuple[float, float, float]] = {}  # key -> (messages left, bytes left, when)

    def take(self, key: str, size: int, now_s: float) -> bool:
        """Charge one message of ``size`` bytes to ``key``; False when over budget (then charged
        only with ``debt``)."""
        full = (self.rate_cmds * self.burst_s, self.rate_bytes * self.burst_s)
        if key not in self.buckets and self.max_keys is not None and len(self.buckets) >= self.max_keys:
            return False
        cmds, nbytes, last = self.buckets.get(key, (*full, now_s))
        elapsed = max(0.0, now_s - last)
        cmds = min(full[0], cmds + elapsed * self.rate_cmds)
        nbytes = min(full[1], nbytes + elapsed * self.rate_bytes)
        if cmds < 1 or nbytes < size:
            if self.debt is not None:
                cmds, nbytes = max(cmds - 1, -self.debt[0]), max(nbytes - size, -self.debt[1])
            self.buckets[key] = (cmds, nbytes, now_s)
            return False
        self.buckets[key] = (cmds - 1, nbytes - size, now_s)
        return True


def share_exempt(decoded: Any, size: int) -> bool:
    """Point 22: a command never refused nor counted against its site for the share: a ``vouch`` of at
    most :data:`SHARE_EXEMPT_BYTES` (``size``: its payload's bytes)."""
    return isinstance(decoded, dict) and decoded.get("op") == "vouch" and size <= SHARE_EXEMPT_BYTES


def copy_of_applied(before: Any, command: Any, result: Any) -> bool:
    """Point 22: True when the state machine answered ``command`` as a copy of a command applied already:
    refused ``replayed``, or answered from the exactly-once memory of ``before`` (``result`` is the stored
    answer itself: :func:`replicad.core.state.applied_key`). A leader that re-appends another site's
    applied entries gets one of the two for each (R17 F1: ``clock`` copies are refused ``replayed``; a
    copy of a remembered command, e.g. a ``commit_snapshot``, gets its first answer and changes nothing),
    so both are charged to the appending leader's site and count toward :data:`REPLAYED_DEPOSE_AFTER`.
    Pure; never raises."""
    if isinstance(result, dict) and result.get("error") == "replayed":
        return True
    if not isinstance(command, dict) or not isinstance(before, dict) or not isinstance(command.get("op_id"), str):
        return False
    memory = before.get("applied_ops")
    if not isinstance(memory, dict) or result is None:
        return False
    try:
        stored = memory.get(cluster_state.applied_key(before, command.get("by"), command["op_id"]))
    except Exception:  # a malformed state: not a copy this check can tell
        return False
    return stored is result


class LogShare:
    """Point 22: per signing site (a command's ``by``), ``(commands, bytes)`` applied since this
    node's log was last compacted (or a full state installed), i.e. what the log keeps of each
    site. An entry the state machine refuses for its identity (``state.IDENTITY_REFUSALS``: a forgery,
    a replay, an expired stamp, a revoked key) is charged to the site of the leader of the term that
    appended it instead (:meth:`_StateConsumer.apply_command`; ``"?"`` when this node does not know
    that leader), never to the site it names (attacker review R17 F1: a leader's replays of another
    site's captured entries filled that site's share and muted it). At most :attr:`MAX_SITES` sites; others (an unsigned cluster's made-up names) share the
    key ``"*"``. Written on the tick thread (under the consumer's lock); a read of one site is a
    dict lookup (any thread)."""

    MAX_SITES = 256

    def __init__(self) -> None:
        self.sites: dict[str, tuple[int, int]] = {}

    def note(self, by: Any, size: int) -> None:
        """One command signed by ``by`` (anything; non-strings count under ``"?"``) of ``size`` bytes."""
        key = str(by)[:64] if isinstance(by, str) else "?"
        if key not in self.sites and len(self.sites) >= self.MAX_SITES:
            key = "*"
        count, nbytes = self.sites.get(key, (0, 0))
        self.sites[key] = (count + 1, nbytes + size)

    def reset(self) -> None:
        """The log was compacted (or replaced by a full state): nothing of it is kept any more."""
        self.sites = {}

    def over(self, site: Any, factor: float = 1.0) -> tuple[int, int] | None:
        """``(commands, bytes)`` of ``site`` when beyond ``factor`` times :data:`LOG_SHARE_ENTRIES` or
        :data:`LOG_SHARE_BYTES`, else None."""
        count, nbytes = self.sites.get(str(site)[:64], (0, 0))
        if count > LOG_SHARE_ENTRIES * factor or nbytes > LOG_SHARE_BYTES * factor:
            return count, nbytes
        return None

    def text(self) -> str:
        """``"site-c 1024 commands / 36.0 MiB, ..."``, largest first (for log lines)."""
        ranked = sorted(self.sites.items(), key=lambda kv: -kv[1][1])
        return ", ".join(f"{k} {c} commands / {b / 2**20:.1f} MiB" for k, (c, b) in ranked) or "none"


class LeaderBudgetWatch:
    """Point 22, per follower: the entries the leader it follows appended in its term signed by the
    leader's own site, charged to a bucket of a member's forwarding budget (:data:`FORWARD_CMDS_PER_S`,
    :data:`FORWARD_BYTES_PER_S`, :data:`FORWARD_BURST_S`, with the door's debt), and counted when over
    it (``rate``) or over the site's share of the log (``share``, :class:`LogShare`). Forgets all when
    the leader or the term changes. Times are ``monotonic`` seconds passed in. Not thread-safe (the
    tick thread only)."""

    def __init__(self) -> None:
        self.following: tuple = (None, None)
        self.site: str | None = None
        self.budget = MemberBudget(FORWARD_CMDS_PER_S, FORWARD_BYTES_PER_S, FORWARD_BURST_S, max_keys=None,
                                   debt=(1.0, float(MAX_COMMAND_BYTES)))
        self.count, self.reasons, self.first_idx, self.last_idx = 0, {}, None, None

    def follow(self, leader_id: Any, term: Any, site_of: Callable[[], str | None]) -> None:
        """The leader and term now followed; ``site_of()`` gives the leader's site (asked on a change only)."""
        if (leader_id, term) != self.following:
            self.__init__()
            self.following = (leader_id, term)
            try:
                self.site = site_of()
            except Exception:  # no site known: nothing is judged
                self.site = None

    def note(self, idx: int, size: int, now_s: float, rate: bool, over_share: bool) -> None:
        """The leader's own entry at log index ``idx`` of ``size`` bytes was applied; ``rate``: this
        node was in sync (entries arrive at the leader's pace), so it is charged to the bucket."""
        reason = "share" if over_share else None
        if rate and not self.budget.take("leader", size, now_s):
            reason = reason or "rate"
        if reason is None:
            return
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.first_idx = idx if self.first_idx is None else self.first_idx
        self.last_idx = idx

    def over(self, leader_id: Any, term: Any) -> dict | None:
        """Evidence (a copy) when the followed ``(leader_id, term)`` reached :data:`DEPOSE_AFTER` counted entries."""
        if (leader_id, term) != self.following or self.count < DEPOSE_AFTER:
            return None
        return {"count": self.count, "reasons": dict(self.reasons), "first_idx": self.first_idx,
                "last_idx": self.last_idx, "site": self.site}


def _failures_only(callback: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """Point 21: the callback pysyncobj gets for a proposal this node tracks: only failures pass
    (its success names the log index the leader chose, whose entry may be another one); the
    proposal is answered with success by its own entry applied here (:meth:`_HardenedSyncObj._own_applied`)."""
    def call(result: Any, reason: Any) -> None:
        if reason != FAIL_REASON.SUCCESS:
            callback(result, reason)
    return call


def _decoded_entry(full: Any) -> Any:
    """The decoded command map of a regular log entry's bytes, or None. Never raises."""
    entry = entry_call(full)
    return checkpoint.decode_command(entry[1]) if entry is not None else None


def _once(callback: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``callback`` called at most once (point 20: a proposal is answered by pysyncobj's reply or
    by its entry applied here, whichever comes first)."""
    done = [False]

    def call(result: Any, reason: Any) -> None:
        if not done[0]:
            done[0] = True
            callback(result, reason)
    return call


class _HardenedSyncObj(SyncObj):
    """SyncObj that refuses foreign log entries at the leader and skips them when applying.

    Also point 6 of the module docstring: Raft's append rule on the follower and a
    ``nextIndex`` that success answers never move back on the leader.
    """

    _ack_next_idx: int | None = None  # set while handling a rewritten append_entries
    # PreVote (point 7), all touched on the tick thread only
    _leader_contact: float = float("-inf")  # monotonic time of the last append_entries from a leader
    _pre_vote_term: int | None = None  # the term asked for in the current round
    _pre_vote_grants: frozenset = frozenset()  # node ids that granted it
    _pre_vote_won: bool = False  # a majority granted: the next tick starts the real election
    _pre_vote_won_at: float = float("-inf")  # monotonic time of that majority (a win is used fresh only)
    needs_leader: Callable[[], bool] = staticmethod(lambda: False)  # set by RaftNode (point 7)
    _started_at: float = float("-inf")
    _isolation_logged: float = float("-inf")
    _pre_vote_granted: tuple = (None, None, float("-inf"))  # (node id, term, when) of the last grant
    _votes: tuple = (None, frozenset())  # (term, node ids) of the response_vote messages counted
    _full_logged: float = float("-inf")  # point 12: last WARNING of no candidacy (journal full, lost, dump)
    _full_error: tuple = (float("-inf"), "", 0)  # point 12: (when, text, failures since) of the last full ERROR
    _rejoin_target: int | None = None  # point 12: commit index to reach before voting again
    # point 15, all touched on the tick thread only
    _dump_send_failures: int = 0  # failed reads of this node's own dump (to send it), since start
    _dump_failures_in_row: int = 0  # within DUMP_FAILURE_WINDOW_S of the first one
    _dump_failures_since: float = float("-inf")
    _dump_logged: float = float("-inf")
    _no_candidacy_until: float = float("-inf")  # after stepping down for an unreadable dump
    _caught_up_at: float = float("-inf")  # last tick at which everything the leader committed was applied
    _progress: tuple = (-1, float("-inf"))  # (last applied index, when it last moved)
    _behind_logged: float = float("-inf")
    # point 16, all touched on the tick thread only (reports: replaced whole, read anywhere)
    membership_of_state: Callable[[], dict | None] = staticmethod(lambda: None)  # set by RaftNode
    asks_membership: bool = False
    _membership_asked: float = float("-inf")
    _membership_answered: dict | None = None  # node id -> when this node last answered it
    membership_reports: dict | None = None  # node id -> (report, when)
    door_check: Callable[[Any, str], tuple[str, str] | None] = staticmethod(lambda command, node_id: None)  # point 17
    # point 18, all touched on the tick thread only (deposed: replaced whole, read by status)
    take_door_refusal: Callable[[], str | None] = staticmethod(lambda: None)  # set by RaftNode
    site_of: Callable[[str], str | None] = staticmethod(lambda node_id: None)  # set by RaftNode
    _misbehaviour: MisbehaviourCount | None = None
    deposed: dict = {}  # node id -> (term, monotonic time the hold ends, site)
    _withheld: WithheldWatch | None = None  # point 19, tick thread only
    _withheld_checked: float = float("-inf")
    # point 22: the leader's own entries against a member's budget and share, tick thread only
    _leader_budget: LeaderBudgetWatch | None = None
    _replays: MisbehaviourCount | None = None  # entries refused as replayed per term (REPLAYED_DEPOSE_AFTER)
    _term_sites: dict | None = None  # term -> site of its leader as seen here (newest 16), tick thread only
    share_over: Callable[[str, float], tuple[int, int] | None] = staticmethod(lambda site, factor: None)  # RaftNode
    # point 20: relay of this site's own signed commands through the other members
    relay_check: Callable[[Any, str], tuple[str, str] | None] = staticmethod(lambda command, node_id: None)
    _relay_in: MemberBudget | None = None  # per sending member, tick thread only
    _relay_out: MemberBudget | None = None  # others' relays passed on to the leader, tick thread only
    _own: dict | None = None  # key -> {"command", "first_s", "relayed_s", "callbacks"}; under _own_lock
    _own_results: dict | None = None  # key -> result of a command applied here (newest kept); under _own_lock
    _appending: tuple = (None, {})  # leader: (term, {key: None}) forwarded/relayed commands queued in that term
    OWN_RESULTS_KEPT = 1024
    # point 21: front-run own commands
    take_applied_entry: Callable[[], tuple | None] = staticmethod(lambda: None)  # set by RaftNode
    _own_ops: dict | None = None  # op id -> key of this node's own proposals (pending and recent); under _own_lock
    _front_runs: dict | None = None  # op id -> evidence of another site's signed entry whose answer it stored
    _front_runs_said: dict | None = None  # (leader or signer, op id) -> None: point 21's ERROR said once (newest kept)

    def __init__(self, *args: Any, refusals: RefusalLog | None = None,
                 dump_check: Callable[[Any], list[str]] | None = None, **kwargs: Any) -> None:
        self.refusals = refusals if refusals is not None else RefusalLog()
        _constructing.guard = None if dump_check is None else (dump_check, self.refusals)
        try:
            SyncObj.__init__(self, *args, transportClass=MemberOnlyTransport, **kwargs)
        finally:
            _constructing.guard = None
        serializer = self.__dict__.get("_SyncObj__serializer")
        if isinstance(serializer, GuardedSerializer):
            serializer.on_send_error = self._dump_send_failed
        self._misbehaviour = MisbehaviourCount()
        self._withheld = WithheldWatch()
        self._leader_budget = LeaderBudgetWatch()
        self._replays = MisbehaviourCount(REPLAYED_DEPOSE_AFTER)
        self._term_sites = {}
        self._own, self._own_results, self._own_lock = {}, {}, threading.Lock()
        self._own_ops, self._front_runs, self._front_runs_said = {}, {}, {}
        self._relay_in = MemberBudget(RELAY_CMDS_PER_S, RELAY_BYTES_PER_S)
        self._relay_out = MemberBudget(RELAY_CMDS_PER_S / 2, RELAY_BYTES_PER_S / 2)
        transport = self.__dict__.get("_SyncObj__transport")
        if transport is not None:  # points 19, 20: see commands on their way to the leader
            real_send = transport.send

            def send(node: Any, message: Any) -> Any:
                kind = message.get("type") if type(message) is dict else None
                if kind == "apply_command" and "request_id" in message:
                    if self._answer_applied(message):
                        return True
                    self._forwarded(node, message)
                elif kind == "relay_command":
                    self._forwarded(node, message)
                return real_send(node, message)
            transport.send = send

    def _onTick(self, timeToWait: float = 0.0) -> None:
        allowed = self._pre_vote_gate()
        self._ask_membership()
        # Point 7: pysyncobj starts an election when the deadline has passed by its own look at
        # the clock, a moment after the gate's; a deadline passing in between (a late heartbeat,
        # a descheduled or stopped tick thread) started a real election without a pre-vote, and
        # the node, refused under the lease, stayed at a term above its healthy leader's (it
        # drops the leader's lower-term messages): no leader for minutes. So pysyncobj sees no
        # deadline unless the gate allowed the election; one set meanwhile (a message) stays.
        hidden = None
        if not allowed and self._SyncObj__raftState != _RAFT_STATE_LEADER:
            hidden, self._SyncObj__raftElectionDeadline = self._SyncObj__raftElectionDeadline, float("inf")
        try:
            SyncObj._onTick(self, timeToWait)
        except errors.StoreFullError as err:  # the leader's own append: point 12
            self._journal_full(err)
        finally:
            if hidden is not None and self._SyncObj__raftElectionDeadline == float("inf"):
                self._SyncObj__raftElectionDeadline = hidden
        self._track_catch_up()
        self._note_term_site()  # point 22
        self._depose_check()
        self._leader_budget_check()
        self._withheld_check()

    # -- point 18: a leader that appends what an honest leader's door refuses is deposed
    def _note_applied(self, command: Any, entry: tuple | None = None) -> None:
        """After each applied entry but no-ops (tick thread): count it against its term when an
        honest leader would have refused to append it: not a replicad command (:meth:`_acceptable`,
        which an honest leader checks for its own and forwarded commands alike), or refused by the
        state machine for a reason the door refuses (:func:`door_refusal`); and apart (point 22,
        :data:`REPLAYED_DEPOSE_AFTER`) when refused as ``replayed`` (``entry``: the consumer's
        ``(state before, command, result, trust)``): an honest leader never re-appends applied bytes."""
        reason = self.take_door_refusal()  # always taken: it belongs to this entry only
        if not self._acceptable(command):
            reason = "malformed"
        result = entry[2] if entry is not None else None
        replayed = reason is None and entry is not None and copy_of_applied(entry[0], entry[1], result)
        if (reason is None and not replayed) or self._misbehaviour is None or self._replays is None:
            return
        idx = self._SyncObj__raftLastApplied + 1  # pysyncobj moves it after the entry was applied
        log_ = self._SyncObj__raftLog
        first = log_[0][1]
        if not first <= idx < first + len(log_):
            return
        if replayed:
            self._replays.note(log_[idx - first][2], idx, "replayed")
        else:
            self._misbehaviour.note(log_[idx - first][2], idx, reason)

    # -- point 22: the site of the leader that appended an entry
    def _note_term_site(self) -> None:
        """Tick thread, outside the state machine's lock: remember the site of the leader of the current
        term (this node's own when it leads), for :meth:`appender_site`. The newest 16 terms are kept."""
        leader, term, sites = self._SyncObj__raftLeader, self._SyncObj__raftCurrentTerm, self._term_sites
        if leader is None or sites is None or sites.get(term) is not None:
            return
        try:
            site = self.site_of(str(leader.id))
        except Exception:  # not known: the entry is charged to "?"
            return
        if site is None:
            return
        sites[term] = site
        for old in sorted(sites)[:-16]:
            del sites[old]

    def appender_site(self) -> str | None:
        """Tick thread, inside the state machine (never takes its lock): the site of the leader of the term
        of the entry being applied, as this node saw it (:meth:`_note_term_site`), else None."""
        idx = self._SyncObj__raftLastApplied + 1  # pysyncobj moves it after the entry was applied
        log_ = self._SyncObj__raftLog
        if not len(log_) or self._term_sites is None:
            return None
        first = log_[0][1]
        if not first <= idx < first + len(log_):
            return None
        return self._term_sites.get(log_[idx - first][2])

    def holds_deposed(self, node_id: Any, term: int | None = None) -> bool:
        """``node_id`` was deposed here (at ``term`` or before, when given) and its hold runs."""
        held = self.deposed.get(node_id)
        return held is not None and monotonic_time() < held[1] and (term is None or term >= held[0])

    def _depose_check(self) -> None:
        """A follower whose current term's entries reached :data:`DEPOSE_AFTER` door refusals
        deposes the leader it follows in that term (point 18): one ERROR line with the evidence,
        counted (``leader_deposed``); its append entries and votes are refused from now on for
        :data:`DEPOSE_HOLD_S` (:meth:`_authority_problem`, :meth:`_on_pre_vote`), its lease is
        forgotten and this node asks for pre-votes on the next tick."""
        leader = self._SyncObj__raftLeader
        if leader is None or self._misbehaviour is None or self._SyncObj__raftState == _RAFT_STATE_LEADER \
                or leader == self._SyncObj__selfNode:
            return
        term = self._SyncObj__raftCurrentTerm
        evidence = self._misbehaviour.over(term)
        what = "that the door of an honest leader refuses"
        if evidence is None and self._replays is not None:
            evidence = self._replays.over(term)  # point 22
            what = "that are copies of signed entries applied already, which an honest leader never appends"
        if evidence is None or self.holds_deposed(leader.id, term):
            return
        site = self._depose(leader, term)
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(evidence["reasons"].items()))
        self.refusals.refuse(
            "leader_deposed", "the leader of term %d, %s (site %s), appended %d entries (log %d-%d) %s "
            "(%s): deposing it (this site accepts no append entries from it and grants it "
            "no vote or pre-vote for %.0fs) and asking for the election of another leader. A compromised site: "
            "README \"A site is compromised\"", term, leader.id, site or "unknown", evidence["count"],
            evidence["first_idx"], evidence["last_idx"], what, reasons, DEPOSE_HOLD_S, level=logging.ERROR,
            every_s=0.0)

    def _depose(self, leader: Any, term: int, hold_s: float = DEPOSE_HOLD_S) -> str | None:
        """Points 18 and 19: hold ``leader`` as deposed at ``term`` for ``hold_s`` seconds, forget
        it and its lease, and ask for pre-votes on the next tick. Returns its site (a hint), if known."""
        now = monotonic_time()
        try:
            site = self.site_of(str(leader.id))
        except Exception:  # a hint for the log line only
            site = None
        self.deposed = {**{k: v for k, v in self.deposed.items() if now < v[1]},
                        leader.id: (term, now + hold_s, site)}
        self._SyncObj__raftLeader = None
        self._leader_contact = float("-inf")  # no lease: grant the other members' pre-votes and votes
        self._SyncObj__raftElectionDeadline = 0  # the next tick asks for pre-votes (point 7)
        return site

    # -- point 22: a leader over a member's budget or share with its own entries is deposed
    def _note_leader_entry(self, command: bytes, entry: tuple | None) -> None:
        """After each applied regular entry (tick thread): when this node follows a leader and the
        entry is of that leader's term and signed by the leader's site (``by``), count it in
        :class:`LeaderBudgetWatch` against the forwarding budget of a member (only while this node
        is in sync: catching up, it applies old entries faster than they were appended) and against
        the site's share of the log (:class:`LogShare`, times :data:`LOG_SHARE_SLACK`)."""
        leader, watch = self._SyncObj__raftLeader, self._leader_budget
        if entry is None or watch is None or leader is None or self._SyncObj__raftState == _RAFT_STATE_LEADER \
                or leader == self._SyncObj__selfNode:
            return
        idx = self._SyncObj__raftLastApplied + 1  # pysyncobj moves it after the entry was applied
        log_, term = self._SyncObj__raftLog, self._SyncObj__raftCurrentTerm
        first = log_[0][1]
        if not first <= idx < first + len(log_) or log_[idx - first][2] != term:
            return
        watch.follow(leader.id, term, lambda: self.site_of(str(leader.id)))
        decoded = entry[1]
        if watch.site is None or not isinstance(decoded, dict) or decoded.get("by") != watch.site:
            return
        size = len(command)
        now = monotonic_time()
        over_share = not share_exempt(decoded, size) and self.share_over(watch.site, LOG_SHARE_SLACK) is not None
        watch.note(idx, size, now, now - self._caught_up_at < SYNCED_GRACE_S, over_share)

    def _leader_budget_check(self) -> None:
        """A follower that counted :data:`DEPOSE_AFTER` of its leader's own entries of the current term
        beyond a member's budget or the site's share (:meth:`_note_leader_entry`) deposes it (point 22,
        ``_depose``, hold :data:`DEPOSE_HOLD_S`): one ERROR naming the leader, counted
        ``leader_over_budget``."""
        leader, watch = self._SyncObj__raftLeader, self._leader_budget
        if leader is None or watch is None or self._SyncObj__raftState == _RAFT_STATE_LEADER \
                or leader == self._SyncObj__selfNode:
            return
        term = self._SyncObj__raftCurrentTerm
        evidence = watch.over(leader.id, term)
        if evidence is None or self.holds_deposed(leader.id, term):
            return
        site = self._depose(leader, term) or evidence["site"]
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(evidence["reasons"].items()))
        self.refusals.refuse(
            "leader_over_budget", "the leader of term %d, %s (site %s), appended %d entries of its own site (log "
            "%d-%d) beyond what the door of an honest leader takes from a member (rate: over %.0f commands or %d KiB "
            "a second; share: over its share of the log kept since the last compaction, %d commands or %d MiB) "
            "(%s): deposing it (this site accepts no append entries from it and grants it no vote or pre-vote for "
            "%.0fs) and asking for the election of another leader. A compromised site: README \"A site is "
            "compromised\"", term, leader.id, site or "unknown", evidence["count"], evidence["first_idx"],
            evidence["last_idx"], FORWARD_CMDS_PER_S, FORWARD_BYTES_PER_S // 1024, LOG_SHARE_ENTRIES,
            LOG_SHARE_BYTES // 2**20, reasons, DEPOSE_HOLD_S, level=logging.ERROR, every_s=0.0)

    # -- point 19: a leader that withholds this site's commands is deposed
    def _forwarded(self, node: Any, message: dict) -> None:
        """Tick thread: an ``apply_command`` of this node's (pysyncobj's forward, or a resend)
        leaves for ``node``; noted when ``node`` is the leader this node follows."""
        try:
            leader = self._SyncObj__raftLeader
            if leader is None or node != leader or self._SyncObj__raftState == _RAFT_STATE_LEADER:
                return
            self._withheld.sent(message, leader.id, self._SyncObj__raftCurrentTerm, self.isNodeConnected(node),
                                self._SyncObj__leaderCommitIndex, monotonic_time())
        except Exception:  # never let the watch stop a send
            log.exception("raft: cannot note a forwarded command")

    def _withheld_check(self) -> None:
        """Every :data:`WITHHELD_CHECK_S`: forget this node's forwarded commands its log holds (the
        leader appended them: :meth:`WithheldWatch.in_log`), resend those still not in it after
        :data:`WITHHELD_RESEND_S`, and depose the leader it follows when one stayed out for
        :data:`WITHHELD_AFTER_S` (:meth:`WithheldWatch.overdue`) while this node is in that leader's
        lease (its heartbeats arrive) and has applied all it reports committed (point 19)."""
        now = monotonic_time()
        if now - self._withheld_checked < WITHHELD_CHECK_S or self._withheld is None:
            return
        self._withheld_checked = now
        try:
            self._relay_own(now)  # point 20
        except Exception:  # never let the relay stop the watch
            log.exception("raft: cannot relay this site's commands")
        leader, term = self._SyncObj__raftLeader, self._SyncObj__raftCurrentTerm
        if leader is None or self._SyncObj__raftState == _RAFT_STATE_LEADER or leader == self._SyncObj__selfNode:
            self._withheld.follow(None, None)
            return
        self._withheld.follow(leader.id, term)
        if not self._withheld.pending:
            return
        log_ = self._SyncObj__raftLog  # appended here, not applied yet: not withheld, never resent
        if len(log_):
            start = max(0, self._SyncObj__raftLastApplied + 1 - log_[0][1])
            self._withheld.in_log(entry[0] for entry in log_[start:])
        if not self._withheld.pending:
            return
        if self.isNodeConnected(leader):
            for message in self._withheld.due_resends(now):
                self._SyncObj__transport.send(leader, message)  # noted again by the send hook
        evidence = self._withheld.overdue(now)
        leader_commit, applied = self._SyncObj__leaderCommitIndex, self._SyncObj__raftLastApplied
        if evidence is None or self.holds_deposed(leader.id, term) or not isinstance(leader_commit, int) \
                or applied < leader_commit or now - self._leader_contact >= self._SyncObj__conf.raftMinTimeout:
            return  # (behind the leader's commit index: point 15's business; no heartbeat: an election comes)
        site = self._depose(leader, term, WITHHELD_HOLD_S)
        then = evidence["leader_commit"]
        moved = leader_commit - then if isinstance(then, int) else None
        self.refusals.refuse(
            "leader_withholds", "the leader of term %d, %s (site %s), has not appended a command this site forwarded "
            "%.0fs ago (sent %d times while connected; %d of this site's commands waiting) although its heartbeats "
            "arrive and %s: it withholds this site's commands. Deposing it (this site accepts no append entries "
            "from it and grants it no vote or pre-vote for %.0fs) and asking for the election of another leader. "
            "A compromised site: README \"A site is compromised\"", term, leader.id, site or "unknown",
            evidence["waiting_s"], evidence["sends"], evidence["waiting"],
            "it committed nothing meanwhile" if not moved else f"it committed {moved} other entries meanwhile "
            f"(commit index {then} -> {leader_commit})", WITHHELD_HOLD_S, level=logging.ERROR, every_s=0.0)
        self._withheld.follow(None, None)

    # -- point 20: this site's own signed commands relayed through the other members
    def _unapplied_keys(self) -> set:
        """Tick thread: :meth:`WithheldWatch.key` of the entries of this node's log not applied yet (the
        newest :data:`UNAPPLIED_SCANNED` of them: a leader that cannot commit must not pay for its whole
        backlog on every forward)."""
        log_ = self._SyncObj__raftLog
        size = len(log_)
        if not size:
            return set()
        start = max(0, self._SyncObj__raftLastApplied + 1 - log_[0][1], size - UNAPPLIED_SCANNED)
        return {WithheldWatch.key(entry[0]) for entry in log_[start:]}

    def _note_own(self, full: bytes, callback: Any) -> Any:
        """A proposal of this node (any thread): remembered until its entry is applied here, so that
        it can be relayed (:meth:`_relay_own`) and answered when an entry with its bytes is applied,
        whoever appended it. Returns the callback to hand to pysyncobj (called at most once), or
        None when the entry was applied already (answered now with its result: never appended twice)."""
        key = WithheldWatch.key(full)
        decoded = _decoded_entry(full)
        op_id = decoded.get("op_id") if isinstance(decoded, dict) else None
        with self._own_lock:
            if isinstance(op_id, str):  # point 21
                self._own_ops.pop(op_id, None)
                self._own_ops[op_id] = key
                while len(self._own_ops) > 2 * self.OWN_RESULTS_KEPT:
                    del self._own_ops[next(iter(self._own_ops))]
            applied = self._own_results.get(key, _NOT_APPLIED)
            if applied is _NOT_APPLIED:
                once = _once(callback)
                record = self._own.get(key)
                if record is None and len(self._own) < WithheldWatch.MAX_TRACKED:
                    record = self._own[key] = {"command": full, "first_s": monotonic_time(),
                                               "relayed_s": float("-inf"), "callbacks": []}
                if record is not None and len(record["callbacks"]) < 64:
                    record["callbacks"].append(once)
                    return _failures_only(once)  # point 21: answered by its own entry applied here
                return once
        callback(applied, FAIL_REASON.SUCCESS)
        return None

    def _own_applied(self, command: Any, result: Any) -> None:
        """Tick thread: an entry was applied here. Its result is kept (the newest
        :attr:`OWN_RESULTS_KEPT`), whoever appended it: a proposal here of the same bytes later (a
        retry of the same command through this node) is answered with it instead of sent (a leader
        drops a forward of bytes it appended in its term, and the relay of an applied op id is
        ``known``: the caller would wait for nothing). When it is one of this node's own proposals,
        every caller waiting for it is answered (a relayed copy is not answered by pysyncobj)."""
        key = WithheldWatch.key(command)
        with self._own_lock:
            record = self._own.pop(key, None) if self._own else None
            self._own_results[key] = result
            while len(self._own_results) > self.OWN_RESULTS_KEPT:
                del self._own_results[next(iter(self._own_results))]
        if record is None:
            return
        for callback in record["callbacks"]:
            try:
                callback(result, FAIL_REASON.SUCCESS)
            except Exception:
                log.exception("proposal callback failed")

    def _answer_installed(self, state: Any) -> None:
        """Tick thread: a full state (a leader's dump) was installed here. The entries it covers are
        never applied here one by one, so this node's own proposals among them would never be
        answered by their entry (point 21): their callers would get ``no_quorum`` at their deadline
        although the command committed, and might propose it again as a new one. Each pending own
        proposal whose answer ``state`` stores as this site's is answered with it now (and kept, as
        :meth:`_own_applied` keeps results): under rules 3 the answer under (its signer, its op id),
        which is always its own; under rules 1 and 2 only when its op id is also in its site's replay
        memory (``state["seen"]``: the command was decided, not answered with the answer of another
        site's command that took its op id, point 21). Others stay pending. Never raises."""
        try:
            applied = state.get("applied_ops") if isinstance(state, dict) else None
            if not isinstance(applied, dict) or not applied or not self._own:
                return
            keyed = cluster_state.rules(state) >= cluster_state.RULES_SIGNER_KEYED
            answered = []
            with self._own_lock:
                for key, record in list(self._own.items()):
                    decoded = _decoded_entry(record["command"])
                    op_id = decoded.get("op_id") if isinstance(decoded, dict) else None
                    if not isinstance(op_id, str):
                        continue
                    by = decoded.get("by")
                    result = applied.get(cluster_state.applied_key(state, by, op_id), _NOT_APPLIED)
                    if result is _NOT_APPLIED:
                        continue
                    if not keyed:
                        memory = (state.get("seen") or {}).get(by) if isinstance(by, str) else None
                        if not isinstance(memory, dict) or op_id not in (memory.get("ops") or {}):
                            continue
                    del self._own[key]
                    self._own_results[key] = result
                    while len(self._own_results) > self.OWN_RESULTS_KEPT:
                        del self._own_results[next(iter(self._own_results))]
                    answered.append((record, result))
        except Exception:
            log.exception("raft: cannot answer this node's own proposals from an installed full state")
            return
        for record, result in answered:
            for callback in record["callbacks"]:
                try:
                    callback(result, FAIL_REASON.SUCCESS)
                except Exception:
                    log.exception("proposal callback failed")

    def _answer_applied(self, message: dict) -> bool:
        """Tick thread, before an ``apply_command`` of this node's leaves: when its entry was applied
        here already (it came through a relay), answer the waiting caller with the result and send
        nothing (the second copy would be refused as replayed, in this site's name). True if so."""
        key = WithheldWatch.key(message.get("command"))
        with self._own_lock:
            result = self._own_results.get(key, _NOT_APPLIED) if key is not None else _NOT_APPLIED
        if result is _NOT_APPLIED:
            return False
        callback = self._SyncObj__commandsWaitingReply.pop(message.get("request_id"), None)
        if callback is not None:
            callback(result, FAIL_REASON.SUCCESS)
        return True

    def _relay_own(self, now: float) -> None:
        """Tick thread, every :data:`WITHHELD_CHECK_S`: each of this node's own commands not in its log
        :data:`WITHHELD_RESEND_S` after it was proposed is handed, unchanged, to every connected member,
        the leader it follows included (``relay_command``: a new leader never got the forward sent to
        the old one), again every :data:`WITHHELD_RESEND_S`, for at most :data:`RELAY_FOR_S`,
        :data:`RELAY_PER_CHECK` per check. A leader appends them itself (it was elected while they
        waited on a leader that withheld them)."""
        if not self._own:
            return
        with self._own_lock:
            for key in [k for k, r in self._own.items() if now - r["first_s"] > RELAY_FOR_S]:
                del self._own[key]
            due = [r for r in self._own.values() if now - r["first_s"] >= WITHHELD_RESEND_S
                   and now - r["relayed_s"] >= WITHHELD_RESEND_S][:RELAY_PER_CHECK]
            for record in due:
                record["relayed_s"] = now
        if not due:
            return
        if self._SyncObj__raftState == _RAFT_STATE_LEADER:
            for record in due:
                if not self._appended_already(record["command"]):
                    SyncObj._applyCommand(self, record["command"], None)  # answered when applied
            return
        appended = self._unapplied_keys()  # the leader appended them: their commit comes
        targets = [n for n in self._SyncObj__otherNodes if self.isNodeConnected(n)]
        for record in due:
            if WithheldWatch.key(record["command"]) not in appended:
                for node in targets:
                    self._SyncObj__transport.send(node, {"type": "relay_command", "command": record["command"]})

    def _on_relay_command(self, node: Any, message: dict) -> None:
        """A member relays a command (point 20): within the sender's budget, a replicad command another
        member's site signed (:attr:`relay_check`), neither applied (``known``) nor in this log yet.
        The leader appends it (once: :meth:`_appended_already`); a follower passes it to its leader,
        within its own budget for that, and watches it like its own commands (point 19)."""
        command, sender, now = message["command"], str(getattr(node, "id", node)), monotonic_time()
        if not self._relay_in.take(sender, len(command), now):
            self.refusals.refuse("relay_over_budget", "%s: relayed more than %.0f commands or %d KiB a second "
                                 "(bursts of %.0f s)", sender, RELAY_CMDS_PER_S, RELAY_BYTES_PER_S // 1024,
                                 RELAY_BURST_S)
            return
        problem = ("relay_malformed", f"a relayed command that is not a replicad command ({len(command)} bytes)") \
            if not self._acceptable(command) else self.relay_check(command, sender)
        if problem is not None:
            if problem[0] != "known":
                self.refusals.refuse(problem[0], "%s: %s", sender, problem[1])
            return
        if self._SyncObj__raftState == _RAFT_STATE_LEADER:
            self._applyCommand(command, None)
            return
        leader = self._SyncObj__raftLeader
        if leader is None or leader == node or leader == self._SyncObj__selfNode \
                or WithheldWatch.key(command) in self._unapplied_keys():
            return  # no leader to pass it to (the sender asks again), or already appended
        if not self._relay_out.take("leader", len(command), now):
            self.refusals.refuse("relay_over_budget", "%s: this node passes at most %.0f relayed commands a second "
                                 "on to its leader; dropped", sender, RELAY_CMDS_PER_S / 2)
            return
        self._SyncObj__transport.send(leader, {"type": "relay_command", "command": command})  # watched: point 19

    def _appended_already(self, full: bytes) -> bool:
        """Leader, tick thread: ``full``, forwarded or relayed, was queued by this leader in its current
        term already or is in its log and not applied yet (the same command arriving directly and
        through a relay, point 20). Otherwise it is remembered (at most 4096 per term, oldest forgotten)."""
        key, term = WithheldWatch.key(full), self._SyncObj__raftCurrentTerm
        seen_term, keys = self._appending
        if seen_term != term:
            keys = {}
            self._appending = (term, keys)
        if key in keys or key in self._unapplied_keys():
            return True
        if len(keys) >= 4096:
            del keys[next(iter(keys))]
        keys[key] = None
        return False

    # -- point 21: a leader that front-runs this site's commands is deposed
    def _front_run_check(self, command: Any, result: Any, entry: tuple | None) -> Any:
        """Tick thread, after each applied regular entry: ``result`` as this node's own proposal of
        these bytes is to be answered. ``entry``: ``(state before, decoded command, result, trust)`` from
        the consumer (that result is the state machine's own; ``result`` is pysyncobj's). An entry carrying the op id of one of this node's own proposals with other
        bytes, signed by its site (:func:`signature_refusal` under the state before it), is judged
        (:meth:`_op_id_taken`); this node's own entry answered from the exactly-once memory with
        the very answer such an entry stored (rules 1 and 2 only) is answered with a
        ``leader_front_run`` refusal instead. Never raises."""
        try:
            if entry is None or not self._own_ops:
                return result
            before, decoded, result, trust = entry
            op_id = decoded.get("op_id") if isinstance(decoded, dict) else None
            key = WithheldWatch.key(command)
            with self._own_lock:
                own = self._own_ops.get(op_id) if isinstance(op_id, str) else None
                taken = self._front_runs.get(op_id) if own is not None else None
            if own is None:
                return result
            if own != key:
                self._op_id_taken(before, decoded, op_id, result, trust)
                return result
            if cluster_state.rules(before) >= cluster_state.RULES_SIGNER_KEYED:
                return result  # an answer stored under (this site, op id) is this site's own: never front-run
            stored = (before.get("applied_ops") or {}).get(cluster_state.applied_key(before, decoded.get("by"), op_id))
            if taken is None or stored is None or result is not stored or stored is not taken["stored"]:
                return result  # applied, or answered with this site's own first answer (a retry of its op id)
            return {"ok": False, "error": errors.LeaderFrontRunError.code,
                    "message": f"site {taken['signer']} signed a command with this command's op id, appended "
                               f"before it (log index {taken['index']}, term {taken['term']}, leader "
                               f"{taken['leader'] or 'not known here'}), and the state machine answered this command "
                               "with that one's result: it was NOT applied (a leader that does this is deposed "
                               "here); propose it again as a new command",
                    "evidence": {"op": str(decoded.get("op"))[:40], "op_id": op_id,
                                 **{k: v for k, v in taken.items() if k != "stored"}}}
        except Exception:  # never let the check stop the state machine
            log.exception("raft: cannot check an applied entry against this site's own op ids")
            return result

    def _op_id_taken(self, before: Any, decoded: dict, op_id: str, result: Any, trust: Trust | None) -> None:
        """Point 21: an applied entry with other bytes carries the op id of one of this node's own
        proposals. Judged only when its signature verifies (a forged one proves nothing and is
        remembered nowhere under rules 3) and it is not this site's own (a retry of the op id with a
        new stamp, as ``daemon.request_with_retry`` makes: its first answer is this site's). Signed by the site of the leader this node follows in the
        entry's term: ERROR, ``leader_front_runs``, and under rules 1 and 2 that leader deposed (under
        rules 3 not: the command applies anyway); else ERROR, ``op_id_taken``.
        Remembered in :attr:`_front_runs` (with its answer, ``stored``) only under rules 1 and 2 and
        when the op id was not answered yet: then its answer is the one stored under the op id."""
        if signature_refusal(before, decoded, trust) is not None \
                or (isinstance(result, dict) and result.get("error") in cluster_state.IDENTITY_REFUSALS):
            return
        try:
            own_site = self.site_of(str(self._SyncObj__selfNode.id))
        except Exception:
            own_site = None
        if own_site is not None and decoded.get("by") == own_site:
            return  # this site's own: a retry of the op id with a new stamp (daemon.request_with_retry)
        idx = self._SyncObj__raftLastApplied + 1  # pysyncobj moves it after the entry was applied
        log_ = self._SyncObj__raftLog
        first = log_[0][1] if len(log_) else idx
        term = log_[idx - first][2] if first <= idx < first + len(log_) else None
        signer = str(decoded.get("by"))[:64]
        leader = self._SyncObj__raftLeader
        following = leader is not None and leader != self._SyncObj__selfNode \
            and self._SyncObj__raftState != _RAFT_STATE_LEADER and term == self._SyncObj__raftCurrentTerm
        try:
            leader_site = self.site_of(str(leader.id)) if following else None
        except Exception:
            leader_site = None
        evidence = {"signer": signer, "leader": leader_site, "term": term, "index": idx}
        if cluster_state.rules(before) < cluster_state.RULES_SIGNER_KEYED and \
                cluster_state.applied_key(before, decoded.get("by"), op_id) not in (before.get("applied_ops") or {}):
            # its answer became the one stored under the op id: this site's entry after it is answered
            # with that very answer (``stored``), never applied. Not when this site's own command was
            # decided first (a later retry of it is answered with its own answer: applied once), nor
            # under rules 3 (the memory is keyed by signer: no other site's answer answers for ours)
            with self._own_lock:
                self._front_runs[op_id] = {**evidence, "stored": result}
                while len(self._front_runs) > self.OWN_RESULTS_KEPT:
                    del self._front_runs[next(iter(self._front_runs))]
        op = str(decoded.get("op"))[:40]
        if following and leader_site is not None and leader_site == signer:
            if cluster_state.rules(before) >= cluster_state.RULES_SIGNER_KEYED:
                # the front-run cancels nothing (this site's command is decided under its own key), while
                # a deposition would cut this site off for the hold when the others keep following that
                # leader (attacker review r14, A2): alert only
                self.refusals.refuse(
                    "leader_front_runs", "the leader of term %s, %s (site %s), appended at log index %d a command of "
                    "its own (%s) carrying the op id %s of a command this site proposed: it front-runs this site's "
                    "commands. Under the cluster's rules %d this site's command applies anyway (the exactly-once "
                    "memory is keyed by signing site), so the leader is NOT deposed (deposing it would cut this "
                    "site off while the others follow it). A compromised site: README \"A site is compromised\"",
                    term, leader.id, signer, idx, op, op_id[:64], cluster_state.rules(before),
                    level=logging.ERROR, **self._front_run_said(str(leader.id), op_id))
                return
            if not self.holds_deposed(leader.id, term):
                self._depose(leader, term, WITHHELD_HOLD_S)
            self.refusals.refuse(
                "leader_front_runs", "the leader of term %s, %s (site %s), appended at log index %d a command of its own "
                "(%s) carrying the op id %s of a command this site proposed: under rules 1 and 2 this site's command "
                "is answered with that command's result and never applied. It front-runs this site's commands. "
                "Deposing it (this site accepts no append entries from it and grants it no vote or pre-vote for "
                "%.0fs) and asking for the election of another leader. A compromised site: README \"A site is "
                "compromised\"", term, leader.id, signer, idx, op, op_id[:64], WITHHELD_HOLD_S,
                level=logging.ERROR, **self._front_run_said(str(leader.id), op_id))
            return
        self.refusals.refuse(
            "op_id_taken", "site %s signed a command (%s, log index %d, term %s) carrying the op id %s of a command "
            "this site proposed (an honest site never does: op ids are random); the leader that appended it (%s) is "
            "not that site, so nobody is deposed. A compromised site: README \"A site is compromised\"",
            signer, op, idx, term, op_id[:64], leader_site or "not known here", level=logging.ERROR,
            **self._front_run_said(signer, op_id))

    def _front_run_said(self, who: str, op_id: str) -> dict:
        """Point 21's ERROR line for an entry of ``who`` (the leader's address, or the signing site)
        carrying this site's ``op_id``: ``refuse`` keywords that log the first entry of each
        ``(who, op id)`` and further ones at most once per ``channel.LOG_EVERY_S`` for ``who``
        (with the count of those not logged); every entry is counted. Attacker review r2, F3: a
        leader repeating one front-run entry 300 times logged 300 ERROR lines. The newest
        :attr:`OWN_RESULTS_KEPT` pairs are remembered."""
        said, key = self._front_runs_said, (who, op_id)
        with self._own_lock:
            first = key not in said
            said[key] = None
            while len(said) > self.OWN_RESULTS_KEPT:
                del said[next(iter(said))]
        return {"every_s": 0.0 if first else channel_module.LOG_EVERY_S, "about": who}

    def deposed_status(self) -> dict:
        """``{leader address: {"site": str|None, "term": int, "hold_s": float}}`` of the leaders
        this node deposed whose hold still runs (point 18)."""
        now = monotonic_time()
        return {str(node_id): {"site": site, "term": term, "hold_s": round(until - now, 1)}
                for node_id, (term, until, site) in dict(self.deposed).items() if now < until}

    # -- point 15: a leader that cannot send its dump, a follower that cannot catch up
    def _dump_send_failed(self, node: Any, exc: OSError) -> None:
        """The leader could not read its own dump to send it to ``node`` (GuardedSerializer).

        After :data:`DUMP_SEND_FAILURES_MAX` failures within :data:`DUMP_FAILURE_WINDOW_S` (one
        try per member per ``guard.DUMP_SEND_RETRY_S``) it steps down and runs for no election for
        :data:`DUMP_NO_CANDIDACY_S`, so that a member that can read its dump leads and serves
        the follower; logged once at ERROR when it steps down (no traceback), counted in
        ``dump_send_failures`` (``status()``, ``replicad_raft_dump_send_failures_total``).
        """
        now = monotonic_time()
        if now - self._dump_failures_since >= DUMP_FAILURE_WINDOW_S:
            self._dump_failures_since, self._dump_failures_in_row = now, 0
        self._dump_send_failures += 1
        self._dump_failures_in_row += 1
        leader = self._SyncObj__raftState == _RAFT_STATE_LEADER
        step_down = leader and self._dump_failures_in_row >= DUMP_SEND_FAILURES_MAX
        if step_down or (not leader and now - self._dump_logged >= 60.0):  # one line per step-down
            self._dump_logged = now
            log.error("raft: cannot read this node's full dump to send it to %s, which is behind the log's start "
                      "(%s: %s; %d failures since start)%s", getattr(node, "id", node), type(exc).__name__, exc,
                      self._dump_send_failures,
                      f": stepping down as leader, no candidacy for {DUMP_NO_CANDIDACY_S:.0f}s, so that a member "
                      "that can read its dump serves it" if step_down else "")
        if step_down:
            self._dump_failures_in_row = 0
            self._no_candidacy_until = now + DUMP_NO_CANDIDACY_S
            self._SyncObj__setState(pysyncobj.syncobj._RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
            self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()

    def _SyncObj__sendAppendEntries(self) -> None:
        # Members whose dump send just failed (guard.DUMP_SEND_RETRY_S) get one heartbeat
        # instead: pysyncobj would otherwise retry them in a busy loop for appendEntriesPeriod.
        serializer = self.__dict__.get("_SyncObj__serializer")
        connected = self._SyncObj__connectedNodes
        held = {n for n in connected if isinstance(serializer, GuardedSerializer) and serializer.send_blocked(n)}
        connected -= held
        try:
            SyncObj._SyncObj__sendAppendEntries(self)
        finally:
            connected |= held
        for node in held:
            self._SyncObj__transport.send(node, {"type": "append_entries", "term": self._SyncObj__raftCurrentTerm,
                                                 "commit_index": self._SyncObj__raftCommitIndex, "serialized": None})

    def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # pysyncobj sets the term in memory before the journal stores it: a meta write that
        # fails (disk full, point 12) left this node at a term it never stored, and its
        # answers then drove the others' terms up (terms 1 to 11 in 4 s, measured). Raft §5:
        # the term and vote are durable before they are used; on failure both stay as stored.
        before = (self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId)
        try:
            SyncObj._SyncObj__setCurrentTerm(self, term, votedForNodeId)
        except errors.ReplicadError:
            self._SyncObj__raftCurrentTerm, self._SyncObj__votedForNodeId = before
            raise

    def _track_catch_up(self) -> None:
        """Follower side of point 15: compare what is applied here with the commit index the
        leader reports; a WARNING (once a minute) after :data:`CATCH_UP_STALL_S` without progress."""
        now = monotonic_time()
        applied, leader_commit = self._SyncObj__raftLastApplied, self._SyncObj__leaderCommitIndex
        if applied != self._progress[0]:
            self._progress = (applied, now)
        if not isinstance(leader_commit, int):
            return
        if applied >= leader_commit and self._commit_in_current_term(leader_commit):
            self._caught_up_at = now
            return
        stalled_s = now - self._progress[1]
        if stalled_s >= CATCH_UP_STALL_S and now - self._behind_logged >= 60.0:
            self._behind_logged = now
            log.warning("raft: this node is %d entries behind the commit index its leader reports (applied %d, "
                        "leader's commit %d) and applied nothing for %.0fs: it is not synced and does not act on "
                        "its view of the cluster until it has caught up", leader_commit - applied, applied,
                        leader_commit, stalled_s)

    def _commit_in_current_term(self, index: int) -> bool:
        """The entry at commit ``index`` is of the current term (Raft §5.4.2, §8: a commit
        index is known to be current only once the leader committed an entry of its own term,
        its no-op; before, a leader just elected after a full restart reports the commit index
        it stored, and its state may lack entries the previous term committed: a restarted
        primary once read a catalog without its two newest snapshots as current, chaos
        ``crash-all``). An index compacted away counts as current; one past this log's end
        does not (its entry has not arrived)."""
        log_ = self._SyncObj__raftLog
        first, last = log_[0][1], log_[-1][1]
        if index < first:
            return True
        if index > last:
            return False
        return log_[index - first][2] == self._SyncObj__raftCurrentTerm

    def catch_up_status(self) -> dict:
        """``{"leader_commit_index": int|None, "caught_up": bool, "behind_s": float,
        "stalled_s": float, "dump_send_failures": int}`` (tick thread; point 15).

        ``leader_commit_index``: the commit index the leader last reported (this node's own when
        it leads); ``caught_up``: everything up to it is applied here, or was within the last
        :data:`SYNCED_GRACE_S` (a healthy follower applies a new commit within a tick), and never
        before this node first caught up after its start, nor while the entry at that commit
        index is of an earlier term (:meth:`_commit_in_current_term`); ``behind_s``: seconds since it was
        last caught up (0 when it is); ``stalled_s``: seconds since its applied index last moved.
        """
        now = monotonic_time()
        leader_commit = self._SyncObj__leaderCommitIndex
        applied = self._SyncObj__raftLastApplied
        known = isinstance(leader_commit, int)
        behind_s = 0.0 if known and applied >= leader_commit and self._commit_in_current_term(leader_commit) \
            else min(now - self._caught_up_at, 1e9)
        return {"leader_commit_index": leader_commit if known else None,
                "caught_up": known and behind_s < SYNCED_GRACE_S,
                "behind_s": behind_s, "stalled_s": min(now - self._progress[1], 1e9) if behind_s else 0.0,
                "dump_send_failures": self._dump_send_failures}

    # -- point 12: a journal that cannot be written, a journal that was lost
    def _journal(self) -> Any:
        return self.__dict__.get("_SyncObj__raftLog")

    def _journal_full_now(self) -> errors.ReplicadError | None:
        """The journal's StoreFullError while its file system is still short of space, else None."""
        journal = self._journal()
        probe = getattr(journal, "still_full", None)
        return probe() if probe is not None else None

    def _rejoining(self) -> bool:
        # a lone node has nobody to catch up from: its (emptied) log is all there is
        return bool(getattr(self._journal(), "rejoining", False)) and bool(self.__dict__.get("_SyncObj__otherNodes"))

    def _journal_full(self, err: errors.ReplicadError) -> None:
        """An append or meta write failed for lack of space: never acknowledged (the journal is
        as before), and a leader that cannot append must not stay leader (no commit for as long
        as it keeps the role): step down; :meth:`_pre_vote_gate` keeps it from campaigning."""
        now = monotonic_time()
        text = f"{err}; " + ("stepping down as leader, no candidacy until space is back"
                             if self._SyncObj__raftState == _RAFT_STATE_LEADER else
                             "acknowledging nothing until space is back")
        at, last, since = self._full_error
        if text != last or now - at >= journal_module.META_LOG_EVERY_S:  # the first, then every 5 min with a count
            log.error("raft: %s%s", text, f" ({since} more such failures since the last line)" if since else "")
            self._full_error = (now, text, 0)
        else:
            self._full_error = (at, last, since + 1)
        if self._SyncObj__raftState == _RAFT_STATE_LEADER:
            self._SyncObj__setState(pysyncobj.syncobj._RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
            self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()

    def _check_rejoined(self, message: dict) -> None:
        """A node that lost its journal votes again once its commit index reached the leader's
        commit index as of the first message it got from it (and the one it knew before)."""
        journal = self._journal()
        leader_commit = message.get("commit_index")
        if self._rejoin_target is None and isinstance(leader_commit, int) and not isinstance(leader_commit, bool):
            self._rejoin_target = max(leader_commit, journal.rejoin_commit_index())
        if self._rejoin_target is not None and self._SyncObj__raftCommitIndex >= self._rejoin_target:
            try:
                journal.rejoined(self._SyncObj__raftCommitIndex)
            except errors.ReplicadError as err:
                log.warning("raft: caught up after a lost journal, but %s; still not voting", err)

    def _pre_vote_gate(self) -> bool:
        """Hold pysyncobj's election back until a majority granted a pre-vote (point 7).
        Returns True when pysyncobj may start an election on this tick (pre-vote won, a leader
        transfer, no other member, or a transport not ready yet)."""
        if self._SyncObj__raftState == _RAFT_STATE_LEADER or self._SyncObj__selfNode is None \
                or not self.__dict__.get("_SyncObj__transport") or not self._SyncObj__transport.ready:
            return True
        if self._SyncObj__transferInProgress:
            return True
        now = monotonic_time()
        if self._SyncObj__raftElectionDeadline >= now or not self._SyncObj__connectedToAnyone():
            return False
        no_candidacy = "it lost its journal and has not caught up" if self._rejoining() else \
            ("its journal cannot be written (disk full)" if self._journal_full_now() is not None else
             ("it cannot read its own full dump (stepped down)" if now < self._no_candidacy_until else None))
        if no_candidacy is not None:  # point 12: wait for a leader instead of running
            self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
            if now - self._full_logged >= 10.0:
                self._full_logged = now
                log.warning("raft: no leader heard, but this node does not run for election: %s", no_candidacy)
            return False
        self._SyncObj__raftLeader = None  # not heard within an election timeout: no longer a leader we know
        if not self._SyncObj__otherNodes:
            return True
        if self._pre_vote_won:
            fresh = now - self._pre_vote_won_at < self._SyncObj__conf.raftMaxTimeout
            self._end_pre_vote_round()
            if fresh:
                return True  # let pysyncobj's _onTick run the election now
            # else: the granters' window for our request_vote is over (this tick thread was held
            # up since; a grant exempts a request_vote from the lease for raftMaxTimeout): a vote
            # they refuse inside their lease leaves this node above its leader's term; ask again
        term = self._SyncObj__raftCurrentTerm + 1
        self._pre_vote_term = term
        self._pre_vote_grants = frozenset()
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        try:
            needs_leader = bool(self.needs_leader())
        except Exception:  # a hint only: never let it break the tick
            needs_leader = False
        since_leader_s = now - max(self._leader_contact, self._started_at)
        if needs_leader and since_leader_s >= ISOLATED_AFTER_S and now - self._isolation_logged >= ISOLATED_AFTER_S:
            self._isolation_logged = now
            log.warning("raft: no leader heard for %.0fs; this site needs one to commit: asking for pre-votes "
                        "(term %d), granted only by members that heard no leader either; its commands are relayed "
                        "through the members it reaches", since_leader_s, term)
        for other in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(other, {
                "type": "pre_vote", "term": term,
                "last_log_index": self._SyncObj__getCurrentLogIndex(),
                "last_log_term": self._SyncObj__getCurrentLogTerm(),
                "needs_leader": needs_leader, "isolated_s": min(since_leader_s, 1e9),
            })
        return False

    def _end_pre_vote_round(self) -> None:
        """Forget the current pre-vote round, its grants and a win not used yet (point 7): on every
        ``append_entries`` at this node's term or above (a leader is heard), and when a win is used.
        A win kept past a leader's heartbeat (its grant and the heartbeat in one poll), or grants of
        a round that ended so arriving late, started a real election at the next heartbeat gap with
        no fresh grant: the members inside their leader's lease refused that vote, and the node
        stayed above its leader's term, dropping the leader's messages (never synced again)."""
        self._pre_vote_term = None
        self._pre_vote_grants = frozenset()
        self._pre_vote_won = False

    def _on_pre_vote(self, node: Any, message: dict) -> None:
        term, last_idx, last_term = (message.get("term"), message.get("last_log_index"),
                                     message.get("last_log_term"))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (term, last_idx, last_term)):
            return
        # Point 7: no exception to the lease. A member's word that it needs a leader and is cut off
        # (``needs_leader``, ``isolated_s``, still sent for older members) is not checked here: it won a
        # compromised member the lead at will (attacker review R7 F1); a cut-off primary's commands
        # commit through the relay instead (point 20).
        in_lease = monotonic_time() - self._leader_contact < self._SyncObj__conf.raftMinTimeout
        my_last_term = self._SyncObj__getCurrentLogTerm()
        up_to_date = last_term > my_last_term or (last_term == my_last_term
                                                  and last_idx >= self._SyncObj__getCurrentLogIndex())
        current = self._SyncObj__raftCurrentTerm
        if self._SyncObj__raftState == _RAFT_STATE_LEADER and term - 1 > current \
                and not self._leader_has_majority(self._SyncObj__conf.raftMaxTimeout):
            # A member is at a higher term than this leader, which has not heard from a
            # majority for an election timeout: Raft says step down (§5.1). Without it a
            # leader that lost its majority kept the role for pysyncobj's 30 s fallback.
            log.warning("raft: stepping down: %s is at term %d, above ours (%d), and no majority answered "
                        "for %.1fs", getattr(node, "id", node), term - 1, current, self._SyncObj__conf.raftMaxTimeout)
            self._SyncObj__setCurrentTerm(term - 1, None)
            self._SyncObj__setState(pysyncobj.syncobj._RAFT_STATE.FOLLOWER)
            self._SyncObj__raftLeader = None
            current = term - 1
        granted = (term > current and up_to_date and not in_lease
                   and self._SyncObj__raftState != _RAFT_STATE_LEADER
                   and not self._rejoining()  # point 12: an emptied log vouches for nothing
                   and self._journal_full_now() is None  # point 12: it could not store the vote it promises
                   and not self.holds_deposed(node.id))  # point 18
        if granted:
            self._pre_vote_granted = (node.id, term, monotonic_time())
        elif self.holds_deposed(node.id):
            self.refusals.refuse("vote_for_deposed", "%s: pre_vote at term %d from a leader this node deposed",
                                 node.id, term)
        self._SyncObj__transport.send(node, {"type": "pre_vote_response", "term": term, "granted": granted,
                                             "current_term": current})

    def _on_pre_vote_response(self, node: Any, message: dict) -> None:
        term = message.get("term")
        theirs = message.get("current_term")
        if message.get("granted") is False and term == self._pre_vote_term and isinstance(theirs, int) \
                and not isinstance(theirs, bool) and theirs > self._SyncObj__raftCurrentTerm \
                and self._SyncObj__raftState != _RAFT_STATE_LEADER:
            # Refused because that member is at a higher term: adopt it (Raft §5.1: a higher term
            # in any reply is adopted), at most MAX_TERM_STEP at once, and ask again at once.
            # Without it a member whose term was inflated, and whose log is behind, refused our
            # pre-votes forever while we refused its own: no leader (97 s and more, observed).
            adopted = min(theirs, self._SyncObj__raftCurrentTerm + MAX_TERM_STEP)
            log.warning("raft: %s refused a pre-vote at term %d: it is at term %d; adopting term %d",
                        getattr(node, "id", node), term, theirs, adopted)
            self._SyncObj__setCurrentTerm(adopted, None)
            self._pre_vote_term = None
            self._SyncObj__raftElectionDeadline = 0
            return
        if (message.get("granted") is not True or term != self._pre_vote_term
                or term != self._SyncObj__raftCurrentTerm + 1
                or self._SyncObj__raftState == _RAFT_STATE_LEADER):
            return
        self._pre_vote_grants = self._pre_vote_grants | {node.id}
        if len(self._pre_vote_grants) + 1 > (len(self._SyncObj__otherNodes) + 1) / 2:
            self._pre_vote_term = None
            self._pre_vote_won = True
            self._pre_vote_won_at = monotonic_time()
            self._SyncObj__raftElectionDeadline = 0  # the next tick elects

    def _leader_has_majority(self, within_s: float) -> bool:
        """Leader only: a majority (counting itself) answered within ``within_s``."""
        now = monotonic_time()
        last = self._SyncObj__lastResponseTime
        heard = 1 + sum(1 for n in self._SyncObj__otherNodes if now - last.get(n, float("-inf")) < within_s)
        return heard > (len(self._SyncObj__otherNodes) + 1) / 2

    def _in_lease(self) -> bool:
        """Raft thesis §4.2.3 (and etcd's CheckQuorum): a follower that heard from its leader
        within ``raftMinTimeout``, or a leader that heard from a majority within it."""
        within = self._SyncObj__conf.raftMinTimeout
        if self._SyncObj__raftState == _RAFT_STATE_LEADER:
            return self._leader_has_majority(within)
        return monotonic_time() - self._leader_contact < within

    def _authority_problem(self, node: Any, message: dict) -> tuple[str, str] | None:
        """Why a well-formed message may not act on this node (who says it, at which term)."""
        kind, term = message["type"], message.get("term")
        current, leader = self._SyncObj__raftCurrentTerm, self._SyncObj__raftLeader
        if self.deposed and kind in ("append_entries", "request_vote") and self.holds_deposed(node.id):
            held_term = self.deposed[node.id][0]
            if kind == "request_vote":  # point 18
                return "vote_for_deposed", f"request_vote at term {term} from a leader this node deposed at term " \
                    f"{held_term}"
            if term >= held_term:  # that term, and any later one it would claim without our vote
                return "from_deposed_leader", f"append_entries at term {term} from the leader this node deposed " \
                    f"at term {held_term}"
        if kind == "request_vote" and self._rejoining():
            return ("vote_while_rejoining", f"request_vote at term {term}: this node lost its journal and votes "
                    "for nobody until it has caught up with a leader")
        if kind == "request_vote" and term > current and self._in_lease():
            granted_id, granted_term, granted_at = self._pre_vote_granted
            if not (granted_id == node.id and granted_term == term
                    and monotonic_time() - granted_at < self._SyncObj__conf.raftMaxTimeout):
                return "vote_in_lease", f"request_vote at term {term} (ours {current}) while our leader's lease holds"
        if kind == "append_entries":
            if term > current and node != leader and self._in_lease():
                return ("term_from_non_leader", f"append_entries at term {term} (ours {current}) from a member "
                        "that is not our leader, while our leader's lease holds")
            if term == current and leader is not None and node != leader:
                return "second_leader", f"append_entries at term {term} from a member while another leads that term"
            if "prevLogIdx" not in message and message.get("serialized") is not None \
                    and (term != current or node != leader):  # (a None payload is a heartbeat)
                return ("snapshot_from_non_leader", f"a full state (install-snapshot) at term {term} from a member "
                        "that is not the leader this node follows in its current term")
        if kind == "apply_command_response" and node != leader:
            return "response_from_non_leader", "apply_command_response from a member that is not our leader"
        if kind == "response_vote" and term == current:
            voted_term, voters = self._votes
            voters = voters if voted_term == current else frozenset()
            if node.id in voters:
                return "duplicate_vote", f"a second response_vote at term {term}"
            self._votes = (current, voters | {node.id})
        return None

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        try:
            problem = shape_problem(message, self._SyncObj__raftCurrentTerm)
            if problem is None:
                problem = self._authority_problem(node, message)
            if problem is not None:
                if problem[0] == "snapshot_from_non_leader" and self._SyncObj__raftLeader is None and \
                        message.get("term", -1) >= self._SyncObj__raftCurrentTerm:
                    # a restarted node hears the leader's full state before its first append_entries names
                    # that leader: refused as ever, a line at INFO (operator try-out 2, item 6), counted as
                    # snapshot_before_leader, a reason ReplicadRaftTrafficRefused leaves out but for a flood
                    # (2-3 at each restart past a compacted log, measured): a member sending full states
                    # steadily is counted snapshot_from_non_leader while this node follows its leader.
                    # Once this node follows a leader, a full state from another member stays a WARNING
                    self.refusals.refuse("snapshot_before_leader", "%s: %s (this node follows no leader yet, as at "
                                         "a restart: the leader sends it again once followed)",
                                         getattr(node, "id", node), problem[1], level=logging.INFO,
                                         about="no leader yet")
                    return
                self.refusals.refuse(problem[0], "%s: %s", getattr(node, "id", node), problem[1])
                return
            self._dispatch_message(node, message)
        except errors.StoreFullError as err:  # our journal, not the message: point 12
            self._journal_full(err)
        except Exception as exc:  # never let a message end the tick thread
            self.refusals.refuse("malformed", "%s: message could not be handled (%s: %s)", getattr(node, "id", node),
                                 type(exc).__name__, str(exc)[:120], level=logging.ERROR)

    # -- point 16: what the members say the membership is
    def _ask_membership(self) -> None:
        now = monotonic_time()
        if not self.asks_membership or now - self._membership_asked < MEMBERSHIP_ASK_S:
            return
        self._membership_asked = now
        for node in self._SyncObj__otherNodes:
            if self.isNodeConnected(node):
                self._SyncObj__transport.send(node, {"type": "membership_query"})

    def _on_membership_query(self, node: Any) -> None:
        now = monotonic_time()
        answered = self._membership_answered if self._membership_answered is not None else {}
        if now - answered.get(node.id, float("-inf")) < MEMBERSHIP_ASK_S:
            return
        report = self.membership_of_state()
        if report is None:
            return
        self._membership_answered = {**answered, node.id: now}
        self._SyncObj__transport.send(node, {"type": "membership_report", "report": report})

    def _on_membership_report(self, node: Any, message: dict) -> None:
        if self.asks_membership:  # shape checked by the guard
            self.membership_reports = {**(self.membership_reports or {}),
                                       str(node.id): (message["report"], monotonic_time())}

    def _dispatch_message(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "membership_query":
            self._on_membership_query(node)
            return
        if kind == "membership_report":
            self._on_membership_report(node, message)
            return
        if kind == "apply_command":
            if self._SyncObj__raftState != _RAFT_STATE_LEADER and "request_id" not in message:
                # pysyncobj relays such a command to the leader as this node's own: a member could
                # then spend an honest site's budget and be logged in its name (attacker review).
                # Honest members send only to the leader, always with a request_id (a non-leader
                # answers those NOT_LEADER itself).
                self.refusals.refuse("forwarded_to_follower", "%s: an apply_command without a request id sent to "
                                     "this non-leader (never relayed)", getattr(node, "id", node))
                return
            problem = self.door_check(message.get("command"), str(getattr(node, "id", node)))
            if problem is not None:  # point 17
                self.refusals.refuse(problem[0], "%s: %s", getattr(node, "id", node), problem[1])
                if "request_id" in message:
                    self._SyncObj__transport.send(node, {"type": "apply_command_response",
                                                         "request_id": message["request_id"],
                                                         "error": FAIL_REASON.REQUEST_DENIED})
                return
        if kind == "relay_command":
            self._on_relay_command(node, message)
            return
        if kind == "pre_vote":
            self._on_pre_vote(node, message)
            return
        if kind == "pre_vote_response":
            self._on_pre_vote_response(node, message)
            return
        if kind == "append_entries" and isinstance(message.get("term"), int) \
                and message["term"] >= self.raftCurrentTerm:
            self._leader_contact = monotonic_time()
            self._end_pre_vote_round()
        if kind == "append_entries" and "prevLogIdx" in message and "transmission" not in message:
            self._on_append_entries(node, message)
            if self._rejoining():
                self._check_rejoined(message)
        elif kind == "next_node_idx" \
                and message.get("success") and not message.get("reset"):
            next_index = self._SyncObj__raftNextIndex
            sent_up_to = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if sent_up_to is not None and next_index.get(node, sent_up_to) < sent_up_to:
                # An answer to an earlier pipelined message: the entries up to sent_up_to
                # are already on their way; resending them made followers delete and
                # re-append entries they had applied.
                next_index[node] = sent_up_to
        else:
            SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _on_append_entries(self, node: Any, message: dict) -> None:
        plan = None
        if isinstance(message.get("term"), int) and message["term"] >= self.raftCurrentTerm:
            plan = plan_append_entries(self._SyncObj__raftLog, message.get("prevLogIdx"),
                                       message.get("prevLogTerm"), message.get("entries", []))
        if plan is None:
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        prev_idx, prev_term, entries, ack_next_idx = plan
        message = {**message, "prevLogIdx": prev_idx, "prevLogTerm": prev_term, "entries": entries}
        if ack_next_idx is not None:
            # Raft: commitIndex = min(leaderCommit, index of last new entry); the entries
            # after it in this log are not vouched for by this message.
            commit_index = message.get("commit_index")
            if isinstance(commit_index, int):
                message["commit_index"] = min(commit_index, ack_next_idx - 1)
        self._ack_next_idx = ack_next_idx
        try:
            SyncObj._SyncObj__onMessageReceived(self, node, message)
        finally:
            self._ack_next_idx = None

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False, nextNodeIdx: int | None = None,
                                  success: bool = False) -> None:
        if success and not reset and self._ack_next_idx is not None:
            nextNodeIdx = self._ack_next_idx  # only what the leader's message vouched for
        SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    def _applyCommand(self, command: bytes, callback: Any, commandType: int | None = None) -> None:
        # Point 12: while this node's journal cannot be written it can neither append a command
        # (leader) nor apply one it forwarded: refuse at once with the journal's StoreFullError
        # (the result dict, as a state machine refusal: RaftNode.propose raises it, HTTP 507).
        full_error = self._journal_full_now()
        if full_error is not None and callback is not None and not isinstance(callback, tuple):
            try:
                callback({"ok": False, **full_error.to_dict()}, FAIL_REASON.SUCCESS)
            except Exception:
                log.exception("proposal callback failed")
            return
        full = command if commandType is None else bytes([commandType]) + command
        if not self._acceptable(full):
            log.warning("refused a raft command that is not a replicad command (%d bytes)", len(full))
            self._SyncObj__callErrCallback(FAIL_REASON.REQUEST_DENIED, callback)
            return
        if callback is not None and not isinstance(callback, tuple):  # this node's own proposal (point 20)
            callback = self._note_own(full, callback)
            if callback is None:
                return  # applied already (through a relay): answered with its result
        elif self._SyncObj__raftState == _RAFT_STATE_LEADER and self._appended_already(full):
            return  # a second copy of a forwarded or relayed command (point 20): its entry answers
        SyncObj._applyCommand(self, full, callback)

    def _acceptable(self, full: Any) -> bool:
        entry = entry_call(full)
        return entry is not None and entry[0] in self._idToMethod

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        kind = command[:1]
        if kind == _NO_OP:
            return None
        result = None
        try:
            if kind != _REGULAR:
                log.error("skipping a raft log entry of type %r (membership/version entries are disabled)", kind)
                return None
            try:
                result = SyncObj._SyncObj__doApplyCommand(self, command)
                return result
            except Exception:
                log.exception("skipping a raft log entry that cannot be applied")
                return None
        finally:
            try:
                entry = self.take_applied_entry()  # point 21: always taken, it belongs to this entry only
                self._note_applied(command, entry)  # points 18, 22
                self._note_term_site()  # point 22 (after the entry: the state machine's lock is free)
                self._note_leader_entry(command, entry)  # point 22
                if self._withheld is not None:
                    self._withheld.applied(command)  # point 19
                if kind == _REGULAR:
                    self._own_applied(command, self._front_run_check(command, result, entry))  # points 20, 21
            except Exception:  # never let the count stop the state machine
                log.exception("raft: cannot count an applied entry against its leader")


# --------------------------------------------------------------------------- state consumer


class _StateConsumer(SyncObjConsumer):
    """Holds the cluster state; its one replicated method applies msgpack commands.

    ``trust`` (:class:`replicad.core.identity.Trust`) goes to every
    :func:`replicad.core.state.apply`; a command refused as forged, replayed, expired, naming
    a holder without its acknowledgement, past a bound or registering another site
    (``state.COUNTED_REFUSALS``), a request before the founding or a second role change too soon
    (``state.counted_reason``) is logged at WARNING (rate-limited per reason) and
    counted in ``refused`` (``replicad_command_refused_total{reason}``).

    Checkpoints (:mod:`replicad.consensus.checkpoint`): each command is applied through
    :func:`~replicad.consensus.checkpoint.advance` (``state["applied"]`` counts it) and recorded
    in ``checkpoints``; at a checkpoint, ``pending_vouch`` is set to ``(n, digest)`` for the
    Raft node to propose (never from inside the replicated method). When an applied vouch
    shows a majority for a checkpoint this site computed differently, that is logged at ERROR
    and counted in ``divergences`` (``replicad_raft_refused_total{reason="checkpoint_divergent"}``).
    """

    def __init__(self, on_applied: Callable[[dict, dict], None] | None, limits: dict | None = None,
                 trust: Trust | None = None) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.limits = limits
        self.trust = trust
        self.refused = RefusalLog()
        self.divergences = RefusalLog()
        self.initial = cluster_state.initial_state()
        if limits is not None:
            self.initial["limits"] = limits
        self.cluster = self.initial
        self.checkpoints = checkpoint.CheckpointLog.fresh(self.initial)
        self.pending_vouch: tuple[int, bytes] | None = None
        self.share = LogShare()  # point 22: what the log keeps of each signing site since its compaction
        self.on_applied = on_applied
        self.door_refused: str | None = None  # point 18: door_refusal() of the entry applied last
        self.applied_entry: tuple | None = None  # point 21: (state before, command, result, trust) of the entry applied last
        self._members_seen: Any = None  # point 18: the agreed membership as of the entry applied last
        self._since_change = DEPOSE_GRACE_ENTRIES  # entries applied since it changed
        self.founds_noted = 0  # founds before the founding noted (note_found), at most FOUNDS_SEEN_MAX
        self._founds_latest: dict[str, tuple[bytes, bytes, bool]] = {}  # by: (members digest, id, refused)
        self.founder_candidates: dict[bytes, str] = {}  # incarnation id: the refused proposer among its makers

    def set_initial_limits(self, limits: dict) -> None:
        """Start from an initial state with ``limits`` (``RaftNode._pin_initial_limits``);
        only before anything was applied."""
        with self.lock:
            self.limits = limits
            self.initial = {**cluster_state.initial_state(), "limits": limits}
            self.cluster = self.initial
            self.checkpoints = checkpoint.CheckpointLog.fresh(self.initial, self.checkpoints.every)

    @replicated
    def apply_command(self, payload: bytes) -> dict:
        """Apply one msgpack command. Runs on the tick thread of every node; never raises."""
        with self.lock:
            before = self.cluster
            new_state, result, command = checkpoint.advance(before, payload, self.trust)
            self.cluster = new_state
            if not share_exempt(command, len(payload)):
                by = command.get("by") if isinstance(command, dict) else None
                if result.get("error") in cluster_state.IDENTITY_REFUSALS or copy_of_applied(before, command, result):
                    # R17 F1: a forgery or a copy of an applied command is not its `by`'s doing
                    by = self.appender() if self.appender is not None else None
                self.share.note(by, len(payload))
            try:
                point = self.checkpoints.record(new_state, payload)
            except Exception:  # a checkpoint must never stop the state machine
                log.exception("raft checkpoints: cannot record a checkpoint")
                point = None
            if point is not None:
                self.pending_vouch = point
            divergent = []
            if result.get("ok") and isinstance(command, dict) and command.get("op") == "vouch":
                divergent = self.checkpoints.divergent(new_state, self.trust)
        for n, ours, theirs, sites in divergent:
            self.divergences.refuse("checkpoint_divergent", "sites %s vouched the state after %d commands as %s; this "
                                    "site computed %s: its state differs from the majority's (a bug, a mixed-version "
                                    "cluster or a state installed by a lying leader): rebuild this site's Raft state "
                                    "(README, \"Raft dump damaged\")", sites, n, theirs.hex()[:16], ours.hex()[:16],
                                    level=logging.ERROR)
        if cluster_state.counted_reason(result) is not None:
            self._count_refusal(command, result)
        self.note_found(before, command, result)
        self.door_refused = None if result.get("ok") else door_refusal(before, payload, self.trust)
        self.applied_entry = (before, command, result, self.trust)
        if self.door_refused == "bad_signature" and self._since_change < DEPOSE_GRACE_ENTRIES:
            self.door_refused = None  # the leader may have door-checked it under the former keys
        self.track_membership(new_state)
        if self.on_applied is not None:
            try:
                self.on_applied(command if isinstance(command, dict) else {}, result)
            except Exception:
                log.exception("on_applied callback failed")
        return result

    def share_over(self, site: Any, factor: float = 1.0) -> tuple[int, int] | None:
        """Point 22: :meth:`LogShare.over` of the share now kept (any thread)."""
        return self.share.over(site, factor)

    def take_applied_entry(self) -> tuple | None:
        """Point 21 (tick thread): :attr:`applied_entry` of the entry applied last, then None."""
        entry, self.applied_entry = self.applied_entry, None
        return entry

    def take_door_refusal(self) -> str | None:
        """Point 18 (tick thread): :attr:`door_refused` of the entry applied last, then None."""
        reason, self.door_refused = self.door_refused, None
        return reason

    def track_membership(self, state: dict, installed: bool = False) -> None:
        """Point 18: restart the grace of :data:`DEPOSE_GRACE_ENTRIES` when ``state``'s agreed
        membership (its keys) differs from the one of the entry applied before. A full state
        ``installed`` (a dump) as the first state this process sees sets the reference only."""
        inc = state.get("incarnation") if isinstance(state, dict) else None
        members = inc.get("members") if isinstance(inc, dict) else None
        if installed and self._members_seen is None:
            self._members_seen = members
            return
        changed = members is not self._members_seen and members != self._members_seen
        self._members_seen = members
        self._since_change = 0 if changed else min(self._since_change + 1, DEPOSE_GRACE_ENTRIES)

    appender: Callable[[], str | None] | None = None
    """Set by the Raft node (point 22, :meth:`_HardenedSyncObj.appender_site`): the site of the leader that
    appended the entry being applied, charged with it when the state machine refuses it for its identity
    (called under :attr:`lock`: it must not take it)."""
    leader_of: Callable[[], str] | None = None
    """Set by the Raft node (tick thread): the leader this node follows, as text, for a forged
    ``found``'s ERROR line (:meth:`_count_refusal`)."""
    founds_unpinned = 0
    """``found`` commands applied here and refused as not signed with the key the founding
    reference pins for their proposer (``state.FOUND_UNPINNED``), since this process started:
    before it joins, the daemon then compares its founding with the members' reports
    (:meth:`RaftNode.founds_unpinned`)."""

    def note_found(self, before: Any, command: Any, result: dict) -> None:
        """For :meth:`RaftNode.refused_founder_of` (attacker review r15, F1): replay the ``found``
        applied to a state not founded yet, counted or refused for its key
        (``state.FOUND_UNPINNED``), as if the refused ones had counted: each site's latest
        proposal is kept, and every set of sites whose latest proposals name the same members as
        this one, with it and holding a refused one, gives the incarnation ``state._op_found``
        would derive from them (BLAKE2b-128 of their random ids, in site order), kept in
        :attr:`founder_candidates` with the refused proposer. The founders adopted their
        incarnation at one such step, so a site whose log started after a founder's key was
        retired (``state.founding_keys``) finds the reported incarnation there; a site the
        founding was withheld from, never. At most :data:`FOUNDS_SEEN_MAX` ``found`` commands,
        :data:`FOUNDERS_SCANNED` other sites a set, :data:`FOUNDER_CANDIDATES_MAX` ids. Never raises."""
        try:
            if not isinstance(command, dict) or command.get("op") != "found" or not isinstance(before, dict) \
                    or before.get("incarnation") is not None or self.founds_noted >= FOUNDS_SEEN_MAX:
                return
            evidence = result.get("evidence") if isinstance(result.get("evidence"), dict) else {}
            refused = evidence.get("refusal") == cluster_state.FOUND_UNPINNED
            by, inc = command.get("by"), command.get("incarnation")
            if not (result.get("ok") or refused) or not isinstance(by, str) or not isinstance(inc, bytes):
                return
            self.founds_noted += 1
            members = hashlib.blake2b(repr(command.get("members")).encode(), digest_size=16).digest()
            latest = self._founds_latest
            latest[by] = (members, inc, refused)
            # the founders may be fewer than the sites proposing that list here (a proposal dropped
            # by a founding under rules, or one by a site outside the configured ones)
            others = sorted(site for site, p in latest.items() if p[0] == members and site != by)[:FOUNDERS_SCANNED]
            if not refused and not any(latest[site][2] for site in others):
                return
            for size in range(1, len(others) + 1):
                for chosen in itertools.combinations(others, size):
                    sites = sorted((by, *chosen))
                    owner = next((site for site in sites if latest[site][2]), None)
                    if owner is None or len(self.founder_candidates) >= FOUNDER_CANDIDATES_MAX:
                        continue
                    made = hashlib.blake2b(b"".join(latest[site][1] for site in sites),
                                           digest_size=cluster_state.INCARNATION_BYTES).digest()
                    self.founder_candidates.setdefault(made, owner)
        except Exception:
            log.exception("cannot note a found")

    def _count_refusal(self, command: Any, result: dict) -> None:
        try:
            fields = command if isinstance(command, dict) else {}
            evidence = result.get("evidence") if isinstance(result.get("evidence"), dict) else {}
            if evidence.get("refusal") == cluster_state.FOUND_UNPINNED:  # r14 A1: a found in another site's name
                self.founds_unpinned += 1
                leader = self.leader_of() if self.leader_of is not None else "not known here"
                self.refused.refuse(
                    str(cluster_state.counted_reason(result)),
                    "a found (op id %r) in the name of site %r, not signed with the key this site's [[sites]] "
                    "pins for it, was appended to the Raft log (leader %s): a site forging another site's "
                    "founding proposal, or configs that differ; it does not count. README \"A site is compromised\"",
                    str(fields.get("op_id"))[:64], str(fields.get("by"))[:64], leader,
                    level=logging.ERROR, prefix="raft command refused")
                return
            self.refused.refuse(str(cluster_state.counted_reason(result)),
                                "command %s by %r (op id %r) in the Raft log refused: %s",
                                str(fields.get("op"))[:40], str(fields.get("by"))[:64],
                                str(fields.get("op_id"))[:64], str(result.get("message"))[:300],
                                prefix="raft command refused")
        except Exception:
            log.exception("cannot log a refused command")


def _dump_position(document: Any) -> tuple:
    """pysyncobj's ``(last, prev, cluster)`` of a decoded dump. Raises RemoteProtocolError."""
    try:
        last = (bytes(document["last"][0]), int(document["last"][1]), int(document["last"][2]))
        prev = (bytes(document["prev"][0]), int(document["prev"][1]), int(document["prev"][2]))
        cluster = {TCPNode(addr) for addr in document["cluster"]}
    except Exception as exc:
        raise errors.RemoteProtocolError(f"raft dump without a log position: {type(exc).__name__}") from None
    return last, prev, cluster


def _first_journal_index(path: Path) -> int | None:
    """The index of the first record of a journal file, or None (absent, empty, unreadable:
    the journal itself reports those when it opens)."""
    from replicad.consensus.journal import _PAYLOAD_HEAD, _record_at
    try:
        with open(path, "rb") as f:
            data = f.read(len(JOURNAL_MAGIC) + 4 + 8 + _PAYLOAD_HEAD.size + MAX_COMMAND_BYTES * 3)
    except OSError:
        return None
    record = _record_at(data, len(JOURNAL_MAGIC) + 4)
    return None if record is None else record[0]


# --------------------------------------------------------------------------- RaftNode


class RaftNode:
    """One site's Raft member replicating :mod:`replicad.core.state`.

    Args:
        self_addr: ``"host:port"`` of this node's Raft port, as the partners know it.
        partner_addrs: the other members' ``"host:port"``.
        data_dir: directory for ``raft.journal``, ``raft.journal.meta`` and ``raft.dump``.
        password: shared cluster secret (pysyncobj Fernet encryption + authentication).
        bind_host: host to bind instead of ``self_addr``'s host (the port stays the same).
        on_applied: ``(command, result)`` called on the tick thread after each applied
            command, including commands replayed from the journal after a restart.
        compaction_min_entries: log entries that trigger a full dump + log compaction.
        needs_leader: called on the tick thread (must be cheap, never block): True while this
            node must be able to commit (a volume primary); see point 7 of the module doc.
        members: the site ids of every configured site (``[[sites]]``); when given, only they
            may ever be registered in the state (``replicad.core.state`` limits). Every site
            must pass the same list.
        max_sites: cap on registered sites; default the Raft group's size (every site is a
            Raft member), at most ``state.SITES_MAX``.
        trust: the cluster id and policy every applied command is checked under, with the
            config's pinned keys (:class:`replicad.core.identity.Trust`, ``SiteConfig.trust()``):
            once the cluster is founded, ``apply`` checks signatures against the keys the
            state's agreed membership records, not these (so a config change never changes a
            replay); the keys still authenticate the Raft channel and anchor the vouches of a
            received dump. None: no identity checks (tests of the Raft layer only).
        signer: this site's identity; :meth:`propose` signs each command with it (a
            command that already carries ``sig`` is sent as it is). None: unsigned.
        sites: ``{raft "host:port": site_id}`` of every member, this one included
            (``[[sites]]``). With ``trust.keys`` set, every Raft connection is bound to one
            site by a signed handshake (:mod:`replicad.consensus.channel`) and the Raft
            state's revocations cut revoked sites off the network; that needs ``signer`` and
            every member's address here.
        joining: this site joins an existing cluster (``[raft] join``): an empty log starts
            from ``limits(joining=True)`` (:meth:`_pin_initial_limits`); ignored once the log
            has entries.

    Raises:
        errors.ConfigError: empty password; a signed ``trust`` without ``signer``, or a
            member address missing from ``sites``.
    """

    def __init__(self, self_addr: str, partner_addrs: Sequence[str], data_dir: Path, password: str,
                 *, bind_host: str | None = None, on_applied: Callable[[dict, dict], None] | None = None,
                 compaction_min_entries: int = 5000, needs_leader: Callable[[], bool] | None = None,
                 members: Sequence[str] | None = None, max_sites: int | None = None,
                 trust: Trust | None = None, signer: Signer | None = None,
                 sites: dict[str, str] | None = None, joining: bool = False) -> None:
        if not password:
            raise errors.ConfigError("raft password must be set", problems=["raft.password: empty"])
        sites = dict(sites or {})
        if trust is not None and trust.keys is not None:
            missing = [a for a in (self_addr, *partner_addrs) if a not in sites]
            if signer is None or missing:
                problem = ("identity: a signed cluster's Raft channel needs this site's key" if signer is None
                           else f"sites: no site id for the Raft addresses {missing}")
                raise errors.ConfigError(f"invalid configuration: {problem}", problems=[problem])
        revoked_seen: list = [None, Revocations()]

        def revocations() -> Revocations:  # tick thread: recomputed only when the state's entry changed
            entry = self.view().get("revoked")
            if entry is not revoked_seen[0]:
                revoked_seen[:] = [entry, revocations_of({"revoked": entry})]
            return revoked_seen[1]

        self._channel = ChannelIdentity(trust=trust, signer=signer, sites_by_addr=sites, revoked=revocations)
        self._channel_sites = dict(sites)
        self._joining = joining
        self._self_addr = self_addr
        self._partners = [a for a in partner_addrs if a != self_addr]
        self._data_dir = Path(data_dir)
        self._password = password
        port = self_addr.rsplit(":", 1)[1]
        self._bind_addr = f"{bind_host}:{port}" if bind_host else self_addr
        self._compaction_min_entries = max(2, compaction_min_entries)
        self._needs_leader = needs_leader or (lambda: False)
        limits = cluster_state.limits(members, max_sites=len(self._partners) + 1 if max_sites is None else max_sites,
                                      keys=trust.keys if trust is not None else None)
        self._consumer = _StateConsumer(on_applied, limits, trust)  # consumer pattern: built before SyncObj
        self._signer = signer
        self._refusals = RefusalLog()
        self._share_said = float("-inf")  # point 22: when the own-share ERROR was last logged (monotonic)
        self._syncobj: _HardenedSyncObj | None = None
        self._dump_error: str | None = None
        self._status_lock = threading.Lock()
        self._status: dict = self._empty_status()
        self._forward_budget = MemberBudget(FORWARD_CMDS_PER_S, FORWARD_BYTES_PER_S, FORWARD_BURST_S, max_keys=None,
                                            debt=(1.0, float(MAX_COMMAND_BYTES)))
        self._clock_rate = ClockRate()  # r13 F3: forwarded per member, relayed per member and site (leader)
        self._clock_pass = ClockRate(CLOCK_PER_S / 2, CLOCK_BURST / 2)  # relayed clocks a follower passes on, per site
        self._ops_rate = ClockRate(OPS_PER_S, OPS_BURST)  # point 22: ops outside ROUTINE_OPS, keyed as clocks
        self._ops_pass = ClockRate(OPS_PER_S / 2, OPS_BURST / 2)
        self._dump_installs = 0  # full states received from a leader and installed since start

    # -- lifecycle
    def start(self) -> None:
        """Open the journal, bind the Raft port and start the tick thread. Idempotent.

        Raises:
            errors.StoreFullError / errors.InternalError: the data dir cannot be prepared.
            errors.RemoteProtocolError: the journal or meta has an unknown format.
        """
        if self._syncobj is not None:
            return
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.from_os_error(exc, "creating the raft data dir") from exc
        self._pin_initial_limits()  # before anything is applied: the log's first state
        self._check_local_dump()  # point 14: never run from an empty state over a compacted journal
        self._dump_at_start = (self._data_dir / "raft.dump").exists()  # loaded on the first tick (on_installed)
        conf = SyncObjConf(
            password=self._password,
            journalFile=str(self._data_dir / "raft.journal"),
            fullDumpFile=str(self._data_dir / "raft.dump"),
            serializer=self._serialize_dump,
            deserializer=self._deserialize_dump,
            appendEntriesUseBatch=False,
            bindAddress=self._bind_addr,
            dynamicMembershipChange=False,
            logCompactionMinEntries=self._compaction_min_entries,
            connectionRetryTime=REDIAL_S,
        )
        try:
            with transport_identity(self._channel):  # pysyncobj builds the transport inside SyncObj.__init__
                syncobj = _HardenedSyncObj(self._self_addr, self._partners, conf=conf, consumers=[self._consumer],
                                           refusals=self._refusals, dump_check=self._check_dump)
        except OSError as exc:
            raise errors.from_os_error(exc, "opening the raft journal") from exc
        syncobj._started_at = monotonic_time()  # a fresh node has heard from no leader *yet*
        syncobj.needs_leader = self._needs_leader
        syncobj.membership_of_state = self._membership_of_state
        syncobj.door_check = self._door_check
        syncobj.take_door_refusal = self._consumer.take_door_refusal
        syncobj.share_over = self._consumer.share_over
        syncobj.take_applied_entry = self._consumer.take_applied_entry
        self._consumer.appender = syncobj.appender_site
        self._consumer.leader_of = self._leader_text
        syncobj.site_of = self._site_of
        syncobj.relay_check = self._relay_check
        self._syncobj = syncobj
        self._syncobj.addOnTickCallback(self._refresh_status)

    # -- point 17
    def _door_check(self, command: Any, node_id: str) -> tuple[str, str] | None:
        """Tick thread: ``(reason, detail)`` when the ``apply_command`` payload ``command`` that
        member ``node_id`` forwarded must not be appended (point 17, :meth:`_door_problem`; then a
        ``clock`` past its site's rate, :meth:`_clock_check`), else None."""
        return self._door_problem(command, node_id) or self._clock_check(command, node_id, relayed=False) \
            or self._ops_check(command, node_id, relayed=False)

    def _clock_check(self, command: Any, node_id: str, relayed: bool) -> tuple[str, str] | None:
        """Attacker review r13, F3 (tick thread): a ``clock`` command that passed the door (point 17)
        or the relay check (point 20) past its site's rate (:class:`~replicad.consensus.guard.ClockRate`,
        :data:`~replicad.consensus.guard.CLOCK_PER_S`) is refused: ``forwarded_clock_over_rate`` per
        forwarding member (it forwards only its own site's), ``relay_clock_over_rate`` per sending
        member and signing site at a leader, per signing site at a follower passing relays on (at half
        the rate: the leader never refuses what an honest follower passes on and watches). None
        for any other command."""
        entry = entry_call(command)
        decoded = None if entry is None else checkpoint.decode_command(entry[1])
        if not isinstance(decoded, dict) or decoded.get("op") != "clock":
            return None
        by, now = str(decoded.get("by"))[:64], monotonic_time()
        if relayed and self._checked_command(command)[1] is None:
            # unsigned or not founded yet: nothing checked ``by`` (point 20), so a relaying member
            # could name any number of made-up sites; one key per sending member (r2 F1)
            by = "*"
        if not relayed:
            return None if self._clock_rate.take(node_id, now) else \
                ("forwarded_clock_over_rate", self._clock_rate.detail(f"member {node_id} (site {by!r})"))
        syncobj = self._syncobj
        if syncobj is None or syncobj._SyncObj__raftState == _RAFT_STATE_LEADER:
            return None if self._clock_rate.take(f"{node_id} {by}", now) else \
                ("relay_clock_over_rate", self._clock_rate.detail(f"site {by!r} relayed by member {node_id}"))
        return None if self._clock_pass.take(by, now) else \
            ("relay_clock_over_rate", self._clock_pass.detail(f"site {by!r} relayed through this follower"))

    def _ops_check(self, command: Any, node_id: str, relayed: bool) -> tuple[str, str] | None:
        """Point 22 (attacker review R16 F2, tick thread): a command of an op outside
        :data:`ROUTINE_OPS` that passed the door (point 17) or the relay check (point 20) past
        :data:`OPS_PER_S` is refused, keyed as :meth:`_clock_check` keys ``clock`` commands:
        ``forwarded_ops_over_rate`` per forwarding member, ``relay_ops_over_rate`` per sending member
        and signing site at a leader, per signing site at a follower passing relays on (at half the
        rate). None for a routine op or a command that is not a map."""
        entry = entry_call(command)
        decoded = None if entry is None else checkpoint.decode_command(entry[1])
        if not isinstance(decoded, dict) or decoded.get("op") in ROUTINE_OPS:
            return None
        by, now, op = str(decoded.get("by"))[:64], monotonic_time(), str(decoded.get("op"))[:40]
        if relayed and self._checked_command(command)[1] is None:
            by = "*"  # unsigned or not founded: ``by`` unchecked (as for clock, r2 F1)
        text = (f"more commands outside the routine ops (this one: {op!r}) than {OPS_PER_S:g} a second "
                f"(bursts of {OPS_BURST}); refused")
        if not relayed:
            return None if self._ops_rate.take(node_id, now) else \
                ("forwarded_ops_over_rate", f"member {node_id} (site {by!r}): {text}")
        syncobj = self._syncobj
        if syncobj is None or syncobj._SyncObj__raftState == _RAFT_STATE_LEADER:
            return None if self._ops_rate.take(f"{node_id} {by}", now) else \
                ("relay_ops_over_rate", f"site {by!r} relayed by member {node_id}: {text}")
        return None if self._ops_pass.take(by, now) else \
            ("relay_ops_over_rate", f"site {by!r} relayed through this follower: {text}")

    def _door_problem(self, command: Any, node_id: str) -> tuple[str, str] | None:
        """Point 17 (tick thread): ``(reason, detail)`` when the forwarded ``command`` must not be
        appended, else None. Charges the member's budget for every command, refused or not."""
        size = len(command) if isinstance(command, (bytes, bytearray)) else 0
        if not self._forward_budget.take(node_id, size, monotonic_time()):
            return ("forwarded_over_budget", f"forwarded more than {FORWARD_CMDS_PER_S:.0f} commands or "
                    f"{FORWARD_BYTES_PER_S // 1024} KiB a second (bursts of {FORWARD_BURST_S:.0f} s)")
        decoded, state, trust = self._checked_command(command)
        if decoded is None:
            return "forwarded_malformed", f"a forwarded command that is not a replicad command ({size} bytes)"
        if state is None:
            return None  # unsigned cluster: the password is the only identity; founding: only found
            # commands, each checked against its own list when applied
        forwarder = next((m["site_id"] for m in state["incarnation"]["members"] if m["raft"] == node_id), None)
        by = decoded.get("by")
        if by != forwarder:
            return ("forwarded_not_own", f"a command by {str(by)[:40]!r} forwarded by the member of "
                    f"{forwarder!r}: members forward only their own site's commands")
        problem = signature_refusal(state, decoded, trust)  # shared with point 18's counting rule
        if problem is not None:
            return "forwarded_bad_signature", f"{str(decoded.get('op'))[:40]} by {by!r}: {problem}"
        held = None if share_exempt(decoded, size) else self._consumer.share_over(by)
        if held is not None:  # point 22
            return ("forwarded_over_share", f"member {node_id} (site {by!r}): the log kept since the last compaction "
                    f"holds {held[0]} of its commands, {held[1] / 2**20:.1f} MiB, over a site's share "
                    f"({LOG_SHARE_ENTRIES} commands or {LOG_SHARE_BYTES // 2**20} MiB) while no checkpoint a "
                    f"majority vouched lets the log compact (see the ERROR \"not compacting the log\")")
        return None

    _forward_budget: MemberBudget  # per member node id, tick thread only

    def _checked_command(self, command: Any) -> tuple[dict | None, dict | None, Trust | None]:
        """Points 17 and 20, tick thread: ``(decoded, state, trust)`` for the payload ``command`` of an
        ``apply_command`` or ``relay_command`` (a regular pysyncobj entry of our one method):
        ``decoded`` the replicad command map it carries, or None (then all three are None); ``state``
        (the applied cluster state, :meth:`view`) and ``trust`` only in a signed cluster with an
        agreed membership, where sites and signatures are checked; else both None (unsigned: the
        password is the only identity; founding: only found commands, checked when applied)."""
        entry = entry_call(command)
        decoded = None if entry is None else checkpoint.decode_command(entry[1])
        if not isinstance(decoded, dict):
            return None, None, None
        trust = self._consumer.trust
        if trust is None or trust.keys is None:
            return decoded, None, None
        state = self.view()
        if state.get("incarnation") is None:
            return decoded, None, None
        return decoded, state, trust

    # -- point 20
    def _relay_check(self, command: Any, node_id: str) -> tuple[str, str] | None:
        """Tick thread: :meth:`_relay_problem`, then a ``clock`` past its site's rate (:meth:`_clock_check`)."""
        return self._relay_problem(command, node_id) or self._clock_check(command, node_id, relayed=True) \
            or self._ops_check(command, node_id, relayed=True)

    def _relay_problem(self, command: Any, node_id: str) -> tuple[str, str] | None:
        """Tick thread: why the ``relay_command`` payload ``command`` (a regular pysyncobj entry of our
        one method) that member ``node_id`` sent must not be appended or passed on: ``relay_malformed``
        (no command map), and in a signed cluster with an agreed membership ``relay_not_member``
        (``by`` is no member), ``relay_own_site`` (``by`` is this site: its commands are its own
        business), ``relay_bad_signature`` (does not verify under the keys the state gives ``by``,
        a key revoked through Raft, or signed for another cluster) and ``known`` (not counted: its op
        id was applied already, or it is older than the replay window; an honest member can relay
        a command that just committed; at a follower also: stamped within
        :data:`RELAY_EXPIRY_MARGIN_NS` of the window's end, or signed by the site of the leader it
        follows — the leader refuses both, and a watched command the leader refuses would depose an
        honest leader). None: append it, or pass it on."""
        decoded, state, trust = self._checked_command(command)
        if decoded is None:
            return "relay_malformed", f"a relayed command that is not a replicad command ({len(command)} bytes)"
        if state is None:
            return None  # unsigned cluster or founding: the password is the only identity
        by = decoded.get("by")
        if not isinstance(by, str) or by not in {m["site_id"] for m in state["incarnation"]["members"]}:
            return "relay_not_member", f"a relayed command by {str(by)[:40]!r}, which is not a member"
        if by == self._site_of(self._self_addr):
            return "relay_own_site", f"a command of this site ({by!r}) relayed to it"
        problem = signature_refusal(state, decoded, trust)
        if problem is None and decoded.get(identity.CLUSTER_FIELD) != trust.cluster_id:
            problem = "signed for another cluster"
        if problem is not None:
            return "relay_bad_signature", f"{str(decoded.get('op'))[:40]} by {by!r}: {problem}"
        try:
            cluster_state._check_fresh(state, decoded, trust)
        except Exception:  # replayed or expired (or fields it cannot read): nothing to relay
            return "known", "applied already or too old"
        syncobj = self._syncobj
        if syncobj is None or syncobj._SyncObj__raftState == _RAFT_STATE_LEADER:
            return None  # the leader appends what is fresh by its own clock (no margin: see below)
        quorum_now, now_ns = cluster_state.quorum_now_ns(state), decoded.get("now_ns")
        if quorum_now is not None and isinstance(now_ns, int) \
                and now_ns < quorum_now - trust.replay_window_ns + RELAY_EXPIRY_MARGIN_NS:
            # a follower: the leader might refuse it as expired before this node's watch ran out,
            # and watched, it would depose an honest leader (a member holding an old, never applied
            # command); the margin is the follower's only, so a leader never refuses what a follower
            # a little behind it passed on
            return "known", "too close to the end of the replay window"
        leader = syncobj._SyncObj__raftLeader
        if leader is not None and leader != syncobj._SyncObj__selfNode and by == self._site_of(leader.id):
            # the leader's own command, relayed by a third member: the leader refuses it
            # (relay_own_site) and appends its own commands itself; watched, it would depose it
            return "known", "a command of the leader's own site"
        return None

    def founds_unpinned(self) -> int:
        """How many ``found`` commands this node applied and refused since it started because they
        were not signed with the key its founding reference pins for their proposer (a forged one,
        or one its log started too late to judge as the founders did: ``state.founding_keys``)."""
        return self._consumer.founds_unpinned

    def refused_founder_of(self, incarnation: bytes) -> str | None:
        """The site whose ``found``, refused here for its key (:meth:`founds_unpinned`), counts
        among the founders of ``incarnation`` (16 bytes, what a majority of the members report),
        or None (:meth:`_StateConsumer.note_found`: the ``found`` commands this node applied
        before its founding replayed as if the refused ones had counted). A site is named in the
        founding-replay gap (a founder's key retired from this config while a log still holds the
        founding: ``state.founding_keys``); None when this node never applied the proposals that
        founded ``incarnation`` (a leader withholding them, or a log not caught up). Never raises."""
        return self._consumer.founder_candidates.get(incarnation)

    def founding_unpinned_log(self) -> bool:
        """True when this node's log was started by an older release, so it pins no founding keys
        (``state.FOUNDING_KEYS`` None in its initial limits: ``raft.limits`` without keys, or no
        file): a ``found`` before the founding is then decided self-certifying, as that release
        decided it (:meth:`_pin_initial_limits`). False in unsigned mode."""
        limits = self._consumer.initial.get("limits")
        return (self._consumer.trust is not None and self._consumer.trust.keys is not None
                and isinstance(limits, dict) and cluster_state.FOUNDING_KEYS in limits
                and limits[cluster_state.FOUNDING_KEYS] is None)

    def leader_text(self) -> str:
        """The leader this node follows, ``ADDRESS (site ID)`` by this config's ``[[sites]]``, or
        ``not known here`` (:meth:`_leader_text`). Never raises."""
        return self._leader_text()

    def _leader_text(self) -> str:
        """Tick thread: the leader this node follows, ``ADDRESS (site ID)`` by this config's
        ``[[sites]]``, or ``not known here``. Never raises, never takes the state lock."""
        syncobj = self._syncobj
        leader = syncobj._SyncObj__raftLeader if syncobj is not None else None
        if leader is None:
            return "not known here"
        return f"{leader.id} (site {self._channel_sites.get(leader.id, '?')})"

    def _site_of(self, node_id: str) -> str | None:
        """The site of Raft member ``node_id`` (its address): the agreed membership's, else the config's."""
        inc = self.view().get("incarnation") or {}
        found = next((m["site_id"] for m in inc.get("members") or () if m.get("raft") == node_id), None)
        return found if found is not None else self._channel_sites.get(node_id)

    # -- point 16
    def _membership_of_state(self) -> dict | None:  # tick thread
        inc = self.view().get("incarnation")
        return None if inc is None else {"incarnation": inc["id"], "members": inc["members"]}

    def ask_membership(self, on: bool) -> None:
        """Start (``on``) or stop asking every connected member for the membership its applied
        state agreed (point 16 of the module docstring). Idempotent; never blocks."""
        syncobj = self._syncobj
        if syncobj is not None:
            syncobj.asks_membership = on
            if not on:
                syncobj.membership_reports = None

    def membership_reports(self) -> dict[str, dict]:
        """``{member raft address: {"incarnation": bytes, "members": [member dict]}}``: what
        each member answered within :data:`MEMBERSHIP_REPORT_TTL_S` while :meth:`ask_membership`
        is on (each entry is that member site's word: the channel binds connections to sites).
        Shapes are checked (:func:`replicad.consensus.guard.shape_problem`); {} when none."""
        syncobj = self._syncobj
        reports = (syncobj.membership_reports if syncobj is not None else None) or {}
        now = monotonic_time()
        return {node: report for node, (report, when) in reports.items() if now - when <= MEMBERSHIP_REPORT_TTL_S}

    def close(self) -> None:
        """Stop the tick thread and close the journal and sockets. Idempotent."""
        syncobj, self._syncobj = self._syncobj, None
        if syncobj is not None:
            syncobj.destroy_synchronous()

    # -- dump (points 3 and 14)
    def set_checkpoint_interval(self, every: int) -> None:
        """Checkpoint every ``every`` applied commands instead of
        :data:`~replicad.consensus.checkpoint.CHECKPOINT_EVERY` (tests use a small one).
        Call before :meth:`start`; every site must use the same, or no checkpoint is ever
        vouched by a majority and no site compacts its log.

        Raises:
            errors.InternalError: the node is already started.
            ValueError: ``every`` < 1.
        """
        if self._syncobj is not None:
            raise errors.InternalError("the checkpoint interval is set before the raft node starts")
        with self._consumer.lock:
            self._consumer.checkpoints = checkpoint.CheckpointLog.fresh(self._consumer.initial, every)

    def _serialize_dump(self, tmp_file: str, raft_data: tuple) -> None:
        """Write the v2 dump (:func:`replicad.consensus.checkpoint.dump_document`) of the state at
        pysyncobj's last applied entry to ``tmp_file`` in file format 3 (a BLAKE3 checksum of the
        msgpack body: :mod:`replicad.consensus.dumpfile`), fsync'ed. Tick thread.

        Raises:
            checkpoint.NotCompacting: no vouched checkpoint is kept here; pysyncobj then
                keeps its log (logged at ERROR at most once a minute).
            OSError: the file cannot be written (pysyncobj keeps its log too).
        """
        last, prev, cluster = raft_data
        with self._consumer.lock:
            current, points = self._consumer.cluster, self._consumer.checkpoints
            try:
                document = checkpoint.dump_document(points, current, self._consumer.trust, last, prev,
                                                    sorted(str(getattr(n, "id", n)) for n in cluster))
            except checkpoint.NotCompacting as exc:
                now = time.monotonic()
                if now - self._not_compacting_logged >= 60.0:
                    self._not_compacting_logged = now
                    log.error("raft: not compacting the log (it keeps growing until a majority vouches a checkpoint "
                              "kept here): %s; the log kept since the last compaction, per signing site: %s (each "
                              "site's share: %d commands or %d MiB, beyond which its commands are refused, point 22)",
                              exc, self._consumer.share.text(), LOG_SHARE_ENTRIES, LOG_SHARE_BYTES // 2**20)
                raise
            self._consumer.share.reset()  # point 22: pysyncobj drops the log up to here once this is written
        with open(tmp_file, "wb") as f:
            f.write(dumpfile.encode(document))  # format 3: BLAKE3 of the body in the header
            f.flush()
            os.fsync(f.fileno())

    def _pin_initial_limits(self) -> None:
        """Replay this node's log from the initial state it started from, not from one rebuilt from
        today's config: the initial state's ``limits`` (configured site ids, max sites) decide
        how the commands before the cluster's founding apply (``found`` adoption needs a
        majority of the configured sites), and a config changed since (a witness added or
        removed through ``set_members``) must not change that history on replay, or this
        site's state and checkpoint digests would differ from the other sites' (the state
        drops ``limits`` when a list is adopted; what follows depends on the state alone).

        The limits are kept in ``data_dir/raft.limits`` (JSON, written atomically with fsync)
        when the log starts empty (no journal, no dump) and read back at every later start.
        A node without the file but with a log (written before the file existed) pins its
        config's limits. Unreadable file: the config's limits, logged at WARNING. A site that
        joins an existing cluster (``joining``, ``[raft] join``) starts an empty log from
        ``limits(joining=True)``: its config names sites added since the founding, which must
        not change how the founders' ``found`` commands apply (it replays an agreed founding
        exactly as its founders applied it). The limits carry the config's ``[[sites]]`` keys
        (``state.FOUNDING_KEYS``: a ``found`` before the founding counts only signed with the key
        pinned for its proposer, r14 A1), pinned in the file the same way, so a key rotated
        since the log started does not change how its founding replays; a file written before
        they existed pins ``None`` there (that log's founding replays as the release that wrote
        it decided it).

        Raises:
            errors.StoreFullError / errors.InternalError: the file cannot be written.
        """
        consumer = self._consumer
        if consumer.limits is None:
            return
        path = self._data_dir / "raft.limits"
        fresh = not (self._data_dir / "raft.journal").exists() and not (self._data_dir / "raft.dump").exists()
        if path.exists() and not fresh:
            try:
                pinned = json.loads(path.read_text())
                limits = cluster_state.limits(pinned["members"], pinned["max_sites"], bool(pinned.get("joining")))
                if cluster_state.FOUNDING_KEYS in (consumer.limits or {}):  # a signed site: its founding key reference
                    keys = pinned.get(cluster_state.FOUNDING_KEYS)
                    if keys is not None and not (isinstance(keys, dict) and all(
                            isinstance(k, list) and all(isinstance(t, str) for t in k) for k in keys.values())):
                        raise ValueError(f"{cluster_state.FOUNDING_KEYS} is not a map of key lists")
                    limits[cluster_state.FOUNDING_KEYS] = keys
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("raft: %s unreadable (%s): replaying with this config's limits", path, exc)
                return
            if limits != consumer.limits:
                log.info("raft: replaying this log from the limits it started with (%s, at most %d sites), not this "
                         "config's (%s): the membership or its keys changed since through set_members, or an older release "
                         "started the log", limits["members"],
                         limits["max_sites"], consumer.limits["members"])
            consumer.set_initial_limits(limits)
            return
        if fresh and self._joining:
            log.info("raft: this site joins an existing cluster ([raft] join): it replays the cluster's founding "
                     "without its own config's site list as reference (its pinned keys still refuse a found in a "
                     "configured site's name signed with another key)")
            consumer.set_initial_limits(cluster_state.limits(joining=True, keys=self._consumer.trust.keys
                                                             if self._consumer.trust is not None else None))
        elif not fresh and cluster_state.FOUNDING_KEYS in consumer.limits:
            # a log without the file (written before it existed): its founding was decided without a key reference
            consumer.set_initial_limits({**consumer.limits, cluster_state.FOUNDING_KEYS: None})
        try:
            write_durably(path, json.dumps(consumer.limits).encode())
        except OSError as exc:
            raise errors.from_os_error(exc, f"writing {path}") from exc

    _not_compacting_logged = float("-inf")
    _verified: tuple | None = None  # (document key, state, checkpoints) of the dump verified last

    def _verify(self, document: Any) -> tuple[dict, checkpoint.CheckpointLog]:
        """Verify a decoded dump (v2; a v1 dump only in unsigned mode, which vouches nothing).

        Raises:
            errors.DumpRefusedError: see :func:`replicad.consensus.checkpoint.verify_dump`.
        """
        consumer = self._consumer
        if isinstance(document, dict) and document.get("v") == 1 and isinstance(document.get("state"), dict) \
                and checkpoint.voters(consumer.trust)[1] == 0:
            state = document["state"]
            if "limits" not in state and consumer.limits is not None:
                state = {**state, "limits": consumer.limits}  # a dump written before limits existed
            document = {"v": checkpoint.DUMP_VERSION, "base_n": checkpoint._count(state),
                        "base": {**state, "applied": checkpoint._count(state)}, "suffix": [],
                        "last": document.get("last"), "prev": document.get("prev"), "cluster": document.get("cluster")}
        every = consumer.checkpoints.every
        return checkpoint.verify_dump(document, consumer.trust, consumer.initial, every)

    def _check_dump(self, document: Any) -> list[str]:
        """Problems of a full dump received from the leader (guard.GuardedSerializer); [] to accept.

        The dump must verify (vouched base, suffix replayed through ``apply``) and the state it
        yields must keep this node's committed history (``state.dump_problems``).

        Raises:
            errors.DumpRefusedError: not vouched, a bad suffix command, malformed (the guard
                counts ``reason``).
        """
        state, points = self._verify(document)
        with self._consumer.lock:
            current = self._consumer.cluster
        problems = cluster_state.dump_problems(current, state, time.time_ns())
        if not problems:
            self._verified = (checkpoint.document_key(document), state, points)
        return problems

    def _check_local_dump(self) -> None:
        """Before pysyncobj opens anything: this site's own ``raft.dump`` must verify, and a
        journal that starts after index 1 (compacted) needs it. Otherwise the site would run
        from an empty state at applied index 1 forever (issue 13, item 8).

        A dump of the previous file format (2, no checksum: written by this site before the
        upgrade) is accepted once, logged at WARNING, and rewritten in format 3 (same document,
        checksummed; tmp + fsync + rename + directory fsync) before pysyncobj reads it.

        Raises:
            errors.DumpDamagedError: unreadable, zeroed, truncated, a checksum mismatch
                (reason ``dump_damaged``), unknown version, not vouched, a bad command, or
                missing while the journal was compacted.
            errors.StoreFullError / errors.InternalError: a format-2 dump cannot be rewritten.
        """
        path = self._data_dir / "raft.dump"
        action = ("move raft.dump and raft.journal aside, keep raft.journal.meta, and start the site: it rejoins as a "
                  "follower that votes for nobody until it has caught up (README, \"Raft dump damaged\")")
        if not path.exists():
            first = _first_journal_index(self._data_dir / "raft.journal")
            if first is not None and first > 1:
                raise errors.DumpDamagedError(
                    f"raft dump {path} is missing but the journal starts at index {first} (compacted): the state "
                    f"before it is lost here. The site refuses to start; {action}",
                    path=str(path), reason="dump_missing", problems=[f"journal starts at index {first}"],
                    action=action)
            return
        data = b""
        try:
            data = path.read_bytes()
            document, legacy = dumpfile.decode(data)
            state, points = self._verify(document)
            _dump_position(document)
        except errors.DumpRefusedError as err:
            raise errors.DumpDamagedError(
                f"raft dump {path} cannot be used ({err.evidence.get('reason')}: {err.message}). The site refuses "
                f"to start rather than serve an empty state; nothing was changed; {action}",
                path=str(path), reason=err.evidence.get("reason"), problems=[err.message], action=action) from None
        except Exception as exc:  # unreadable, zeroed, truncated: never a traceback
            raise errors.DumpDamagedError(
                f"raft dump {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}; {len(data)} bytes). The site refuses to start rather than serve an empty state; nothing was "
                f"changed; {action}", path=str(path), reason="dump_damaged",
                problems=[f"{type(exc).__name__}: {str(exc)[:200]}"], action=action) from None
        if legacy:
            log.warning("raft dump %s has the previous file format (%d, no checksum; written before this version): "
                        "its content verified, accepting it once and rewriting it with a checksum (format %d)",
                        path, dumpfile.LEGACY_VERSION, dumpfile.FORMAT_VERSION)
            try:
                write_durably(path, dumpfile.frame(data), ".upgrade.tmp")
            except OSError as exc:
                raise errors.from_os_error(exc, f"rewriting {path} with a checksum") from exc
        self._verified = (checkpoint.document_key(document), state, points)

    def _deserialize_dump(self, dump_file: str) -> tuple:
        """Load ``raft.dump`` (this site's at start, or one received and accepted by
        :meth:`_check_dump`): adopt the verified state and checkpoints. Tick thread.

        Raises (pysyncobj logs it and keeps its state; :meth:`status` reports ``dump_error``):
            errors.DumpRefusedError (``dump_damaged``: checksum, :mod:`~replicad.consensus.dumpfile`)
            / errors.RemoteProtocolError / OSError: see :meth:`_verify`.
        """
        try:
            path = Path(dump_file)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
                data = f.read()
            fsync_dir(path.parent)
            document, _legacy = dumpfile.decode(data)  # the checksum: a file damaged since it was checked
            last, prev, cluster = _dump_position(document)
            verified, self._verified = self._verified, None
            if document.get("v") == checkpoint.DUMP_VERSION and verified is not None \
                    and verified[0] == checkpoint.document_key(document):
                state, points = verified[1], verified[2]
            else:
                state, points = self._verify(document)
        except Exception as exc:
            self._dump_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load raft dump %s: %s", dump_file, self._dump_error)
            raise
        with self._consumer.lock:
            before = self._consumer.cluster
            self._consumer.cluster = state
            self._consumer.checkpoints = points
            self._consumer.pending_vouch = None
            self._consumer.share.reset()  # point 22: the log is replaced by this state
            self._consumer.track_membership(state, installed=True)
        syncobj = self._syncobj
        if syncobj is not None and syncobj._withheld is not None:
            syncobj._withheld.follow(None, None)  # point 19: entries a full state covers are never applied one by one
        if syncobj is not None:
            syncobj._answer_installed(state)  # point 21: nor are this node's own commands among them answered
        self._dump_error = None
        self._installed(before, state)
        return last, prev, cluster

    on_installed: Callable[[dict, dict, bool], None] | None = None
    """``(state before, state installed, at_start)``, called on the tick thread after a full state
    replaced the applied one (set before :meth:`start`): ``at_start`` for this site's own dump
    loaded at start, else one received from the leader (counted in ``status()["dump_installs"]``).
    The entries it covers are never applied here one by one, so ``on_applied`` never sees them
    (attacker review r13, F3: the daemon audits the difference, ``replicad.site.catchup``)."""
    _dump_at_start = False  # this site's own raft.dump is loaded on the first tick after start()

    def _installed(self, before: dict, state: dict) -> None:
        """Tick thread, after :meth:`_deserialize_dump` swapped ``state`` in: count it and call
        :attr:`on_installed`; never raises into pysyncobj (a failing callback is logged at ERROR)."""
        at_start, self._dump_at_start = self._dump_at_start, False
        if not at_start:
            self._dump_installs += 1
        if self.on_installed is not None:
            try:
                self.on_installed(before, state, at_start)
            except Exception as exc:  # the state is installed; only its audit is incomplete
                log.error("raft: the audit of a full state installed here failed (%s: %s); compare this site's "
                          "`replicad status` with another site's", type(exc).__name__, str(exc)[:300])

    def _vouch_step(self, syncobj: Any) -> None:
        """Tick thread: propose this site's signed vouch for its newest checkpoint, once this
        node applied everything it knows committed (during a journal replay its vouch may be
        further on in the log); retried every :data:`VOUCH_RETRY_S` with the same op id until
        the state shows it. Never blocks (pysyncobj's command queue)."""
        consumer, signer = self._consumer, self._signer
        pending = consumer.pending_vouch
        if pending is None or signer is None or syncobj.raftLastApplied < syncobj.raftCommitIndex:
            return
        n, digest = pending
        mine = (consumer.cluster.get("vouches") or {}).get(signer.site_id) or []
        if (mine and mine[-1][0] >= n) or signer.site_id not in consumer.cluster.get("sites", {}):
            consumer.pending_vouch = None  # vouched (or not registered yet: nothing to vouch as)
            return
        now = time.monotonic()
        if now < self._vouch_next:
            return
        self._vouch_next = now + VOUCH_RETRY_S
        if self._vouch_op is None or self._vouch_op[0] != n:
            self._vouch_op = (n, uuid.uuid4().hex, time.time_ns())
        try:
            command = signer.sign({"v": cluster_state.COMMAND_VERSION, "op": "vouch", "op_id": self._vouch_op[1],
                                   "now_ns": self._vouch_op[2], "n": n, "hash": digest})
            payload = msgpack.packb(command, use_bin_type=True)
        except (ValueError, CanonicalError) as exc:
            log.error("raft: cannot sign a vouch for checkpoint %d: %s", n, exc)
            consumer.pending_vouch = None
            return

        def done(result: Any, reason: Any) -> None:  # tick thread
            if isinstance(result, dict) and not result.get("ok") and consumer.pending_vouch == pending:
                log.warning("raft: vouch for checkpoint %d refused: %s", n, result.get("message"))
                consumer.pending_vouch = None

        consumer.apply_command(payload, callback=done)

    _vouch_next = float("-inf")
    _vouch_op: tuple | None = None  # (n, op_id, now_ns) of the vouch being proposed

    # -- proposals
    async def propose(self, command: dict, timeout_s: float = 5.0) -> dict:
        """Replicate ``command`` through Raft and return its ``{"ok": True, ...}`` result.

        Fills ``v`` and ``op_id`` (uuid4 hex) when missing and, with a signer, ``by``,
        ``cluster`` and ``sig`` (unless ``sig`` is already there). A retry with the same
        ``op_id`` after a timeout is safe: the state machine answers it exactly once (the
        signature is deterministic: the retry is the same command).

        Raises:
            errors.NoQuorumError: not committed within ``timeout_s`` or pysyncobj gave up
                (evidence: ``reason``, ``op``, ``op_id``); the command may still commit later.
            errors.LocalProtocolError: the encoded command exceeds ``MAX_COMMAND_BYTES``, or
                the signer cannot sign it (``by`` names another site, a value without a
                canonical encoding).
            errors.InternalError: the node is not started or its dump could not be loaded.
            errors.ReplicadError subclasses: the state machine refused it
                (``errors.from_dict(result)``: StaleEpochError, NotPrimaryError ...).
        """
        syncobj = self._syncobj
        if syncobj is None:
            raise errors.InternalError("raft node is not started", op=command.get("op"))
        if self._dump_error is not None:
            raise errors.InternalError("raft dump could not be loaded", detail=self._dump_error)
        command = dict(command)
        command.setdefault("v", cluster_state.COMMAND_VERSION)
        command.setdefault("op_id", uuid.uuid4().hex)
        op, op_id = command.get("op"), command["op_id"]
        if self._signer is not None and "sig" not in command:
            try:
                command = self._signer.sign(command)
            except (ValueError, CanonicalError) as exc:
                raise errors.LocalProtocolError(f"cannot sign the command: {exc}", op=op, op_id=op_id) from None
        payload = msgpack.packb(command, use_bin_type=True)
        if len(payload) > MAX_COMMAND_BYTES:
            raise errors.LocalProtocolError("raft command too large", op=op, size_bytes=len(payload),
                                            max_bytes=MAX_COMMAND_BYTES)
        held = None if self._signer is None or share_exempt(command, len(payload)) else \
            self._consumer.share_over(command.get("by"), LOG_SHARE_OWN)
        if held is not None:  # point 22: the leader's door would refuse it (a leader: its followers depose it)
            now = monotonic_time()
            if now - self._share_said >= OWN_SHARE_LOG_EVERY_S:  # R17 F1 (c): said at this site, not only returned
                self._share_said = now
                log.error(
                    "raft: this site's own commands are refused (%s, op id %s, and every other command but a vouch): "
                    "the Raft log kept since its last compaction holds %d commands (%.1f MiB) signed by this site, "
                    "over %.0f%% of a site's share (%d commands or %d MiB). Likely cause: the log has not compacted "
                    "for long (a site down, or a member that does not vouch checkpoints: see the ERROR \"not "
                    "compacting the log\"), so this site's own traffic accumulated; bring the sites that are down "
                    "back. The log holds per site: %s. (At most one line per %.0fs.)", str(op)[:40], str(op_id)[:64],
                    held[0], held[1] / 2**20, LOG_SHARE_OWN * 100, LOG_SHARE_ENTRIES, LOG_SHARE_BYTES // 2**20,
                    self._consumer.share.text(), OWN_SHARE_LOG_EVERY_S)
            raise errors.NoQuorumError(
                f"raft did not take the command: the log kept since its last compaction holds {held[0]} commands "
                f"({held[1] / 2**20:.1f} MiB) of this site, over a site's share ({LOG_SHARE_ENTRIES} commands or "
                f"{LOG_SHARE_BYTES // 2**20} MiB); the log compacts again once a majority vouches a checkpoint: bring "
                f"the sites that are down back (see the ERROR \"not compacting the log\")",
                reason="log_share", op=op, op_id=op_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def settle(result: Any, reason: Any) -> None:  # on the loop
            if not future.done():
                future.set_result((result, reason))

        def on_done(result: Any, reason: Any) -> None:  # on the tick thread: must never raise
            try:
                loop.call_soon_threadsafe(settle, result, reason)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        self._consumer.apply_command(payload, callback=on_done)
        try:
            result, reason = await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise errors.NoQuorumError("raft did not commit the command in time", reason="timeout",
                                       op=op, op_id=op_id, timeout_s=timeout_s) from None
        if reason == FAIL_REASON.REQUEST_DENIED:  # point 17: the leader refused it at the door
            raise errors.NoQuorumError("raft did not commit the command: the leader refused it (this site over its "
                                       "forwarding budget, or the command not signed by this site); see the "
                                       "leader's replicad_raft_refused_total{reason=~\"forwarded_.*\"}",
                                       reason="request_denied", op=op, op_id=op_id)
        if reason != FAIL_REASON.SUCCESS or not isinstance(result, dict):
            raise errors.NoQuorumError("raft did not commit the command",
                                       reason=_FAIL_NAMES.get(reason, str(reason)).lower(), op=op, op_id=op_id)
        if not result.get("ok"):
            raise errors.from_dict(result)
        return result

    # -- reads
    def state(self) -> dict:
        """A deep copy of the applied cluster state (see :mod:`replicad.core.state`)."""
        with self._consumer.lock:
            current = self._consumer.cluster
        return copy.deepcopy(current)  # states are never mutated in place: copy outside the lock

    def applied_count(self) -> int:
        """The number of commands the applied state holds since the log's initial state (the
        checkpoints' count: the same at every site for the same state, carried by dumps). Read on
        the tick thread (``on_applied``) it is the count including the entry just applied."""
        return self._consumer.checkpoints.end_n

    def view(self) -> dict:
        """The applied cluster state itself, without a copy: READ ONLY.

        :func:`replicad.core.state.apply` never mutates a state (copy on write), so holding a
        reference is safe as long as the caller never mutates it either. Use :meth:`state`
        for a copy that may be changed. O(1), for hot paths (every tick, every peer write).
        """
        with self._consumer.lock:
            return self._consumer.cluster

    def status(self) -> dict:
        """Raft status, refreshed on every tick (a hint only: fencing uses epochs).

        ``{"self": addr, "leader": addr|None, "is_leader": bool, "term": int,
        "commit_index": int, "last_applied": int, "has_quorum": bool,
        "partners": {addr: connected}, "dump_error": str|None,
        "refused": {reason: count}, "commands_refused": {reason: count}, "signed": bool,
        "leader_commit_index": int|None, "caught_up": bool, "behind_s": float, "stalled_s": float,
        "dump_send_failures": int, "deposed": {addr: {"site", "term", "hold_s"}}, "dump_installs": int}``
        (``deposed``: leaders this node deposed whose hold runs, point 18; ``refused``: Raft traffic refused since start, see :mod:`replicad.consensus.channel`
        and :mod:`replicad.consensus.guard`; ``commands_refused``: commands in the log the
        state machine refused as ``bad_signature``, ``replayed`` or ``expired``, counted as
        applied here, since start, journal replays included; ``signed``: this node signs;
        ``leader_commit_index`` ... ``dump_send_failures``: point 15 of the module docstring,
        ``_HardenedSyncObj.catch_up_status``)
        """
        with self._status_lock:
            status = dict(self._status)
            status["partners"] = dict(self._status["partners"])
        status["dump_error"] = self._dump_error
        status["refused"] = {**dict.fromkeys(KNOWN_REASONS, 0), **dict.fromkeys((*FORWARD_REASONS, *CLOCK_REASONS, *OPS_REASONS), 0),
                             **dict.fromkeys((*checkpoint.DUMP_REASONS, "checkpoint_divergent", *DEPOSE_REASONS), 0),
                             **self._refusals.counts(), **self._consumer.divergences.counts()}
        with self._consumer.lock:
            status["checkpoint"] = self._consumer.checkpoints.summary()
        status["commands_refused"] = {**dict.fromkeys(sorted(cluster_state.COUNTED_REASONS), 0),
                                      **self._consumer.refused.counts()}
        status["signed"] = self._signer is not None
        status["dump_installs"] = self._dump_installs
        if self._syncobj is None:
            status.update(leader=None, is_leader=False, has_quorum=False)
        return status

    def _empty_status(self) -> dict:
        return {"self": self._self_addr, "leader": None, "is_leader": False, "term": 0,
                "commit_index": 0, "last_applied": 0, "has_quorum": False, "leader_commit_index": None,
                "caught_up": False, "behind_s": 0.0, "stalled_s": 0.0, "dump_send_failures": 0, "deposed": {},
                "partners": {addr: False for addr in self._partners}}

    def _refresh_status(self) -> None:  # tick thread: the only place reading pysyncobj internals
        syncobj = self._syncobj
        if syncobj is None:
            return
        try:
            self._vouch_step(syncobj)
        except Exception:
            log.exception("raft: cannot propose a vouch")
        try:
            leader = syncobj._getLeader()
            status = {"self": self._self_addr, "leader": None if leader is None else str(leader.id),
                      "is_leader": bool(syncobj._isLeader()), "term": syncobj.raftCurrentTerm,
                      "commit_index": syncobj.raftCommitIndex, "last_applied": syncobj.raftLastApplied,
                      "has_quorum": bool(syncobj.hasQuorum),
                      "partners": {str(n.id): syncobj.isNodeConnected(n) for n in syncobj.otherNodes},
                      "deposed": syncobj.deposed_status(), **syncobj.catch_up_status()}
        except Exception:
            log.exception("cannot read raft status")
            return
        with self._status_lock:
            self._status = status
