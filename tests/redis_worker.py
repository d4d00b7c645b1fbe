"""One of the separate processes of tests/test_redis.py, sharing limits through a RedisLimiter.

    python redis_worker.py '{"mode": "run", ...}'   requests to a relay, each under a lease
    python redis_worker.py '{"mode": "hold", ...}'  take leases and keep them until killed
    python redis_worker.py '{"mode": "client", ...}'  a gi.Client(limiter=RedisLimiter(...))

"run" prints "ready", waits for the file `go` to exist, then for each of its `phases` sends
`requests` POSTs at once (a plain aiohttp POST each, inside a lease and after its start) and
waits for them; it ends with a JSON line of the statuses.
"client" prints "ready", waits for `go`, then makes `requests` client.generate calls at once
through a Client of `max_concurrency` and `rpm` whose limiter is a RedisLimiter; it ends with a
JSON line of how many got images.
"hold" takes `hold` leases, prints "held", and sleeps (renewing them) until it is killed.
"""

import json
import sys

import aiohttp
import anyio

from gemimg_async import Client, RedisLimiter

AUTH = {"Authorization": "Bearer sk-test"}
BODY = {"prompt": "a lighthouse", "response_format": "url"}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(config: dict) -> None:
    limiter = RedisLimiter(config["redis"], prefix=config["prefix"], lease_ttl=config["ttl"])
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def one(phase: dict) -> None:
            lease = await limiter.acquire(phase["key"], config["max_concurrency"])
            try:
                await limiter.start(phase["key"], phase["rpm"])
                url = config["relay"] + "/v1/images/generations"
                body = {**BODY, "model": phase["model"]}
                async with session.post(url, json=body, headers=AUTH) as response:
                    await response.read()
                    statuses.append(response.status)
            finally:
                await limiter.release(lease)

        say("ready")
        while not await anyio.Path(config["go"]).exists():  # noqa: ASYNC110 - another process's
            await anyio.sleep(0.01)
        for phase in config["phases"]:
            async with anyio.create_task_group() as group:
                for _ in range(phase["requests"]):
                    group.start_soon(one, phase)
    await limiter.aclose()
    say(json.dumps({"statuses": statuses, "waits": limiter.waits}))


async def hold(config: dict) -> None:
    limiter = RedisLimiter(config["redis"], prefix=config["prefix"], lease_ttl=config["ttl"])
    for _ in range(config["hold"]):
        await limiter.acquire(config["key"], config["max_concurrency"])
    say("held")
    await anyio.sleep_forever()


async def client(config: dict) -> None:
    limiter = RedisLimiter(config["redis"], prefix=config["prefix"], lease_ttl=config["ttl"])
    images: list[int] = []
    options = {"max_concurrency": config["max_concurrency"], "rpm": config["rpm"]}
    async with Client("sk-test", config["relay"], limiter=limiter, **options) as gi_client:

        async def one() -> None:
            images.append(len((await gi_client.generate("a lighthouse")).images))

        say("ready")
        while not await anyio.Path(config["go"]).exists():  # noqa: ASYNC110 - another process's
            await anyio.sleep(0.01)
        async with anyio.create_task_group() as group:
            for _ in range(config["requests"]):
                group.start_soon(one)
    await limiter.aclose()
    say(json.dumps({"images": images}))


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    anyio.run({"run": run, "hold": hold, "client": client}[settings["mode"]], settings)
