#!/usr/bin/env bash
# Install what vidrec needs on a Debian or Ubuntu machine, idempotently:
#   - system packages (Maven fetches Elasticsearch; docker-compose checks the compose file),
#   - a Python 3.11 virtual environment synced to requirements.lock, cached outside the clone
#     under $VIDREC_CACHE_DIR (default ~/.cache/vidrec) and keyed by the lock file's hash,
#   - .venv in the repository as a link to that environment.
# A second run with an unchanged lock file only re-installs vidrec itself (seconds).
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

# Python environment in the cache, keyed by the lock file. The venv records the SHA-256 of the
# requirements.lock it was synced to. A changed lock installs only the packages that changed, so
# torch and its CUDA libraries (several GB) are downloaded once.
lock="$repo/requirements.lock"
key="$(sha256sum "$lock" | cut -d' ' -f1)"
venv="$cache/venv-py311"
if [[ ! -x "$venv/bin/python" ]]; then
    say "creating $venv (first time only)"
    python3.11 -m venv "$venv"
fi
if [[ "$(cat "$venv/.lock-sha256" 2>/dev/null)" != "$key" ]]; then
    if [[ -f "$venv/.lock-sha256" ]]; then
        say "requirements.lock changed: installing the packages that differ into $venv"
    else
        say "installing requirements.lock into $venv (first time: several GB for torch and its CUDA libraries)"
    fi
    rm -f "$venv/.lock-sha256"
    PIP_CACHE_DIR="$cache/pip" "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --no-deps -r "$lock"
    # Remove packages an older lock had and this one lacks.
    names() { cut -d= -f1 | tr 'A-Z_' 'a-z-' | sort -u; }
    extra="$(comm -23 <("$venv/bin/pip" freeze --all --exclude-editable | names) \
        <(grep -v '^#' "$lock" | names) | grep -vx vidrec || true)"
    if [[ -n "$extra" ]]; then
        say "removing packages the lock no longer lists: $(echo $extra)"
        echo "$extra" | xargs "$venv/bin/pip" uninstall --quiet -y
    fi
    echo "$key" > "$venv/.lock-sha256"
else
    say "reusing $venv (requirements.lock unchanged)"
fi
# setuptools warns about every editable install; the warning is not about this project.
PYTHONWARNINGS=ignore "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$repo"
ln -sfn "$venv" "$repo/.venv"
say "ready: $repo/.venv -> $venv"
