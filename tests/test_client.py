"""The client facade (`_client`): its configuration, the README's examples, the tier methods and
`send`, and one pool shared by every call; end to end against the fake relay on 127.0.0.1.
"""

import base64

import anyio
import pytest

import gemimg_async as gi
from gemimg_async import (
    ENV_API_KEY,
    ENV_BASE_URL,
    Client,
    ClientClosedError,
    ConfigurationError,
    GemimgError,
    GenerationResult,
    ImageRequest,
    OutcomeUnknownError,
    Timeouts,
)
from gemimg_async.testing import FakeClock, FakeRelay, Fault, png
from helpers import (
    API_KEY,
    PROMPT_4K,
    SECRET,
    STANDARD,
    TIER_2K,
    TIER_4K,
    closed_port_url,
    file_png_size,
    no_temp_files,
    once,
    png_size,
    wait_for,
)

pytestmark = pytest.mark.anyio


# --- configuration -----------------------------------------------------------------------------


async def test_key_and_base_url_fall_back_to_the_environment(relay, monkeypatch):
    """Without arguments, the client reads GEMIMG_API_KEY and GEMIMG_BASE_URL."""
    monkeypatch.setenv(ENV_API_KEY, API_KEY)
    monkeypatch.setenv(ENV_BASE_URL, relay.url)
    async with Client(clock=FakeClock()) as client:
        result = await client.generate("a lighthouse")
    assert len(result.images) == 1
    assert relay.requests[-1].authorized


async def test_arguments_win_over_the_environment(relay, monkeypatch):
    """api_key= and base_url= take precedence over the environment variables."""
    monkeypatch.setenv(ENV_API_KEY, "sk-wrong")
    monkeypatch.setenv(ENV_BASE_URL, closed_port_url())
    async with Client(API_KEY, relay.url, clock=FakeClock()) as client:
        await client.generate("a lighthouse")
    assert relay.requests[-1].authorized


async def test_missing_key_raises_configuration_error(relay, monkeypatch):
    """No key anywhere raises ConfigurationError naming GEMIMG_API_KEY."""
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    with pytest.raises(ConfigurationError, match=ENV_API_KEY):
        Client(base_url=relay.url)


async def test_missing_base_url_raises_configuration_error(monkeypatch):
    """No base URL anywhere raises ConfigurationError naming GEMIMG_BASE_URL."""
    monkeypatch.delenv(ENV_BASE_URL, raising=False)
    with pytest.raises(ConfigurationError, match=ENV_BASE_URL):
        Client(API_KEY)


async def test_empty_environment_variables_count_as_missing(monkeypatch):
    """Empty GEMIMG_* variables raise ConfigurationError, not a broken client."""
    monkeypatch.setenv(ENV_API_KEY, "")
    monkeypatch.setenv(ENV_BASE_URL, "")
    with pytest.raises(ConfigurationError):
        Client()


@pytest.mark.parametrize("key", [" sk-test", "sk-test\n", "sk test"])
async def test_key_with_whitespace_raises_configuration_error(relay, key):
    """A key pasted with whitespace is refused up front."""
    with pytest.raises(ConfigurationError):
        Client(key, relay.url)


@pytest.mark.parametrize("base_url", ["ftp://example.com", "example.com", "https://"])
async def test_unusable_base_url_raises_configuration_error(base_url):
    """A base URL that is not an http(s) URL raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Client(API_KEY, base_url)


async def test_plain_http_to_a_remote_host_is_refused():
    """http:// to a non-loopback host would leak the key: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        Client(API_KEY, "http://api.example.com")


@pytest.mark.parametrize("kwargs", [{"max_concurrency": 0}, {"max_concurrency": -1}, {"rpm": 0}])
async def test_bad_limits_raise_configuration_error(relay, kwargs):
    """A pool of no places, or a zero rate, is a ConfigurationError (a GemimgError)."""
    with pytest.raises(ConfigurationError):
        Client(API_KEY, relay.url, **kwargs)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_works_with_or_without_v1(relay, suffix):
    """The base URL reaches the endpoint written bare, with a slash, or with /v1."""
    async with Client(API_KEY, relay.url + suffix, clock=FakeClock()) as client:
        result = await client.generate("a lighthouse")
    assert len(result.images) == 1
    assert len(relay.requests) == 1


