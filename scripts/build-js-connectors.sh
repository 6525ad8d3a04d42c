#!/usr/bin/env bash
# Build JavaScript connectors to WebAssembly components.
#
#   scripts/build-js-connectors.sh                  every connectors/*-js/ -> connectors/target/components/
#   scripts/build-js-connectors.sh [--out DIR] PROJECT_DIR...   the given connector projects
#
# A connector project is a directory with src/index.js (the entry module,
# exporting the world's functions, usually through the SDK's
# exportConnector) and a package.json. The component is named after the
# directory, `-` replaced by `_` (github-issues-js -> github_issues_js.wasm).
#
# Steps: install the toolchain (scripts/setup-js-guest.sh); bundle the entry
# with esbuild, `@sluice/sdk` resolved to the project's own sdk/index.js if it
# has one (what `sluice new` writes), else this repository's sdk/js/src/index.js;
# then componentize-qjs (QuickJS) builds the component from the bundle and the
# WIT world `source` of the project's wit/ if it has one, else this
# repository's wit/0.1.0/. Bindings come from the WIT at build time; nothing is
# generated into the source tree.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup-js-guest.sh"
bin="$here/.tools/js-guest/node_modules/.bin"

# shellcheck source=guest-projects.sh
. "$here/scripts/guest-projects.sh"
guest_projects -js src/index.js 18 "$@"

for d in "${dirs[@]}"; do
    d="$(cd "$d" && pwd)"
    project_paths "$d" src/index.js
    sdk="$here/sdk/js/src/index.js"
    [ -f "$d/sdk/index.js" ] && sdk="$d/sdk/index.js"
    work="$out/.js-build/$snake"
    mkdir -p "$work"
    start=$(date +%s%N)
    "$bin/esbuild" "$d/src/index.js" --bundle --format=esm --platform=neutral \
        --target=es2022 --log-level=warning \
        --external:'sluice:*' --external:'wasi:*' \
        --alias:@sluice/sdk="$sdk" \
        --outfile="$work/bundle.js"
    "$bin/componentize-qjs" --wit "$wit" --world source --js "$work/bundle.js" --sync \
        -o "$out/$snake.wasm" >/dev/null
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    printf "%s -> %s (%s bytes, %d ms)\n" "$name" "$out/$snake.wasm" \
        "$(stat -c %s "$out/$snake.wasm")" "$ms"
done
