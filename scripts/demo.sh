#!/usr/bin/env bash
# The main job on a fresh machine: install with scripts/setup.sh, then run `vidrec demo`.
# The demo starts the local Elasticsearch node and ingests MovieLens latest-small from the folder given.
# It trains the collaborative model and the ranker, starts the API with two ranking workers on
# 127.0.0.1 and prints recommendations for a few users. Extra arguments go to `vidrec demo` (try --serve).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/vidrec" demo "$@"
