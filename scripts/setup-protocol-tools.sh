#!/usr/bin/env bash
# Install the real Singer and Airbyte peers the protocol output tests drive
# from PyPI, each set into its own venv:
# - target-jsonl and airbyte-protocol-models (pinned in
#   scripts/protocol-tools-requirements.txt) into .tools/protocol-venv,
#   about 10 s and 45 MB on a fresh machine;
# - Meltano (pinned in scripts/meltano-requirements.txt) into
#   .tools/meltano-venv, about 15-40 s and 160 MB.
# Idempotent: a venv whose pins are installed is left as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

# install VENV REQUIREMENTS EXECUTABLE: make VENV from REQUIREMENTS unless
# it was made from this very file and has EXECUTABLE.
install() {
    local venv="$here/.tools/$1" req="$here/scripts/$2" exe="$3"
    local pins
    pins="$(grep -v '^#' "$req" | xargs)"
    if cmp -s "$req" "$venv/requirements.txt" 2>/dev/null \
        && [ -x "$venv/bin/$exe" ] && [ -x "$venv/bin/python" ]; then
        echo "$pins: installed in $venv" >&2
        return 0
    fi
    echo "installing $pins into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
}

install protocol-venv protocol-tools-requirements.txt target-jsonl
install meltano-venv meltano-requirements.txt meltano
