"""`_offload`: blocking calls on threads of their own, their results handed back in batches."""

import asyncio
import multiprocessing
import threading
import time

import pytest

from gemimg_async._offload import Offload, in_thread


def run(coro):
    return asyncio.run(coro)


def test_a_call_runs_off_the_loop_and_gives_its_result():
    """The function runs on another thread with its arguments; its result comes back."""

    async def main():
        loop_thread = threading.get_ident()
        return await Offload().run(lambda a, b: (a + b, threading.get_ident() != loop_thread), 2, 3)

    assert run(main()) == (5, True)


def test_an_exception_is_raised_in_the_caller():
    """What the call raises is raised where it was awaited, the same exception object."""
    error = OSError(28, "No space left on device")

    def fail():
        raise error

    async def main():
        with pytest.raises(OSError) as caught:
            await Offload().run(fail)
        return caught.value

    assert run(main()) is error


def test_no_more_than_threads_calls_run_at_once():
    """With 3 threads, 12 calls that each hold for a moment never run more than 3 at once,
    and all of them end."""
    running = most = 0
    lock = threading.Lock()

    def hold(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i

    async def main():
        offload = Offload(threads=3)
        return await asyncio.gather(*(offload.run(hold, i) for i in range(12)))

    assert run(main()) == list(range(12))
    assert most == 3


def test_calls_that_end_together_wake_the_loop_once():
    """A burst of calls that end while the loop is busy is handed back with one wake-up."""

    async def main():
        offload = Offload(threads=4)
        gate = threading.Event()
        calls = [asyncio.ensure_future(offload.run(gate.wait)) for _ in range(40)]
        await asyncio.sleep(0)  # all queued
        gate.set()
        time.sleep(0.2)  # noqa: ASYNC251 - the loop is kept busy while they all end
        await asyncio.gather(*calls)
        return offload.wakeups

    assert run(main()) == 1


def test_a_cancelled_caller_waits_for_its_running_call_to_end():
    """Cancelling a caller whose call is running does not leave it behind: the cancellation
    is raised only after the call has ended (it may own files)."""
    started, release = threading.Event(), threading.Event()
    ended = []

    def commit():
        started.set()
        release.wait()
        ended.append(True)

    async def main():
        task = asyncio.ensure_future(Offload().run(commit))
        await asyncio.to_thread(started.wait)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the call
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended == [True]

    run(main())


def test_a_cancelled_caller_whose_call_has_not_begun_takes_it_off_the_queue():
    """With every thread busy, a queued call whose caller is cancelled never runs."""
    release = threading.Event()
    ran = []

    async def main():
        offload = Offload(threads=1)
        busy = asyncio.ensure_future(offload.run(release.wait))
        queued = asyncio.ensure_future(offload.run(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await busy
        await offload.run(ran.append, "next")

    run(main())
    assert ran == ["next"]


def test_idle_runners_end_and_new_ones_start_when_needed():
    """A runner with nothing to do ends after `linger`; a later call starts another."""

    async def main():
        offload = Offload(threads=2, linger=0.05, name="lingering")
        assert await offload.run(threading.get_ident) != threading.get_ident()
        for thread in offload_threads():
            await asyncio.to_thread(thread.join, 5)
        assert not offload_threads()
        return await offload.run(lambda: "again")

    assert run(main()) == "again"


def test_calls_from_two_loops_each_come_back_to_their_own():
    """One Offload serving two event loops in two threads hands each its own results."""
    offload = Offload(threads=2)
    results = {}

    def loop_thread(name):
        async def main():
            return await asyncio.gather(*(offload.run(lambda i=i: (name, i)) for i in range(20)))

        results[name] = asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {name: [(name, i) for i in range(20)] for name in "ab"}


def _child(queue):
    queue.put(asyncio.run(in_thread(lambda: "from the child")))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this system"
)
def test_a_forked_child_runs_calls_on_threads_of_its_own():
    """After a fork (the parent's runners do not exist in the child), calls still run."""
    assert run(in_thread(lambda: "parent")) == "parent"  # the parent has a runner now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=20) == "from the child"
    finally:
        child.join(20)
    assert child.exitcode == 0


def offload_threads():
    return [thread for thread in threading.enumerate() if thread.name == "lingering"]


def test_a_thread_that_cannot_start_fails_the_call_and_leaves_nothing_queued(monkeypatch):
    """When no thread can be started, the caller gets the error and the call is not left
    queued (a later call, with threads again, runs alone)."""
    ran = []
    real_start = threading.Thread.start

    def refuse(self):
        raise RuntimeError("can't start new thread")

    async def main():
        offload = Offload(threads=1)
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="can't start"):
            await offload.run(ran.append, "refused")
        monkeypatch.setattr(threading.Thread, "start", real_start)
        await offload.run(ran.append, "later")

    run(main())
    assert ran == ["later"]


def test_runners_ending_as_calls_arrive_never_leave_one_queued():
    """Bursts of calls arriving just as idle runners give up (the loop busy for about their
    linger in between): every call runs, and once all runners have ended a new one starts."""
    import random  # noqa: PLC0415

    rng = random.Random(7)  # noqa: S311 - timings, not secrets

    async def main():
        offload = Offload(threads=2, linger=0.002)
        for _ in range(600):
            burst = [offload.run(lambda: None) for _ in range(rng.randint(1, 3))]
            await asyncio.wait_for(asyncio.gather(*burst), 5)
            time.sleep(rng.uniform(0.0015, 0.0025))  # noqa: ASYNC251 - the loop held on purpose
        time.sleep(0.05)  # noqa: ASYNC251 - every runner has ended
        return await asyncio.wait_for(offload.run(lambda: "ran"), 5)

    assert run(main()) == "ran"


def test_a_call_raising_stop_iteration_fails_alone():
    """A call that raises StopIteration (which no future can hold) fails with RuntimeError;
    a call ending in the same batch still gets its result."""

    def stop():
        raise StopIteration

    async def main():
        offload = Offload(threads=2)
        first = asyncio.ensure_future(offload.run(stop))
        second = asyncio.ensure_future(offload.run(lambda: "second"))
        time.sleep(0.1)  # noqa: ASYNC251 - both end before the loop takes their results
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(first, 5)
        return await asyncio.wait_for(second, 5)

    assert run(main()) == "second"
