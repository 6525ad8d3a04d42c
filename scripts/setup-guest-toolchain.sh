#!/usr/bin/env bash
# Install the WASM guest toolchain from Debian's packages (rustup cannot
# download targets here): rustc-web 1.96 + its std sources for build-std,
# wasm-component-ld (shipped with rustc-web) and LLVM 22's wasm-ld.
set -euo pipefail
need=()
[ -x /usr/bin/rustc ] && /usr/bin/rustc --version 2>/dev/null | grep -q '^rustc 1\.9[6-9]' || need+=(rustc-web cargo-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
[ -x /usr/lib/llvm-22/bin/wasm-ld ] || need+=(lld-22)
[ -x /usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld ] || need+=(rustc-web)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing guest toolchain: ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
