"""Every Python example in the README runs as written, against the fake relay.

Each ```python block is written to a file and run by a fresh interpreter in a folder of its own,
with GEMIMG_API_KEY and GEMIMG_BASE_URL naming the test's relay. The only edits are the relay's
address and key where a block spells them out (`"https://api.example.com"`, `"sk-..."`). The
folder holds what the examples open: `photo.jpg`, `prompts.jsonl`, `relay-prices.toml`. A block
that defines pytest tests is run by pytest, with the package's plugin. A block that needs a
service says so in a first-line comment, `# needs: redis` or `# needs: s3`, and spells its
address as in SERVICES: the test starts the service (a real redis-server, moto's S3) and puts
its address there. The `gemimg-async` lines of each ```console block run in order, in a shell.
"""

import os
import re
import sys
from pathlib import Path

import anyio
import pytest

from gemimg_async.testing import FakeRelay, png
from helpers import API_KEY

pytestmark = pytest.mark.anyio

README = Path(__file__).parent.parent / "README.md"


def _fenced(kind: str) -> list[str]:
    """The README's ```kind blocks."""
    pattern = rf"^```{kind}\n(.*?)^```"
    return re.findall(pattern, README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


BLOCKS = _fenced("python")
COMMANDS = [
    lines
    for block in _fenced("console")
    if (lines := [line[2:] for line in block.splitlines() if line.startswith("$ gemimg-async ")])
]
SERVICES = {"redis": ("redis_server", "redis://localhost:6379"), "s3": ("s3", "s3://my-bucket/out")}
"""What a `# needs:` comment names: the fixture that starts it, and the address a block spells."""
PRICES = '1K = 0.1\n4K = 0.2\ncurrency = "USD"\n'


def _needs(block: str) -> str | None:
    found = re.match(r"# needs: (\w+)", block)
    return found[1] if found else None


def _line(block: str) -> int:
    """The README line a block starts on, for a test's id."""
    text = README.read_text(encoding="utf-8")
    return text[: text.index(block)].count("\n") + 1


def _folder(path: Path, relay: FakeRelay) -> dict[str, str]:
    """Put what the examples open into `path`; the environment they run in."""
    (path / "photo.jpg").write_bytes(png(64, 48))
    (path / "prompts.jsonl").write_text('{"prompt": "a fox"}\n{"prompt": "a heron"}\n')
    (path / "relay-prices.toml").write_text(PRICES)
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "GEMIMG_API_KEY": API_KEY,
        "GEMIMG_BASE_URL": relay.url,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_the_readme_has_examples_to_run():
    """The README's examples are found (a changed fence would silently test nothing)."""
    assert len(BLOCKS) >= 7
    assert sum("asyncio.run(main())" in block for block in BLOCKS) >= 5
    assert sum(map(len, COMMANDS)) >= 5


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            block,
            id=f"line-{_line(block)}",
            marks=[pytest.mark.ray] * ("gemimg_async.ray" in block),
        )
        for block in BLOCKS
    ],
)
async def test_a_readme_example_runs_as_written(relay: FakeRelay, tmp_path, request, block):
    """The block exits 0 against the fake relay, and every request it sent was answered."""
    if needs := _needs(block):
        fixture, address = SERVICES[needs]
        service = request.getfixturevalue(fixture)
        block = block.replace(address, service if isinstance(service, str) else service.url)
    source = block.replace('"https://api.example.com"', repr(relay.url)).replace(
        '"sk-..."', repr(API_KEY)
    )
    env = _folder(tmp_path, relay)
    if "def test_" in source:
        (tmp_path / "test_example.py").write_text(source)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "no:asyncio", "-W", "error", "test_example.py"]  # anyio's plugin
    else:
        (tmp_path / "example.py").write_text(source)
        command = [sys.executable, "example.py"]
    done = await anyio.run_process(command, cwd=tmp_path, env=env, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert all(request.status == 200 for request in relay.requests)
    if "FakeRelay(" not in block and "def test_" not in block:  # the blocks that use our relay
        assert relay.requests


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "lines", COMMANDS, ids=[lines[0].split("#")[0].strip() for lines in COMMANDS]
)
async def test_the_readme_command_lines_run_as_written(relay: FakeRelay, tmp_path, lines):
    """Each `gemimg-async` line of a console block exits 0 in a shell, in order, against the
    fake relay, with no traceback."""
    env = _folder(tmp_path, relay)
    for line in lines:
        done = await anyio.run_process(["bash", "-c", line], cwd=tmp_path, env=env, check=False)
        output = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, f"{line}\n{output[-3000:]}"
        assert "Traceback" not in output
