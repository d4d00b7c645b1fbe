#!/usr/bin/env bash
# `make demo`: start the built-in fake relay, run a bulk job of the bundled prompts and one
# image-to-image generation (from one of the batch's own images) against it, and list the real
# images written to ./out/ with their pixel sizes. Run it again: the batch resumes (nothing is
# sent twice) and the image-to-image step starts from the same batch image.
set -euo pipefail
bin=${1:-.venv/bin}
url_file=$(mktemp)
"$bin/gemimg-async" fake-server --port 0 --latency 0.5 --url-file "$url_file" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$url_file"' EXIT
for _ in $(seq 100); do [ -s "$url_file" ] && break; sleep 0.1; done
[ -s "$url_file" ] || { echo "the fake relay did not start" >&2; exit 1; }

export GEMIMG_BASE_URL; GEMIMG_BASE_URL=$(cat "$url_file")
export GEMIMG_API_KEY=sk-test # the fake relay's key; a real one belongs in your environment
echo "fake relay at $GEMIMG_BASE_URL"

echo "== gemimg-async batch examples/prompts.jsonl --out out"
"$bin/gemimg-async" batch examples/prompts.jsonl --out out || [ $? -eq 1 ]

# The input of the image-to-image step: the lighthouse job's image, as the manifest records it
# (never a file of an earlier demo run's own making).
first=$("$bin/python" - <<'PY'
import gemimg_async as gi

entry = gi.read_manifest("out/manifest.jsonl")["lighthouse"]
print(f"out/{entry.paths[0]}")
PY
)
echo "== gemimg-async generate ... --image $first --model 2k --format b64_json"
"$bin/gemimg-async" generate "the same scene as an oil painting" --image "$first" \
  --model 2k --size 16:9 --format b64_json --out out

echo "== what is in ./out"
"$bin/python" - <<'PY'
import struct
from pathlib import Path

import gemimg_async as gi


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk (bytes 16 to 24)."""
    return struct.unpack(">II", path.read_bytes()[16:24])


saved = gi.read_manifest("out/manifest.jsonl")
for path in sorted(Path("out").glob("*.png")):
    width, height = png_size(path)
    job = path.stem.rpartition("_")[0]
    origin = f"job {job}" if job in saved else "generate"
    print(f"{path}  {width}x{height}  {path.stat().st_size:>9,} bytes  ({origin})")
print(f"manifest: {Path('out/manifest.jsonl').resolve()}")
PY
