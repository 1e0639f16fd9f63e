"""Background operations: cancelling one (``DELETE /v1/operations/{id}``, ``replicad cancel``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from replicad.core.errors import OperationCancelledError
from replicad.site.operations import Operations


def test_cancel_stops_the_task_and_the_writer_thread() -> None:
    async def main() -> None:
        tasks: list[asyncio.Task] = []
        ops = Operations(lambda coro, name: tasks.append(asyncio.get_running_loop().create_task(coro)) or tasks[-1])
        started = asyncio.Event()
        writer_stopped = threading.Event()
        cleaned_up = []

        def writer(op) -> None:  # a worker thread writing blocks, as apply_snapshot does
            loop.call_soon_threadsafe(started.set)
            try:
                for done in range(10**9):
                    op.progress(done, 10**9)
            except OperationCancelledError:
                writer_stopped.set()
                raise

        async def restore(op) -> dict:
            try:
                await asyncio.to_thread(writer, op)
            except BaseException:
                cleaned_up.append(op.id)  # the partial image would be removed here
                raise
            return {}

        loop = asyncio.get_running_loop()
        op = ops.start_operation("restore", "ehr", restore)
        await started.wait()
        assert ops.cancel(op.id) is op
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert op.state == "cancelled" and op.error.code == "cancelled" and cleaned_up == [op.id]
        assert await asyncio.to_thread(writer_stopped.wait, 30)
        assert ops.cancel(op.id).state == "cancelled"  # ended: returned as it is
        assert ops.cancel("nope") is None

    asyncio.run(main())
