# Sluice tasks. On a fresh machine run them through ./scripts/just, which
# installs `just` with cargo first.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Fixture port for the demo (0 = any free port).
demo_port := env_var_or_default("SLUICE_DEMO_PORT", "0")

default:
    @just --list

# Install what the build needs: the WASM guest toolchain (Debian packages)
# the JavaScript guest toolchain (npm, into .tools/js-guest) and the Python
# one (componentize-py from PyPI, into .tools/py-guest), Debian's
# PostgreSQL server for the Postgres destination's tests (which start
# throwaway clusters with scripts/pg-cluster.sh), and the Singer/Airbyte
# peers of the protocol output tests (target-jsonl and
# airbyte-protocol-models from PyPI, into .tools/protocol-venv; Meltano,
# into .tools/meltano-venv), and Debian's Chromium and ChromeDriver for the
# dashboard's browser tests.
setup:
    scripts/setup-guest-toolchain.sh
    scripts/setup-js-guest.sh
    scripts/setup-python-guest.sh
    scripts/setup-postgres.sh
    scripts/setup-protocol-tools.sh
    scripts/setup-chromium.sh

# Build the example connectors to WebAssembly components.
build-connectors: setup
    scripts/build-connectors.sh

# Build the runtime, the CLI and the fixture servers.
build:
    cargo build --workspace --all-targets

# The benchmark harness: Sluice vs dlt, a seed-style Python pipeline and a
# native Rust pipeline on one fixture API, plus warm start, RSS and
# concurrency figures (docs/benchmarks.md). Pass harness flags after it,
# e.g. `just bench --records 200000 --rss`.
bench *ARGS: setup
    scripts/bench.sh {{ARGS}}

# `sluice serve` over a long run history (default 100,000 runs): dashboard
# page and runs-API times, and the API under 50 concurrent clients; with
# `--scheduled 1000 --minutes 10`, 1,000 scheduled instances on one server
# (docs/benchmarks.md). E.g. `just bench-serve --runs 0 --scheduled 1000`.
bench-serve *ARGS: build-connectors
    cargo build --release --quiet -p sluice -p sluice-bench
    target/release/serve-pages {{ARGS}}

# Set up, build, start the fixture upstream on 127.0.0.1, run open-meteo into sluice.db.
demo: build-connectors build
    scripts/demo.sh

# The demo into a throwaway PostgreSQL server on 127.0.0.1 (started and
# stopped by scripts/pg-cluster.sh) instead of ./sluice.db.
demo-postgres: build-connectors build
    scripts/demo-postgres.sh

# Screenshots of the dashboard's pages (docs/dashboard-*.png), taken by its
# browser test in headless Chromium.
screenshots: build-connectors build
    scripts/screenshots.sh

# Formatting and lints (host workspace and guest crates).
lint:
    cargo fmt --all -- --check
    cd connectors && cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    scripts/check-layers.sh

# The whole test suite: lints, guest builds, host tests, guest unit tests.
test: lint build-connectors build
    scripts/test-js-sdk.sh
    cargo test --workspace
    cd connectors && cargo test --target x86_64-unknown-linux-gnu
    cd connectors && cargo test --target x86_64-unknown-linux-gnu -p sluice-sdk
