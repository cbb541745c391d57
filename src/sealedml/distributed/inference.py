"""Ordered, bounded dispatch of shards: many in flight, results in input order.

Used by the batch endpoint for any backend (a pool of Ray workers or one enclave): it holds at
most ``window`` shards (in flight or finished but waiting for an earlier one), so memory is
bounded by ``window`` x shard size whatever the batch size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Outcome", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One shard's outcome: its index, and its value or the error it failed with.

    ``skipped`` shards were read after an earlier shard failed and were never run.
    """

    index: int
    value: R | None = None
    error: BaseException | None = None
    skipped: bool = False


async def ordered_map(
    source: AsyncIterator[T], run: Callable[[int, T], Awaitable[R]], *, window: int
) -> AsyncIterator[Outcome[R]]:
    """Run ``run(index, item)`` for each item of ``source`` and yield the outcomes in input order.

    Guarantees: at most ``window`` items are held at once (running, or finished and waiting for
    an earlier one), so ``source`` is not read further while the window is full; every item
    read yields exactly one outcome, in order. After the first failure no new item is run: the
    runs already started finish and report their own outcomes, and the rest of ``source`` is
    still read (so a streaming sender can finish) and yields ``skipped`` outcomes. An error
    raised by ``source`` itself is the failed outcome of the next index and ends the reading.
    Closing the iteration early cancels the runs in flight.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    loop = asyncio.get_running_loop()
    pending: deque[tuple[int, asyncio.Future[R]]] = deque()
    iterator = source.__aiter__()
    index = 0
    exhausted = False
    failed = False
    try:
        while True:
            while not exhausted and (failed or len(pending) < window):
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    break
                except Exception as exc:
                    exhausted = True
                    broken: asyncio.Future[R] = loop.create_future()
                    broken.set_exception(exc)
                    pending.append((index, broken))
                    index += 1
                    break
                if failed:
                    while pending:  # report the runs already started first, in order
                        position, future = pending.popleft()
                        yield await _outcome(position, future)
                    yield Outcome(index, skipped=True)
                else:
                    pending.append((index, asyncio.ensure_future(run(index, item))))
                index += 1
            if not pending:
                return
            position, future = pending.popleft()
            outcome = await _outcome(position, future)
            if outcome.error is not None:
                failed = True
            yield outcome
    finally:
        for _, future in pending:
            future.cancel()


async def _outcome(position: int, future: asyncio.Future[R]) -> Outcome[R]:
    try:
        return Outcome(position, value=await future)
    except Exception as exc:
        return Outcome(position, error=exc)
