#!/usr/bin/env bash
# The demo: start the Open-Meteo fixture on 127.0.0.1, run the open-meteo
# connector in the sandbox into ./sluice.db twice (the second run resumes
# from state and changes nothing), and show the run history. SLUICE_DB
# picks another database: a file, or a postgres:// URL (default schema, as
# scripts/demo-postgres.sh does).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="$root/target/debug"
wasm="$root/connectors/target/wasm32-unknown-unknown/release/open_meteo.wasm"
db="${SLUICE_DB:-$root/sluice.db}"
port="${SLUICE_DEMO_PORT:-0}"

log="$(mktemp)"
"$bin/sluice-fixture" open-meteo --port "$port" >"$log" 2>&1 &
fixture=$!
trap 'kill $fixture 2>/dev/null || true; rm -f "$log" "${config:-}"' EXIT
for _ in $(seq 50); do
    grep -q '^listening on' "$log" && break
    sleep 0.1
done
url="$(sed -n 's/^listening on //p' "$log")"
[ -n "$url" ] || { echo "fixture did not start: $(cat "$log")" >&2; exit 1; }
hostport="${url#http://}"

config="$(mktemp --suffix=.json)"
cat >"$config" <<JSON
{
  "base_url": "$url",
  "locations": [
    {"name": "berlin", "latitude": 52.52, "longitude": 13.41},
    {"name": "lisbon", "latitude": 38.72, "longitude": -9.14},
    {"name": "tokyo", "latitude": 35.69, "longitude": 139.69}
  ],
  "hourly": ["temperature_2m", "relative_humidity_2m", "precipitation", "wind_speed_10m"],
  "past_days": 2,
  "forecast_days": 7
}
JSON

echo "== sluice spec"
"$bin/sluice" spec "$wasm"
echo
echo "== sluice run (fixture upstream at $url, database $db)"
"$bin/sluice" run "$wasm" --config "$config" --db "$db" --allow-host "$hostport"
echo
echo "== sluice run again: resumes from the committed cursor, upserts idempotently"
"$bin/sluice" run "$wasm" --config "$config" --db "$db" --allow-host "$hostport"
echo
echo "== sluice runs"
"$bin/sluice" runs --db "$db" --limit 5
echo
case "$db" in
postgres://* | postgresql://*)
    psql "$db" -X -q -c "SELECT count(*) AS rows, count(DISTINCT (location, time)) AS distinct_keys FROM open_meteo__hourly_weather" \
        -c "SELECT location, time, temperature_2m, wind_speed_10m FROM open_meteo__hourly_weather ORDER BY time, location LIMIT 3"
    ;;
*)
    python3 - "$db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n, keys = db.execute("SELECT count(*), count(DISTINCT location || time) FROM open_meteo__hourly_weather").fetchone()
print(f"open_meteo__hourly_weather: {n} rows, {keys} distinct (location, time) keys")
for row in db.execute("SELECT location, time, temperature_2m, wind_speed_10m FROM open_meteo__hourly_weather ORDER BY time, location LIMIT 3"):
    print("  ", row)
PY
    ;;
esac
