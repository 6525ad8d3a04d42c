#!/usr/bin/env bash
# The crate layering of README's "Architecture": dependencies point one
# way (core <- wasm, store <- runner <- server <- cli). Cargo already refuses a cycle;
# this refuses a dependency that points the wrong way or drags a sandbox
# or a database into a crate that must stay without one.
set -euo pipefail
cd "$(dirname "$0")/.."

deps() {
    cargo tree -p "$1" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u
}

forbid() {
    local crate=$1
    shift
    local have
    have=$(deps "$crate")
    for bad in "$@"; do
        if grep -qx "$bad" <<<"$have"; then
            echo "layering: $crate must not depend on $bad (see README, Architecture)" >&2
            exit 1
        fi
    done
}

forbid sluice-core wasmtime wasmtime-wasi rusqlite reqwest sluice-wasm sluice-store sluice-runner sluice-server sluice
forbid sluice-wasm rusqlite sluice-store sluice-runner sluice-server sluice
forbid sluice-store wasmtime reqwest sluice-wasm sluice-runner sluice-server sluice
forbid sluice-runner sluice-server sluice
forbid sluice-server sluice
echo "layering ok: core <- wasm, store <- runner <- server <- cli"
