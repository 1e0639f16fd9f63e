"""Per-site, per-volume role table (DESIGN §6). Pure: no I/O.

Every role change of a site for one volume goes through :func:`next_role`, which looks
the ``(role, event)`` pair up in the one table :data:`TRANSITIONS`. A pair that is not in
the table is a bug or an attack and raises :class:`~replicad.core.errors.ConflictError` named
"illegal role transition". ARCHITECTURE.md embeds :func:`mermaid` output; a test checks
that the document and the table agree.

Roles:

* ``primary``   — produces the volume's snapshots under the committed epoch.
* ``replica``   — stores snapshots shipped by the primary, keeps an optional standby.
* ``restoring`` — granted the primary epoch after a forced failover, restoring the chosen
  snapshot; it serves nothing until the restored root equals the manifest root (O5).
* ``fenced``    — saw a committed epoch greater than the one it acted under; stopped
  producing snapshots and ran its fence hook before anything else (O3).
* ``divergent`` — a fenced old primary holding snapshots that never got committed; they
  are kept for forensics, never shipped, never silently deleted.

Events:

* ``granted_primary``             — a committed promote names this site (new epoch).
* ``restore_started`` / ``restore_done`` — forced failover: restore, then verified (O5).
* ``demoted``                     — planned switchover or demote: this site gave up the epoch.
* ``epoch_advanced_elsewhere``    — a committed epoch names another site (or nobody).
* ``found_uncommitted_snapshots`` — a fenced site found local snapshots absent from the catalog.
* ``resynced``                    — caught up from the newest common snapshot; now a replica.
* ``cluster_reset``               — the Raft state is of another cluster incarnation (every site
  lost its Raft state): the epochs this site acted under mean nothing there; its records of the
  old incarnation are set aside (``previous``) and it starts over as a replica of the new one.
"""

from __future__ import annotations

from replicad.core.errors import ConflictError

ROLES: tuple[str, ...] = ("primary", "replica", "restoring", "fenced", "divergent")

EVENTS: tuple[str, ...] = ("granted_primary", "restore_started", "restore_done", "demoted",
                           "epoch_advanced_elsewhere", "found_uncommitted_snapshots", "resynced", "cluster_reset")

TRANSITIONS: dict[tuple[str, str], str] = {
    ("replica", "granted_primary"): "primary",
    ("replica", "epoch_advanced_elsewhere"): "replica",
    ("primary", "restore_started"): "restoring",
    ("primary", "demoted"): "replica",
    ("primary", "epoch_advanced_elsewhere"): "fenced",  # O3
    ("restoring", "restore_done"): "primary",  # O5: only after the restored root matched
    ("restoring", "demoted"): "replica",
    ("restoring", "epoch_advanced_elsewhere"): "fenced",  # O3
    ("fenced", "found_uncommitted_snapshots"): "divergent",
    ("fenced", "resynced"): "replica",
    ("fenced", "epoch_advanced_elsewhere"): "fenced",
    ("divergent", "resynced"): "replica",
    ("divergent", "epoch_advanced_elsewhere"): "divergent",
    ("primary", "cluster_reset"): "replica",
    ("restoring", "cluster_reset"): "replica",
    ("fenced", "cluster_reset"): "replica",
    ("divergent", "cluster_reset"): "replica",
    ("replica", "cluster_reset"): "replica",
}
"""The one role table: ``(role, event) -> new role``. Anything absent is illegal."""


def next_role(role: str, event: str) -> str:
    """The role after ``event`` happens to a site in ``role``.

    Raises:
        ConflictError: "illegal role transition", evidence ``role``, ``event`` and the
            events ``allowed`` from ``role``.
    """
    new_role = TRANSITIONS.get((role, event))
    if new_role is None:
        allowed = sorted(e for (r, e) in TRANSITIONS if r == role)
        raise ConflictError("illegal role transition", role=role, event=event, allowed=allowed)
    return new_role


def mermaid() -> str:
    """A mermaid ``stateDiagram-v2`` drawn from :data:`TRANSITIONS`, in table order.

    Returns the diagram text without the surrounding code fence, ending with a newline.
    """
    lines = ["stateDiagram-v2"]
    for (role, event), new_role in TRANSITIONS.items():
        lines.append(f"    {role} --> {new_role}: {event}")
    return "\n".join(lines) + "\n"
