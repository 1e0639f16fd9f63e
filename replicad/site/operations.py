"""Long admin operations (restore with ``wait: false``, drill) run in the background with an
id; ``GET /v1/operations/{id}`` gives their phase and block progress, ``DELETE
/v1/operations/{id}`` (``replicad cancel ID``) cancels one (:meth:`Operations.cancel`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from replicad.core.errors import OperationCancelledError, ReplicadError

log = logging.getLogger("replicad.site.operations")

OPERATIONS_KEPT = 100


@dataclass
class Operation:
    """A long-running admin operation (restore) with progress, polled by the CLI."""

    id: str
    kind: str
    volume: str
    state: str = "running"                  # running | done | failed | cancelled
    phase: str = "starting"                 # fetching | writing | verifying
    done_blocks: int = 0
    total_blocks: int = 0
    result: dict | None = None
    error: ReplicadError | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel_requested: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)

    def progress(self, done: int, total: int) -> None:
        """Progress callback (called from worker threads; plain attribute stores). Raises
        OperationCancelledError once a cancel was asked: the worker thread writing the image
        stops at its next block instead of running on after the task was cancelled."""
        if self.cancel_requested:
            raise OperationCancelledError(f"{self.kind} {self.id} cancelled", operation=self.id)
        self.done_blocks, self.total_blocks = done, total

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "volume": self.volume, "state": self.state, "phase": self.phase,
                "done_blocks": self.done_blocks, "total_blocks": self.total_blocks, "result": self.result,
                "error": self.error.to_dict() if self.error else None, "started_at": self.started_at,
                "finished_at": self.finished_at}


class Operations:
    """The operations of one site, newest :data:`OPERATIONS_KEPT` kept.

    Args:
        spawn: starts a coroutine as a task the site cancels when it stops (``(coro, name)``).
    """

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task]) -> None:
        self._spawn = spawn
        self._ops: dict[str, Operation] = {}

    def get(self, op_id: str) -> Operation | None:
        """The operation ``op_id``, or None if unknown (or no longer kept)."""
        return self._ops.get(op_id)

    def cancel(self, op_id: str) -> Operation | None:
        """Cancel running operation ``op_id``: its task is cancelled and its image writer stops at
        the next block (:meth:`Operation.progress`); the restore cleans up as after any failure (a
        new target's partial file is removed; an in-place target stays listed as interrupted).
        Returns the operation (``state`` ``cancelled`` once its task ended; the caller may poll;
        an operation that already ended is returned as it is, nothing cancelled), None if unknown."""
        op = self._ops.get(op_id)
        if op is None or op.state != "running":
            return op
        op.cancel_requested = True
        if op.task is not None:
            op.task.cancel()
        log.warning("operation %s %s of %s: cancel requested", op.kind, op.id, op.volume)
        return op

    def list(self) -> list[Operation]:
        """Every kept operation, oldest first (the status page shows the running ones)."""
        return list(self._ops.values())

    def start_operation(self, kind: str, volume: str,
                        coro_fn: Callable[[Operation], Awaitable[dict]]) -> Operation:
        """Run ``coro_fn(op)`` in the background as a pollable operation (``GET /v1/operations/ID``)."""
        op = Operation(id=uuid.uuid4().hex[:12], kind=kind, volume=volume)
        self._ops[op.id] = op
        while len(self._ops) > OPERATIONS_KEPT:
            self._ops.pop(next(iter(self._ops)))

        async def run() -> None:
            try:
                op.result = await coro_fn(op)
                op.state = "done"
            except asyncio.CancelledError:  # replicad cancel, or the site stopping
                op.error = OperationCancelledError(
                    f"{kind} {op.id} of {volume} cancelled" + ("" if op.cancel_requested else " (the site stopped)"),
                    operation=op.id)
                op.state = "cancelled"
                op.finished_at = time.time()
                raise
            except OperationCancelledError as err:  # the writer thread saw the cancel first
                op.error = err
                op.state = "cancelled"
            except ReplicadError as err:
                op.error = err
                op.state = "failed"
            except Exception as err:  # noqa: BLE001 — reported to the operator, logged with its traceback
                log.exception("operation %s %s failed", kind, op.id)
                from replicad.core.errors import InternalError

                op.error = InternalError(f"internal error: {err!r}")
                op.state = "failed"
            op.finished_at = time.time()

        op.task = self._spawn(run(), f"op:{op.id}")
        return op
