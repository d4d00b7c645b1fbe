"""The benchmarks still run: a smoke run of each script, judged on correctness, never on time."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _run(script, *options, timeout=280):
    """The standard output of `benchmarks/{script}` run with `options`, which must succeed."""
    done = subprocess.run(  # noqa: S603 - our own script, run by our own interpreter
        [sys.executable, str(BENCHMARKS / script), *map(str, options)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_memory_benchmark_runs_and_its_files_are_right(tmp_path):
    """`bench_memory.py --quick` finishes, and every file each peer wrote, in every dialect, is
    the relay's PNG."""
    stdout = _run("bench_memory.py", "--quick", "--tmp-dir", str(tmp_path))
    tables = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in stdout.splitlines()
        if line.startswith("| ")
    ]
    header, *rows = [cells for cells in tables if cells[-1] in ("correct", "yes", "no")]
    assert header[-1] == "correct"
    assert {row[0] for row in rows} == {"gemimg_async", "gemimg_chat", "gemimg_gemini", "naive"}
    assert all(row[-1] == "yes" for row in rows)


PEERS = {
    "gemimg_save_to",
    "gemimg_memory",
    "aiohttp_memory",
    "aiohttp_plain",
    "aiohttp_crash_safe",
    "openai",
}


def _rows(text, first_header):
    """The rows of every Markdown table in `text` whose header starts with `first_header`."""
    rows, inside = [], False
    for line in text.splitlines():
        if not line.startswith("| "):
            inside = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_header:
            inside = True
        elif inside and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows


@pytest.mark.timeout(300)
def test_the_side_by_side_benchmark_runs_and_reports_every_peer(tmp_path):
    """`compare.py --quick` finishes, prints a table per workload with every peer, the goal rows
    and the import times, and writes valid JSON (and a PNG chart) with every peer present."""
    pytest.importorskip("openai", reason="the openai peer needs the bench extra")
    results, chart = tmp_path / "compare.json", tmp_path / "compare.png"
    stdout = _run(
        "compare.py", "--quick", "--json", results, "--chart", chart, "--tmp-dir", tmp_path
    )

    data = json.loads(results.read_text())
    workloads = [workload["key"] for workload in data["workloads"]]
    assert {"throughput-b64_json", "throughput-url"} <= set(workloads)
    assert any(key.startswith("fanout-") for key in workloads)
    for key in workloads:
        assert set(data["medians"][key]) == PEERS
        assert all(record["ok"] for record in data["medians"][key].values())
    assert len(data["goals"]) == 4
    assert all(goal["ratio"] is not None for goal in data["goals"])
    assert set(data["imports"]) == {"gemimg_async", "aiohttp", "openai"}

    peer_rows = _rows(stdout, "peer")
    assert len(peer_rows) == len(workloads) * len(PEERS)
    assert {row[0] for row in peer_rows} == PEERS
    assert all(row[-1] == "yes" for row in peer_rows)
    goal_rows = _rows(stdout, "goal")
    assert len(goal_rows) == 4
    assert all(row[4] in ("PASS", "MISS") for row in goal_rows)
    assert {row[0] for row in _rows(stdout, "library")} == set(data["imports"])
    if importlib.util.find_spec("matplotlib"):
        assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_callback_benchmark_runs_and_reports_each_run():
    """`bench_callbacks.py --quick` finishes and prints the longest callback of each run."""
    stdout = _run("bench_callbacks.py", "--quick")
    lines = stdout.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| images")]
    assert [row[1].strip() for row in rows] == ["no", "yes"]
    assert all(int(row[2]) == 2 and float(row[4]) > 0 for row in rows)


def test_the_instruction_count_runs_each_peer_in_quick_mode():
    """`count_instructions.py --quick` runs the worker of every peer it offers (each checks its
    images), in the order it offers them."""
    offered = re.search(r"--peers \{([\w,]+)\}", _run("count_instructions.py", "--help"))
    assert offered is not None
    stdout = _run("count_instructions.py", "--quick")
    ran = [line.split(":")[0] for line in stdout.splitlines() if "ran 10 requests" in line]
    assert ran == offered[1].split(",")
    assert {"aiohttp_memory", "aiohttp_floor", "gemimg_map", "gemimg_map_save_to"} <= set(ran)


