#!/usr/bin/env bash
# Installs the committed HEAD (not the working tree) into a private folder and prints the PYTHONPATH line, so
# long benchmark runs are immune to edits made while they run:  eval "$(bash scripts/snapshot.sh /tmp/snap)"
set -euo pipefail
dest=${1:-/tmp/edgeq-snapshot}
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dest" && mkdir -p "$dest"
git -C "$repo" archive HEAD | tar -x -C "$dest" --one-top-level=src
python3 -m pip install -q --no-deps --no-build-isolation --target "$dest/site" "$dest/src" >/dev/null 2>&1
git -C "$repo" rev-parse --short HEAD >"$dest/site/edgeq/COMMIT"  # benchmarks record it even without EDGEQ_COMMIT
echo "export PYTHONPATH=$dest/site; export EDGEQ_COMMIT=$(git -C "$repo" rev-parse --short HEAD)"
