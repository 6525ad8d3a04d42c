#!/usr/bin/env bash
# `just bench`: build release binaries and the items connector, install the
# Python peers (dlt with its sqlalchemy and postgres extras, and
# requests/pydantic/SQLAlchemy for the seed-style pipeline; pinned in
# bench/peers/requirements.txt) into .tools/bench-venv,
# then run the harness (bench/src/main.rs). With PostgreSQL installed
# (scripts/setup-postgres.sh), the harness adds the Postgres contestants on a
# throwaway cluster of its own. Arguments go to the harness:
#   scripts/bench.sh [--records N] [--rounds N] [--no-python] [--no-postgres]
#                    [--rss] [--concurrency N]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
venv="$here/.tools/bench-venv"
req="$here/bench/peers/requirements.txt"
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
    echo "installing the Python peers into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi
scripts/build-connectors.sh >/dev/null
cargo build --release --quiet -p sluice -p sluice-bench
exec target/release/sluice-bench "$@"
