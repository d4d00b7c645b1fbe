"""The example web apps end to end (examples/fastapi_app.py, examples/aiohttp_app.py): each on a
real port with the fake relay behind it, called over HTTP: the image streamed back or saved,
/health, errors as HTTP statuses, 50 callers against a pool of 4, a caller that hangs up, and
two app processes sharing one pool through Redis (the uvicorn --workers recipe).

They use the package's own pytest plugin: `fake_relay` (reset per test) and `fake_relay_server`.
"""

import asyncio
import json
from pathlib import Path

import anyio
import pytest
from webapps import POOL, fastapi_app, running

from gemimg_async.testing import FakeRelay, Fault
from helpers import PNG_SIGNATURE, TIER_2K, served_pngs, wait_for

pytestmark = pytest.mark.anyio

CALLERS = 50


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".gemimg-*")) if folder.exists() else []


async def post_image(http, app, prompt="a fox", *, save=False, **fields):
    """POST /images; (status, headers, body)."""
    url = f"{app.url}/images" + ("?save=1" if save else "")
    async with http.post(url, json={"prompt": prompt, **fields}) as response:
        return response.status, response.headers, await response.read()


async def test_an_image_is_streamed_back_whole(app, http, fake_relay):
    """POST /images streams back the relay's PNG, whole, typed image/png; one request sent."""
    [png] = await served_pngs(fake_relay, "a koi pond")
    status, headers, body = await post_image(http, app, "a koi pond")
    assert status == 200, body
    assert headers["Content-Type"].startswith("image/png")
    assert body == png
    assert [r.authorized for r in fake_relay.requests[1:]] == [True]


async def test_a_saved_image_has_its_path_returned(app, http, fake_relay):
    """POST /images?save=1 writes the image under the save folder and answers its path."""
    status, _, body = await post_image(http, app, "a lighthouse", save=True, size="16:9")
    assert status == 200, body
    [path] = map(Path, json.loads(body)["paths"])
    assert path.parent == app.save_dir
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert part_files(app.save_dir) == []


async def test_health_reports_the_pool(app, http):
    """GET /health reports the client's pool: its size, in flight and waiting."""
    async with http.get(f"{app.url}/health") as response:
        assert response.status == 200
        health = await response.json()
    assert health["status"] == "ok"
    assert health["pool"]["max_concurrency"] == POOL
    assert {"in_flight", "waiting", "pool_waits", "limit"} <= set(health["pool"])


async def test_bad_input_is_a_422_and_nothing_is_sent(app, http, fake_relay):
    """A size the model does not take is answered 422 invalid_request; the relay sees nothing."""
    status, _, body = await post_image(http, app, size="7:3")
    assert status == 422
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert fake_relay.generation_count == 0


@pytest.mark.parametrize(
    ("fault", "answer"),
    [
        (Fault.status(400, message="prompt too long"), (400, "rejected")),
        (Fault.blocked(), (422, "content_policy")),
        (Fault.refusal(), (422, "no_image")),
    ],
)
async def test_relay_errors_are_answered_as_documented(app, http, fake_relay, fault, answer):
    """The relay's refusals reach the caller as error_response says, without the relay's text."""
    status, code = answer
    fake_relay.script(fault)
    got, _, body = await post_image(http, app)
    assert got == status
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert "prompt too long" not in error["message"]
    assert fake_relay.url not in body.decode()


async def many_callers(http, app, count):
    """`count` concurrent callers; each one's status (all within a bound: none may hang)."""
    statuses = []

    async def call():
        status, headers, body = await post_image(http, app, "a crowd")
        statuses.append(status)
        if status == 200:
            assert body.startswith(PNG_SIGNATURE)
        if status == 503:
            assert int(headers["Retry-After"]) >= 1

    with anyio.fail_after(120):
        async with anyio.create_task_group() as callers:
            for _ in range(count):
                callers.start_soon(call)
    return statuses


async def test_fifty_callers_share_a_pool_of_four(app, http, fake_relay):
    """50 concurrent callers against a pool of 4: the relay never sees more than 4 at once,
    /health shows the others waiting, and every caller gets its image."""
    fake_relay.latency = 0.3
    seen_waiting = []

    async def watch_health():
        while True:
            async with http.get(f"{app.url}/health") as response:
                pool = (await response.json())["pool"]
            assert pool["in_flight"] <= POOL
            seen_waiting.append(pool["waiting"])
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as watching:
        watching.start_soon(watch_health)
        statuses = await many_callers(http, app, CALLERS)
        watching.cancel_scope.cancel()
    assert statuses == [200] * CALLERS
    assert fake_relay.max_in_flight == POOL
    assert fake_relay.generation_count == CALLERS
    assert max(seen_waiting) > 0


async def test_with_pool_timeout_a_full_pool_answers_503(fake_relay, http, tmp_path, app):
    """With pool_timeout, callers that find the pool of 4 full get 503 (Retry-After) without
    anything sent for them; none hangs, and the relay never sees more than 4."""
    fake_relay.latency = 1.0
    async with running(app.name, fake_relay.url, tmp_path, GEMIMG_POOL_TIMEOUT="0.2") as limited:
        statuses = await many_callers(http, limited, CALLERS)
    assert set(statuses) == {200, 503}
    assert statuses.count(200) >= POOL
    assert fake_relay.max_in_flight <= POOL
    assert fake_relay.generation_count == statuses.count(200)