async def test_per_call_timeouts_override_the_client(relay):
    """generate(timeouts=...) applies that read timeout to this call."""
    relay.script(Fault.delay(1.0))
    async with once(relay.url) as client:
        with pytest.raises(OutcomeUnknownError, match="read timeout"):
            await client.generate("a fox", timeouts=Timeouts(read=0.1))
    assert len(relay.requests) == 1


async def test_repr_shows_the_relay_not_the_key(relay):
    """repr(client) names the relay and the pool size, never the key."""
    async with Client(SECRET, relay.url, max_concurrency=3) as client:
        text = repr(client) + str(client)
    assert SECRET not in text
    assert "127.0.0.1" in text
    assert "3" in text


async def test_a_closed_client_refuses_to_send(relay):
    """After aclose, generate raises ClientClosedError and nothing reaches the relay."""
    client = Client(API_KEY, relay.url, clock=FakeClock())
    await client.aclose()
    with pytest.raises(ClientClosedError, match="closed"):
        await client.generate("a lighthouse")
    assert relay.requests == []


# --- README usage ------------------------------------------------------------------------------


async def test_readme_generate_and_save(relay, tmp_path):
    """The README's first example: generate at 16:9, then save the URL image to a folder."""
    async with gi.Client(api_key=API_KEY, base_url=relay.url, max_concurrency=8) as client:
        result = await client.generate("a lighthouse at dusk", size="16:9")
        paths = list((await result.save(str(tmp_path))).paths)
    assert len(paths) == 1
    assert paths[0].parent == tmp_path
    assert paths[0].name == f"{result.stem}_0.png"
    assert file_png_size(paths[0]) == (1376, 768)
    sent = relay.requests[-1]
    assert (sent.model, sent.prompt, sent.size) == (STANDARD, "a lighthouse at dusk", "16:9")


async def test_readme_generate_4k_from_a_local_image(relay, client, tmp_path):
    """generate_4k(..., images=[path]) sends the file as a PNG data URI to the 4K model."""
    source = tmp_path / "photo.png"
    source.write_bytes(png())
    result = await client.generate_4k(PROMPT_4K, size="21:9", images=[source])
    sent = relay.requests[-1]
    assert sent.model == TIER_4K
    assert sent.images == (f"data:image/png;base64,{base64.b64encode(png()).decode()}",)
    paths = list((await result.save(tmp_path / "out")).paths)
    assert file_png_size(paths[0]) == (6336, 2688)


async def test_readme_generate_2k_fuses_two_urls_as_b64(relay, client):
    """generate_2k(..., images=[url1, url2], response_format="b64_json") returns bytes."""
    urls = ["https://img.example.com/person.png", "https://img.example.com/clothes.jpg"]
    result = await client.generate_2k(
        "put the clothes of image 2 on the person of image 1",
        images=urls,
        response_format="b64_json",
    )
    sent = relay.requests[-1]
    assert sent.model == TIER_2K
    assert sent.images == tuple(urls)
    assert sent.response_format == "b64_json"
    [image] = result.images
    assert image.url is None
    assert image.data is not None
    assert png_size(image.data) == (2048, 2048)
    assert (image.media_type, image.width, image.height) == ("image/png", 2048, 2048)


async def test_readme_n_images_saved_as_they_arrive(relay, client, tmp_path):
    """generate("a fox", n=2, save_to=dir) leaves two files and fills result.paths."""
    result = await client.generate("a fox", n=2, save_to=tmp_path)
    assert result.paths == (tmp_path / f"{result.stem}_0.png", tmp_path / f"{result.stem}_1.png")
    for image, path in zip(result.images, result.paths, strict=True):
        assert path.is_file()
        assert image.path == path
        assert image.byte_size == path.stat().st_size
        assert (image.width, image.height) == file_png_size(path) == (1024, 1024)
    assert relay.requests[-1].n == 2
    assert no_temp_files(tmp_path)


