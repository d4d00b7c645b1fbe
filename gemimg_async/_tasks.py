"""Tasks run beside a body of code, cancelled when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio

__all__ = ["background"]


@asynccontextmanager
async def background(*coroutines: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run `coroutines` beside the body, cancelled when it ends. Plain tasks rather than a task
    group, so that the body's own exceptions come out as they are, not in an ExceptionGroup."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines if coroutine is not None]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