def test_the_bytecode_count_names_where_a_peer_executes_more_than_its_like_for_like():
    """`count_instructions.py --bytecodes` counts each peer's bytecodes per request and lists
    the library's own functions where it executes more than the aiohttp loop."""
    stdout = _run("count_instructions.py", "--bytecodes", "--peers", "gemimg_send", "--top", "5")
    totals = dict(re.findall(r"^(\w+): ([\d,]+) bytecodes per request$", stdout, re.MULTILINE))
    assert set(totals) == {"aiohttp_memory", "gemimg_send"}
    assert all(int(value.replace(",", "")) > 1_000 for value in totals.values())
    listed = re.findall(r"^\s+\+\d+  (.+)$", stdout, re.MULTILINE)
    assert len(listed) == 5
    assert any(name.startswith("gemimg_async/") for name in listed)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS")
def test_the_stream_benchmark_runs_and_hands_on_the_relays_png():
    """`bench_stream.py --quick` finishes, and each format hands on the relay's PNG, whole."""
    stdout = _run("bench_stream.py", "--quick")
    rows = _rows(stdout, "format")
    assert {row[0] for row in rows} == {"b64_json", "url"}
    assert all(row[-1] == "yes" for row in rows)


@pytest.mark.timeout(300)
def test_the_upload_benchmark_runs_and_its_objects_are_right():
    """`bench_upload.py --quick` puts the image up by each peer, checks every object against
    it, and prints a row per peer."""
    for name in ("moto", "s3fs"):
        pytest.importorskip(name, reason="the upload benchmark needs moto[server] and s3fs (dev)")
    stdout = _run("bench_upload.py", "--quick")
    rows = [line.split()[0] for line in stdout.splitlines()[2:-1]]
    assert rows == ["gemimg_async", "naive", "batch"]


def test_the_benchmarks_file_check_leaves_out_exactly_our_provenance_chunks(tmp_path):
    """The benchmarks check files against the relay's PNG without gemimg_async's provenance
    chunks: their keywords are the library's, and any other chunk still counts."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_memory  # noqa: PLC0415 - a script beside the tests, not a package
    finally:
        sys.path.remove(str(BENCHMARKS))
    from gemimg_async._pngmeta import itxt  # noqa: PLC0415
    from gemimg_async._provenance import KEYWORDS  # noqa: PLC0415
    from gemimg_async.testing import png  # noqa: PLC0415

    assert {k.encode() for k in KEYWORDS.values()} == bench_memory.PROVENANCE_KEYWORDS
    plain = png(5, 4)
    (tmp_path / "plain.png").write_bytes(plain)
    (tmp_path / "ours.png").write_bytes(plain[:33] + itxt("Model", "m") + plain[33:])
    (tmp_path / "other.png").write_bytes(plain[:33] + itxt("Author", "a") + plain[33:])
    digests = {path.stem: bench_memory._sha256(path) for path in tmp_path.iterdir()}
    assert digests["ours"] == digests["plain"] != digests["other"]


def test_the_base64_benchmark_times_each_codec_and_checks_its_result():
    """`bench_base64.py --quick` names the codec in use and times each one it finds on both
    sizes (it exits with an error if a codec does not give the image back)."""
    stdout = _run("bench_base64.py", "--quick")
    assert re.search(r"^gemimg_async uses (pybase64|binascii)$", stdout, re.MULTILINE)
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ")]
    timed = [row for row in rows if row[1].strip() in {"binascii", "pybase64"}]
    assert {row[0].strip() for row in timed} == {"tiny (22.9 KB)", "1 MB"}
    assert all(float(cell.split()[0]) > 0 for row in timed for cell in row[2:])