# --- the tier methods and send -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "full_name"),
    [("generate", STANDARD), ("generate_2k", TIER_2K), ("generate_4k", TIER_4K)],
)
async def test_tier_methods_pick_their_model(relay, client, method, full_name):
    """generate, generate_2k and generate_4k send the standard, 2K and 4K model."""
    await getattr(client, method)(PROMPT_4K, size="21:9")
    assert relay.requests[-1].model == full_name


async def test_send_takes_a_prepared_request(relay, client, tmp_path):
    """client.send(ImageRequest(...)) generates it; its id names the files."""
    request = ImageRequest("a fox", model="2k", size="1:1", id="poster-7")
    result = await client.send(request, save_to=tmp_path)
    assert result.paths == (tmp_path / "poster-7_0.png",)
    assert relay.requests[-1].model == TIER_2K


# --- one pool for every call -------------------------------------------------------------------


async def test_max_concurrency_caps_requests_in_flight_across_calls():
    """50 generations started at once with max_concurrency=8 keep exactly 8 in flight at most."""
    results: list[GenerationResult] = []
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.15) as relay,
        Client(API_KEY, relay.url, max_concurrency=8, clock=FakeClock()) as client,
    ):

        async def one(i: int) -> None:
            if i % 3 == 0:
                results.append(await client.generate_2k("a fox"))
            elif i % 3 == 1:
                results.append(await client.generate("a fox"))
            else:
                results.append(await client.send(ImageRequest("a fox", id=f"r{i}")))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        stats = client.stats
    assert len(results) == 50
    assert len(relay.requests) == 50
    assert relay.max_in_flight == 8
    assert stats.in_flight == 0
    assert stats.pool_waits > 0


async def test_max_concurrency_is_shared_by_map_and_generate():
    """map() and generate() running together share one pool of max_concurrency places."""
    outcomes = []
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.15) as relay,
        Client(API_KEY, relay.url, max_concurrency=6, clock=FakeClock()) as client,
    ):

        async def mapped() -> None:
            requests = [ImageRequest("a fox", id=f"m{i}") for i in range(15)]
            outcomes.extend([outcome async for outcome in client.map(requests)])

        async with anyio.create_task_group() as tg:
            tg.start_soon(mapped)
            for _ in range(15):
                tg.start_soon(client.generate, "a fox")
    assert len(outcomes) == 15
    assert all(outcome.ok for outcome in outcomes)
    assert len(relay.requests) == 30
    assert relay.max_in_flight == 6


