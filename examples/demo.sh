#!/usr/bin/env bash
# `make demo`: start the built-in fake relay, run a bulk job of the bundled prompts and one
# image-to-image generation against it, and list the real PNGs written to ./out/.
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

echo "== gemimg-async generate ... --image <first image> --model 2k --format b64_json"
first=$(ls out/*.png | head -n 1)
"$bin/gemimg-async" generate "the same scene as an oil painting" --image "$first" \
  --model 2k --size 16:9 --format b64_json --out out

echo "== what is in ./out"
"$bin/python" - <<'PY'
from pathlib import Path

from gemimg_async._media import sniff

for path in sorted(Path("out").glob("*.png")):
    info = sniff(path.read_bytes()[:64])
    print(f"{path}  {info.width}x{info.height}  {path.stat().st_size:>9,} bytes")
print(f"manifest: {Path('out/manifest.jsonl').resolve()}")
PY
