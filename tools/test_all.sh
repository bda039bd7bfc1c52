#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, and the whole test suite.
# Usage: bash tools/test_all.sh        (the README's test command; CI runs it through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Set-up: the Rust toolchain components the checks use (no-ops when present).
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Set-up: a C compiler with AddressSanitizer/UndefinedBehaviorSanitizer runtimes for the C API
# tests (sd-ffi/tests/c_api.rs). gcc 12 on Debian ships them as libasan8/libubsan1; install them
# only when a sanitized probe program cannot be built, and only where apt-get can run.
sanitizers_ok() {
  local dir
  dir=$(mktemp -d)
  printf 'int main(void) { return 0; }\n' >"$dir/p.c"
  cc -fsanitize=address,undefined "$dir/p.c" -o "$dir/p" >/dev/null 2>&1 && "$dir/p"
  local rc=$?
  rm -rf "$dir"
  return $rc
}
if ! sanitizers_ok && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq gcc libasan8 libubsan1) >/dev/null 2>&1 || true
fi
if sanitizers_ok; then
  # The C API tests fail, rather than run unsanitized, if the sanitizers stop working.
  export SDRS_REQUIRE_SANITIZERS=1
else
  echo "note: no ASan/UBSan runtime; the C API tests run without sanitizers"
fi

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
# Includes sd-ffi's tests/header_up_to_date.rs (the committed include/sdrs.h is current) and
# tests/c_api.rs, which compiles sd-ffi/tests/c/*.c and examples/c/txt2img.c with
# -Wall -Wextra -Wpedantic -Werror against the header and libsdrs.a (built by this same cargo
# invocation) and runs them under ASan (leak detection on) and UBSan.
# `cargo test` does not emit sd-ffi's staticlib; the C tests link target/debug/libsdrs.a.
cargo build -p sd-ffi --locked
cargo test --workspace --locked

echo "== cuda feature (builds with no CUDA toolkit; GPU tests skip without a device)"
# With SDRS_INSTALL_NVRTC=1 the NVRTC wheel is installed (tools/install_nvrtc.sh, ~90 MB download)
# and every kernel is compiled for sm_80/sm_90 with register-spill checks, required to run.
if [ "${SDRS_INSTALL_NVRTC:-0}" = 1 ]; then
  export LD_LIBRARY_PATH="$(bash tools/install_nvrtc.sh | tail -n 1):${LD_LIBRARY_PATH:-}"
  export SDRS_REQUIRE_NVRTC=1
fi
cargo clippy --workspace --all-targets --locked --features cuda -- -D warnings
cargo test -p sd-core --locked --features cuda --test cuda_kernels_compile --test cuda_ops \
  --test cuda_pipeline
cargo test --locked --features cuda --test cuda_prompt --test adapters_cuda

echo "== python package (maturin develop + stubtest + pytest)"
bash tools/test_python.sh
