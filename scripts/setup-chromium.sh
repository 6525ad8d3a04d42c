#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the dashboard's browser
# tests (tests/it/dashboard.rs drive /usr/bin/chromium headless through
# /usr/bin/chromedriver) and for scripts/screenshots.sh. Idempotent: quick
# when both are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
echo "installing Chromium (Debian's chromium and chromium-driver packages)" >&2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
# Another apt may hold the lock for a while (a parallel setup step).
for _ in $(seq 1 60); do
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null && break
    sleep 5
done
command -v chromium >/dev/null && command -v chromedriver >/dev/null || {
    echo "setup-chromium: chromium and chromedriver are not on the PATH after apt-get install" >&2
    exit 1
}
