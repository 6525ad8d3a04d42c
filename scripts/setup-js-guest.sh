#!/usr/bin/env bash
# Install the JavaScript guest toolchain (sdk/js/toolchain: esbuild and
# componentize-qjs, exact versions from its package-lock.json) into
# .tools/js-guest with `npm ci`. Idempotent: does nothing when the installed
# lock file equals the committed one. Needs Node.js >= 18 and npm.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="$here/sdk/js/toolchain"
dest="$here/.tools/js-guest"
if [ -x "$dest/node_modules/.bin/componentize-qjs" ] && [ -x "$dest/node_modules/.bin/esbuild" ] \
    && cmp -s "$src/package-lock.json" "$dest/package-lock.json"; then
    exit 0
fi
command -v npm >/dev/null || { echo "error: npm not found (install Node.js >= 18 and npm)" >&2; exit 1; }
echo "installing the JS guest toolchain into $dest" >&2
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --loglevel=error >&2)
