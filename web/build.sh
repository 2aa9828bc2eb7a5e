#!/usr/bin/env bash
# Builds the web demo into web/dist: the crate compiled to wasm32 with wasm-bindgen, plus the page.
# Needs: rustup target wasm32-unknown-unknown, and wasm-bindgen-cli at the version in Cargo.lock
# (cargo install wasm-bindgen-cli --version <that version>).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "wasm-bindgen-cli $want is needed (found '${have:-none}'): cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
cargo build -p segloss-web --target wasm32-unknown-unknown --release
rm -rf web/dist
mkdir -p web/dist/pkg
wasm-bindgen --target web --no-typescript --out-dir web/dist/pkg target/wasm32-unknown-unknown/release/segloss_web.wasm
cp web/index.html web/app.js web/dist/
echo "built web/dist ($(du -sh web/dist | cut -f1)); serve it with any static server, e.g. python3 -m http.server -d web/dist"