async def test_max_concurrency_one_serialises():
    """max_concurrency=1 sends one generation at a time."""
    async with (
        FakeRelay(api_keys=API_KEY, latency=0.02) as relay,
        Client(API_KEY, relay.url, max_concurrency=1, clock=FakeClock()) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(5):
            tg.start_soon(client.generate, "a fox")
    assert len(relay.requests) == 5
    assert relay.max_in_flight == 1


# --- pool_timeout: a full pool fails fast, having sent nothing ----------------------------------


@pytest.fixture
def slow_relay(relay):
    """The session's relay, taking half a second per generation for this test."""
    relay.latency = 0.5
    yield relay
    relay.latency = 0.0


async def test_a_call_that_finds_the_pool_full_times_out_unsent(slow_relay):
    """Client(pool_timeout=) bounds the wait for a place: PoolTimeoutError (a GemimgError, 503
    for a web backend), nothing sent for it, the clock moved on by exactly that long."""
    clock = FakeClock()
    async with (
        Client(API_KEY, slow_relay.url, max_concurrency=1, pool_timeout=3, clock=clock) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.generate, "first")
        await wait_for(lambda: slow_relay.in_flight == 1)
        with pytest.raises(gi.PoolTimeoutError, match=r"within 3 s.*max_concurrency=1") as info:
            await client.generate("second")
        assert isinstance(info.value, GemimgError)
        assert gi.error_response(info.value).status == 503
        assert clock.sleeps == [3]
    assert [r.prompt for r in slow_relay.requests] == ["first"]


async def second(client, call):
    """Call `call` for a second image, with pool_timeout=0."""
    if call == "send":
        await client.send(ImageRequest("second"), pool_timeout=0)
    elif call == "stream":
        async with client.stream("second", pool_timeout=0):
            pass
    else:
        await getattr(client, call)("second", pool_timeout=0)


@pytest.mark.parametrize("call", ["generate", "generate_2k", "send", "stream"])
async def test_each_call_may_give_its_own_pool_timeout(slow_relay, call):
    """pool_timeout= on generate, generate_2k, send and stream overrides the client's (here
    None, waiting for ever): 0 fails at once while the one place is taken."""
    async with (
        Client(API_KEY, slow_relay.url, max_concurrency=1, clock=FakeClock()) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.generate, "first")
        await wait_for(lambda: slow_relay.in_flight == 1)
        with pytest.raises(gi.PoolTimeoutError, match="within 0 s"):
            await second(client, call)
        assert client.stats.waiting == 0
    assert len(slow_relay.requests) == 1


async def test_a_call_may_wait_without_limit_despite_the_clients_pool_timeout(slow_relay):
    """pool_timeout=None on a call waits for its place however long, whatever the client's."""
    async with (
        Client(
            API_KEY, slow_relay.url, max_concurrency=1, pool_timeout=0, clock=FakeClock()
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.generate, "first")
        await wait_for(lambda: slow_relay.in_flight == 1)
        result = await client.generate("second", pool_timeout=None)
    assert result.images
    assert len(slow_relay.requests) == 2


async def test_a_retry_waits_for_its_place_again_without_the_pool_timeout(relay):
    """Only the first wait is bounded: a request throttled once (maybe sent) waits for its
    place again after the pause however long it takes, and is never cut short as unsent."""
    relay.script(Fault.rate_limited())
    async with Client(
        API_KEY, relay.url, max_concurrency=1, pool_timeout=0, clock=FakeClock()
    ) as client:
        result = await client.generate("a fox")
    assert result.attempts == 2


@pytest.mark.parametrize("bad", [-0.5, "10"])
def test_a_bad_client_pool_timeout_is_refused(relay, bad):
    """Client(pool_timeout=) is None or seconds, 0 or more."""
    with pytest.raises(ConfigurationError, match="pool_timeout"):
        Client(API_KEY, relay.url, pool_timeout=bad)


# --- shutting down: drain what is paid for ------------------------------------------------------


async def test_aclose_with_drain_lets_sent_requests_finish(relay):
    """aclose(drain=) waits for the request in flight (it is paid for); a call still waiting for
    its place is refused unsent; later calls raise ClientClosedError."""
    relay.latency = 0.3
    try:
        client = Client(API_KEY, relay.url, max_concurrency=1, clock=FakeClock())
        async with anyio.create_task_group() as tg:
            outcomes: dict[str, object] = {}

            async def call(name: str) -> None:
                try:
                    outcomes[name] = await client.generate(name)
                except GemimgError as error:
                    outcomes[name] = error

            tg.start_soon(call, "sent")
            await wait_for(lambda: relay.in_flight == 1)
            tg.start_soon(call, "queued")
            await wait_for(lambda: client.stats.waiting == 1)
            await client.aclose(drain=10)
    finally:
        relay.latency = 0.0
    assert isinstance(outcomes["sent"], GenerationResult)
    assert isinstance(outcomes["queued"], ClientClosedError)
    assert [r.prompt for r in relay.requests] == ["sent"]
    with pytest.raises(ClientClosedError):
        await client.generate("later")


async def test_aclose_drain_gives_up_after_its_timeout(relay):
    """A request still in flight when the drain time is up ends as an unknown outcome."""
    relay.latency = 5.0
    try:
        client = Client(API_KEY, relay.url, clock=FakeClock())
        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.generate("slow")
                except GemimgError as error:
                    errors.append(error)

            tg.start_soon(call)
            await wait_for(lambda: relay.in_flight == 1)
            with anyio.fail_after(3):
                await client.aclose(drain=0.2)
    finally:
        relay.latency = 0.0
    assert [type(e) for e in errors] == [OutcomeUnknownError]
