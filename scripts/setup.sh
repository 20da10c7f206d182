#!/usr/bin/env bash
# Install what vidrec needs on a Debian or Ubuntu machine, idempotently:
#   - system packages (Maven fetches Elasticsearch; docker-compose checks the compose file),
#   - a Python 3.11 virtual environment from requirements.lock, cached outside the clone
#     under $VIDREC_CACHE_DIR (default ~/.cache/vidrec) and keyed by the lock file's hash,
#   - .venv in the repository as a link to that environment.
# A second run with an unchanged lock file only re-links vidrec itself (seconds).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VIDREC_CACHE_DIR:-$HOME/.cache/vidrec}"
mkdir -p "$cache"

say() { printf '[setup] %s\n' "$*"; }

# System packages, only where missing.
missing=()
command -v mvn >/dev/null || missing+=(maven)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v python3.11 >/dev/null || missing+=(python3.11 python3.11-venv)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
        say "missing system packages: ${missing[*]}; install them (apt-get install ${missing[*]}) and run again"
        exit 1
    fi
    say "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python environment keyed by the lock file.
key="$(cat "$repo/requirements.lock" | sha256sum | cut -c1-16)"
venv="$cache/venv-$key"
if [[ ! -f "$venv/.complete" ]]; then
    say "creating $venv from requirements.lock (torch and its CUDA libraries are several GB; first time only)"
    rm -rf "$venv"
    python3.11 -m venv "$venv"
    PIP_CACHE_DIR="$cache/pip" "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --no-deps -r "$repo/requirements.lock"
    touch "$venv/.complete"
else
    say "reusing $venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$repo" 2>/dev/null \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$repo"
ln -sfn "$venv" "$repo/.venv"
say "ready: $repo/.venv -> $venv"
