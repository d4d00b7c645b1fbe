"""Configuration values (`_config`): the default retry policy, backoff arithmetic, and the
read timeout of the 4K tier.
"""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemimg_async import Backoff, OutcomeUnknownError, RetryPolicy, Timeouts
from gemimg_async.testing import Fault
from helpers import PROMPT_4K

pytestmark = pytest.mark.anyio


# --- RetryPolicy -------------------------------------------------------------------------------


def test_policy_budget_defaults():
    """The client's default budget: 10 tokens, a tenth back per success."""
    policy = RetryPolicy()
    assert (policy.budget_tokens, policy.budget_ratio) == (10.0, 0.1)


def test_policy_backoffs_are_the_documented_ones():
    """Not sent: 0.5 s doubling to 8 s; throttled: 5 s doubling to 60 s, full jitter."""
    policy = RetryPolicy()
    assert policy.not_sent_backoff == Backoff(0.5, 2.0, 8.0, full_jitter=False)
    assert policy.throttled_backoff == Backoff(5.0, 2.0, 60.0, full_jitter=True)
    assert policy.download_backoff == Backoff(0.5, 2.0, 8.0, full_jitter=False)
    assert (policy.not_sent_attempts, policy.throttled_attempts) == (3, 5)
    assert (policy.server_attempts, policy.outcome_unknown_attempts) == (2, 1)
    assert policy.max_retry_after == 120.0


# --- Backoff -----------------------------------------------------------------------------------


@given(retry=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_half_jitter_stays_between_half_and_all_of_the_ceiling(retry, seed):
    """Without full jitter the k-th wait is in [c/2, c], c = min(0.5 * 2**k, 8)."""
    ceiling = min(0.5 * 2**retry, 8.0)
    delay = RetryPolicy().not_sent_backoff.delay(retry, random.Random(seed))  # noqa: S311 - jitter, not secrets
    assert ceiling / 2 <= delay <= ceiling


@given(retry=st.integers(0, 40), seed=st.integers(0, 2**32))
def test_full_jitter_stays_between_zero_and_the_ceiling(retry, seed):
    """With full jitter the k-th wait is in [0, c], c = min(5 * 2**k, 60)."""
    ceiling = min(5.0 * 2**retry, 60.0)
    delay = RetryPolicy().throttled_backoff.delay(retry, random.Random(seed))  # noqa: S311 - jitter, not secrets
    assert 0.0 <= delay <= ceiling


@pytest.mark.parametrize(
    ("retry", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0)]
)
def test_backoff_ceiling_doubles_then_caps(retry, ceiling):
    """The ceiling doubles per retry until the maximum, where it stays."""
    backoff = Backoff(0.5, maximum=8.0)

    class Top(random.Random):
        def uniform(self, _low, high):
            return high

    assert backoff.delay(retry, Top()) == ceiling


def test_jitter_spreads_waits():
    """Two clients that fail together do not come back together."""
    backoff = Backoff(5.0, maximum=60.0, full_jitter=True)
    rng = random.Random(1)  # noqa: S311 - jitter, not secrets
    assert len({backoff.delay(2, rng) for _ in range(20)}) == 20


# --- Timeouts ----------------------------------------------------------------------------------


async def test_4k_gets_the_longer_read_timeout(relay, client):
    """generate_4k waits up to read_4k; the standard model gives up after read."""
    timeouts = Timeouts(read=0.1, read_4k=10.0)
    relay.script(Fault.delay(0.4), Fault.delay(0.4))
    result = await client.generate_4k(PROMPT_4K, size="21:9", timeouts=timeouts)
    assert len(result.images) == 1
    with pytest.raises(OutcomeUnknownError):
        await client.generate(PROMPT_4K, size="21:9", timeouts=timeouts)
