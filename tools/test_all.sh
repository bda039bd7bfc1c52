#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, and the whole test suite.
# Usage: bash tools/test_all.sh        (the README's test command; CI runs it through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Set-up: the Rust toolchain components the checks use (no-ops when present).
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --locked
