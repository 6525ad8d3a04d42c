#!/usr/bin/env bash
# The demo on Postgres: start a throwaway PostgreSQL cluster on 127.0.0.1
# (scripts/pg-cluster.sh, in a temp dir), run the demo into it
# (--db postgres://…), show the rows with psql, stop the cluster.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mktemp -d)"
trap '"$root/scripts/pg-cluster.sh" stop "$dir/pg" || true; rm -rf "$dir"' EXIT
url="$("$root/scripts/pg-cluster.sh" start "$dir/pg")"
echo "== a throwaway PostgreSQL server at $url"
SLUICE_DB="$url" "$root/scripts/demo.sh"
