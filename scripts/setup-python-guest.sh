#!/usr/bin/env bash
# Install the Python guest toolchain: componentize-py (pinned) from PyPI into
# .tools/py-guest. Idempotent: a no-op when that version is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
COMPONENTIZE_PY_VERSION=0.25.1
venv="$here/.tools/py-guest"
bin="$venv/bin/componentize-py"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    exit 0
fi
echo "installing the Python guest toolchain (componentize-py $COMPONENTIZE_PY_VERSION) into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
