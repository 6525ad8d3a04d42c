#!/usr/bin/env bash
# Build Python connectors to WebAssembly components.
#
#   scripts/build-python-connectors.sh                  every connectors/*-py/ -> connectors/target/components/
#   scripts/build-python-connectors.sh [--out DIR] PROJECT_DIR...   the given connector projects
#
# A connector project is a directory with app.py, whose `WitWorld` class
# (made by `sluice_sdk.export(YourConnector)`) implements the world. The
# component is named after the directory, `-` replaced by `_`
# (github-issues-py -> github_issues_py.wasm).
#
# componentize-py (installed by scripts/setup-python-guest.sh) generates the
# bindings from the project's wit/ if it has one (what `sluice new` writes),
# else this repository's wit/0.1.0/, at build time: nothing generated is kept in
# the source tree. `sluice_sdk` is the project's own copy if it has one,
# else this repository's sdk/python.
#
# componentize-py cannot link a world export named `read` (it collides
# with libc's `read`), so the build uses a copy of the world whose export is
# `read-records` and renames the component's export back to `read` with
# tools/rename-export (built here on first use).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup-python-guest.sh"
bin="$here/.tools/py-guest/bin/componentize-py"
rename="${CARGO_TARGET_DIR:-$here/target}/debug/rename-export"
if [ ! -x "$rename" ] || [ -n "$(find "$here/tools/rename-export" -newer "$rename" -type f)" ]; then
    (cd "$here" && cargo build --quiet -p rename-export)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=guest-projects.sh
. "$here/scripts/guest-projects.sh"
guest_projects -py app.py 21 "$@"

for d in "${dirs[@]}"; do
    d="$(cd "$d" && pwd)"
    project_paths "$d" app.py
    rm -rf "$work/wit" && cp -r "$wit" "$work/wit"
    sed -i 's/^\( *\)export read: func/\1export read-records: func/' "$work/wit/world.wit"
    grep -q 'export read-records: func' "$work/wit/world.wit" ||
        { echo "error: $wit/world.wit has no \`export read: func\`" >&2; exit 1; }
    sdk="$here/sdk/python"
    [ -d "$d/sluice_sdk" ] && sdk="$d"
    start=$(date +%s%N)
    (cd "$d" && "$bin" -d "$work/wit" -w source componentize -p "$d" -p "$sdk" app \
        -o "$work/app.wasm" >/dev/null)
    "$rename" "$work/app.wasm" "$out/$snake.wasm" read-records=read
    end=$(date +%s%N)
    printf "%s -> %s (%s bytes, %d ms)\n" "$name" "$out/$snake.wasm" \
        "$(stat -c %s "$out/$snake.wasm")" "$(( (end - start) / 1000000 ))"
done
