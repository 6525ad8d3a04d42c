#!/usr/bin/env bash
# Screenshots of the dashboard (docs/dashboard-*.png): the browser test that
# walks every page of a known database saves a PNG of each page when
# SLUICE_SCREENSHOTS_DIR is set. Needs the guests and the binaries built
# (`just screenshots` builds them first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-chromium.sh
SLUICE_SCREENSHOTS_DIR="$PWD/docs" cargo test -p sluice --test it -- \
    --exact serve::dashboard::every_page_shows_a_known_database_and_run_now_runs
ls -l docs/dashboard-*.png
