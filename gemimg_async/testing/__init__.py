"""A fake relay for tests, demos and benchmarks: a real HTTP server on the current event loop.

`FakeRelay` speaks the relay API (``POST /v1/images/generations``) on 127.0.0.1, answers with real
PNG images sized like the real tiers, serves ``url`` answers from ``GET /files/<token>.png``, and
records every request. `Fault` values scripted with `FakeRelay.script` (generations) and
`FakeRelay.script_download` (file downloads) make the next requests misbehave the way relays do:
error statuses, dropped connections, truncated bodies, slow answers, odd answer shapes.

Use it in your own tests, offline (with an ``anyio_backend`` fixture returning ``"asyncio"``)::

    import pytest
    from gemimg_async.testing import FakeRelay, Fault

    @pytest.mark.anyio
    async def test_my_app_survives_a_rate_limit():
        async with FakeRelay() as relay:
            relay.script(Fault.rate_limited("1"))
            await my_app.make_poster(base_url=relay.url, api_key="sk-test")
            assert [r.status for r in relay.requests] == [429, 200]
            assert relay.downloads[0].authorization is None

Order of work for a generation request: the next scripted fault is taken when the request arrives
(whatever the request turns out to be); ``Fault.reset(after_body=False)`` acts at once; the body is
read; ``Fault.reset()`` acts; a missing or wrong key answers 401 and an invalid body 400, at once;
everything else first waits ``latency`` (plus a ``Fault.delay``), then answers as the fault says.

`FakeRelay(response_cost=0.1)` says what each answer cost in LiteLLM's `x-litellm-response-cost`
header; `FakeRelay(c2pa=True)` marks its images with a C2PA manifest (a `caBX` chunk), as Google
does, and so does `png(c2pa=True)`.

`FakeClock` (the client's own, re-exported) makes the client's waits instant. `RelayThread` runs
a relay in a thread of its own (for synchronous code). Installed with the package, the pytest
plugin `gemimg_async.testing.plugin` gives the fixtures `fake_relay` and `gemimg_client`.

Images are cached per process by (size, style, palette), bounded by bytes; rendering and base64
encoding run in a worker thread so the event loop does not stall on a 4K image.
"""

from __future__ import annotations

from .._clock import FakeClock
from ._faults import GEMINI_QUIRKS, QUIRKS, Fault, Quirk
from ._images import MODELS, RATIOS, pixel_size, png
from ._records import RecordedDownload, RecordedRequest
from ._relay import FakeRelay, serve
from ._threaded import RelayThread

__all__ = [
    "GEMINI_QUIRKS",
    "MODELS",
    "QUIRKS",
    "RATIOS",
    "FakeClock",
    "FakeRelay",
    "Fault",
    "Quirk",
    "RecordedDownload",
    "RecordedRequest",
    "RelayThread",
    "pixel_size",
    "png",
    "serve",
]
