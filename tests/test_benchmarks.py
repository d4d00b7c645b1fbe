"""The benchmarks still run: a smoke run of each script, judged on correctness, never on time."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_the_memory_benchmark_runs_and_its_files_are_right(tmp_path):
    """`bench_memory.py --quick` finishes, and every file each peer wrote is the relay's PNG."""
    script = BENCHMARKS / "bench_memory.py"
    done = subprocess.run(  # noqa: S603 - our own script, run by our own interpreter
        [sys.executable, str(script), "--quick", "--tmp-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tables = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| ")
    ]
    header, *rows = [cells for cells in tables if cells[-1] in ("correct", "yes", "no")]
    assert header[-1] == "correct"
    assert {row[0] for row in rows} == {"gemimg_async", "naive"}
    assert all(row[-1] == "yes" for row in rows)
