"""Fixtures of the hardening tests: hostile relays, fresh for each test."""

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from hostile.servers import ScriptedRelay


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedRelay]:
    async with ScriptedRelay() as relay:
        yield relay


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI's main() sets up the gemimg_async logger; put it back for the other tests."""
    logger = logging.getLogger("gemimg_async")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
