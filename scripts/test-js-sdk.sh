#!/usr/bin/env bash
# Unit tests of the JavaScript SDK (sdk/js) and of github-issues-js's pure
# functions under Node's test runner, against a fake host (sdk/js/test).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup-js-guest.sh"
exec node "$here/sdk/js/test/run.mjs"
