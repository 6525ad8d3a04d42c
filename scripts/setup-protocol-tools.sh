#!/usr/bin/env bash
# Install the real Singer and Airbyte peers the protocol output tests drive
# (target-jsonl, airbyte-protocol-models; pinned in
# scripts/protocol-tools-requirements.txt) from PyPI into
# .tools/protocol-venv. Idempotent: a no-op when those pins are installed.
# About 10 s and 45 MB on a fresh machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.tools/protocol-venv"
req="$here/scripts/protocol-tools-requirements.txt"
if cmp -s "$req" "$venv/requirements.txt" 2>/dev/null \
    && [ -x "$venv/bin/target-jsonl" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi
echo "installing the protocol test peers ($(grep -v '^#' "$req" | xargs)) into $venv" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$venv/requirements.txt"