async def test_a_caller_that_hangs_up_mid_generation_cancels_it(app, http, fake_relay):
    """A caller that disconnects while the relay generates cancels the generation: the relay
    sees its connection drop (no status went out), and the app's pool is free again."""
    fake_relay.latency = 2.0
    caller = asyncio.create_task(post_image(http, app, "a fox"))
    await wait_for(lambda: fake_relay.in_flight == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await wait_for(lambda: fake_relay.requests[0].finished is not None)
    assert fake_relay.requests[0].status is None
    async with http.get(f"{app.url}/health") as response:
        assert (await response.json())["pool"]["in_flight"] == 0
    assert part_files(app.save_dir) == []


async def test_a_caller_that_hangs_up_mid_answer_leaves_no_part_file(app, http, fake_relay):
    """A caller of ?save=1 that disconnects while a large image streams into its temporary
    file: the relay sees the connection drop, and no .gemimg-*.part file remains."""
    fake_relay.image_style = "noise"  # incompressible: a 2K answer is ~17 MB of base64
    await served_pngs(fake_relay, "warm the relay's image cache", model=TIER_2K)
    fake_relay.body_pause = 0.05  # ~1 s for the whole body: the hang-up comes in its middle
    caller = asyncio.create_task(post_image(http, app, "a storm", save=True, model="2k"))
    await wait_for(lambda: part_files(app.save_dir))
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    [index] = [i for i, r in enumerate(fake_relay.requests) if r.prompt == "a storm"]
    await wait_for(lambda: fake_relay.requests[index].finished is not None)
    assert fake_relay.requests[index].status is None  # the answer was cut off by the client
    await wait_for(lambda: not part_files(app.save_dir))
    assert not [path for path in app.save_dir.iterdir() if path.stat().st_size > 1_000_000]


@pytest.mark.parametrize("name", ["fastapi", "aiohttp"])
async def test_stopping_the_app_lets_a_request_in_flight_finish(name, fake_relay, http, tmp_path):
    """Stopping the app (SIGTERM to uvicorn, the runner's cleanup for aiohttp) while a request
    is in flight lets it finish: it is paid for, and the caller gets its image."""
    fake_relay.latency = 1.0
    async with running(name, fake_relay.url, tmp_path) as app:
        caller = asyncio.create_task(post_image(http, app, "a last fox"))
        await wait_for(lambda: fake_relay.in_flight == 1)
    status, _, body = await caller
    assert status == 200
    assert body.startswith(PNG_SIGNATURE)
    assert [r.status for r in fake_relay.requests] == [200]


async def test_the_fastapi_app_logs_each_event_without_the_key(fake_relay, http, tmp_path):
    """The FastAPI example logs the client's events (sent, answered, finished) with their ids,
    and the key in none of them."""
    async with running("fastapi", fake_relay.url, tmp_path) as app:
        status, _, _ = await post_image(http, app, "a logged fox", save=True)
    assert status == 200
    logs = app.logs()
    for line in ("gemimg request sent", "gemimg answer 200", "gemimg image saved", "done: 1"):
        assert line in logs
    assert fake_relay.requests[0].idempotency_key in logs
    assert "sk-test" not in logs


async def test_the_aiohttp_app_counts_each_event(fake_relay, http, tmp_path):
    """The aiohttp example counts the client's events and serves them, with the pool's gauges,
    at /metrics in Prometheus' text format."""
    fake_relay.script(Fault.server_error(500))  # retried once, then an image
    async with running("aiohttp", fake_relay.url, tmp_path) as app:
        assert (await post_image(http, app, save=True))[0] == 200
        async with http.get(f"{app.url}/metrics") as response:
            text = await response.text()
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines())
    assert metrics["gemimg_requests_sent_total"] == "2"
    assert metrics['gemimg_attempts_failed_total{failure="server",retried="true"}'] == "1"
    assert metrics['gemimg_answers_total{status="200"}'] == "1"
    assert metrics["gemimg_images_saved_total"] == "1"
    assert metrics['gemimg_generations_total{outcome="ok"}'] == "1"
    assert metrics["gemimg_pool_in_flight"] == "0"
    assert metrics["gemimg_pool_limit"] == str(POOL)


async def test_two_workers_with_redis_share_one_pool(http, tmp_path, redis_server):
    """The uvicorn --workers recipe: two FastAPI app processes with GEMIMG_REDIS_URL, 16
    callers spread over both, a pool of 4 each: the relay never sees more than 4 in flight
    from the two together, and every caller gets its image."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    async with FakeRelay(api_keys="sk-test", latency=0.4) as relay:
        redis = {"GEMIMG_REDIS_URL": redis_server.url, "GEMIMG_POOL_TIMEOUT": "60"}
        with (
            fastapi_app(relay.url, tmp_path / "one", **redis) as one,
            fastapi_app(relay.url, tmp_path / "two", **redis) as two,
        ):
            statuses = []

            async def call(app):
                status, _, body = await post_image(http, app, "a crowd")
                statuses.append(status)
                assert status != 200 or body.startswith(PNG_SIGNATURE)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as callers:
                    for i in range(16):
                        callers.start_soon(call, (one, two)[i % 2])
        assert statuses == [200] * 16
        assert relay.generation_count == 16
        assert relay.max_in_flight == POOL
