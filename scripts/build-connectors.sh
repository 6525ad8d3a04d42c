#!/usr/bin/env bash
# Build the example connectors to WebAssembly components: the Rust ones with Debian's
# rustc-web (build-std; see shared DESIGN §5), then the JavaScript ones
# (scripts/build-js-connectors.sh). Installs the guest toolchain
# first if it is missing. Output: connectors/target/wasm32-unknown-unknown/release/*.wasm
# (the Rust SDK's default, WIT sluice:connector@0.2.0), and the same sources
# built against @0.1.0 (the SDK's `wit-0-1` feature) in
# connectors/target/wit-0.1.0/wasm32-unknown-unknown/release/*.wasm.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup-guest-toolchain.sh"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
# rustup's cargo would shadow Debian's; call Debian's by path.
cd "$here/connectors"
/usr/bin/cargo build --release "$@"
ls -l target/wasm32-unknown-unknown/release/*.wasm
/usr/bin/cargo build --release --features sluice-sdk/wit-0-1 --target-dir target/wit-0.1.0 "$@"
ls -l target/wit-0.1.0/wasm32-unknown-unknown/release/*.wasm
"$here/scripts/build-js-connectors.sh"
"$here/scripts/build-python-connectors.sh"
