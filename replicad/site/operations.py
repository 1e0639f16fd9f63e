"""Long admin operations (restore with ``wait: false``, drill) run in the background with an
id; ``GET /v1/operations/{id}`` gives their phase and block progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from replicad.core.errors import ReplicadError

log = logging.getLogger("replicad.site.operations")

OPERATIONS_KEPT = 100


@dataclass
class Operation:
    """A long-running admin operation (restore) with progress, polled by the CLI."""

    id: str
    kind: str
    volume: str
    state: str = "running"                  # running | done | failed
    phase: str = "starting"                 # fetching | writing | verifying
    done_blocks: int = 0
    total_blocks: int = 0
    result: dict | None = None
    error: ReplicadError | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def progress(self, done: int, total: int) -> None:
        """Progress callback (called from worker threads; plain attribute stores)."""
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
            except ReplicadError as err:
                op.error = err
                op.state = "failed"
            except Exception as err:  # noqa: BLE001 — reported to the operator, logged with its traceback
                log.exception("operation %s %s failed", kind, op.id)
                from replicad.core.errors import InternalError

                op.error = InternalError(f"internal error: {err!r}")
                op.state = "failed"
            op.finished_at = time.time()

        self._spawn(run(), f"op:{op.id}")
        return op
