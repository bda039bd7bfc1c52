#!/usr/bin/env bash
# Builds what a GPU machine without Rust needs to check and time the CUDA backend, into .gpu/
# (git-ignored; pass it in the device tool's `carry`, 64 MiB at most):
#   .gpu/cuda_ops               GPU op-by-op tests against the CPU (f32/f16/bf16, poisoned outputs)
#   .gpu/cuda_kernels_compile   NVRTC compile + spill checks
#   .gpu/cuda_pipeline          whole generations on the GPU against the CPU (tiny fixture model)
#   .gpu/cuda_prompt            the A1111 prompt path on the GPU against the CPU
#   .gpu/adapters_cuda          textual inversion and hypernetworks on the GPU against references
#   .gpu/cuda_bench             UNet step / VAE decode / 20-step image timings (release)
#   .gpu/run.sh                 runs them with the CUDA 13 libraries on LD_LIBRARY_PATH
# Usage: tools/build_cuda_bundle.sh      (then, on the GPU machine: bash .gpu/run.sh [bench|sanitize])
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu

tests_json="$(cargo test -p sd-core --features cuda --test cuda_ops --test cuda_kernels_compile \
    --test cuda_pipeline --no-run --message-format=json 2>/dev/null)"
for name in cuda_ops cuda_kernels_compile cuda_pipeline; do
    exe="$(printf '%s\n' "$tests_json" | grep '"executable":"[^"]*'"$name"'-' \
        | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -n 1)"
    [ -n "$exe" ] || { echo "test binary $name not found" >&2; exit 1; }
    cp "$exe" ".gpu/$name"
done
root_json="$(cargo test --features cuda --test cuda_prompt --test adapters_cuda \
    --no-run --message-format=json 2>/dev/null)"
for name in cuda_prompt adapters_cuda; do
    exe="$(printf '%s\n' "$root_json" | grep '"executable":"[^"]*'"$name"'-' \
        | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -n 1)"
    [ -n "$exe" ] || { echo "test binary $name not found" >&2; exit 1; }
    cp "$exe" ".gpu/$name"
done
cargo build --release --features cuda --example cuda_bench
cp target/release/examples/cuda_bench .gpu/cuda_bench
strip .gpu/cuda_ops .gpu/cuda_kernels_compile .gpu/cuda_pipeline .gpu/cuda_prompt \
    .gpu/adapters_cuda .gpu/cuda_bench 2>/dev/null || true

cat > .gpu/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the CUDA checks (and with `bench`, the timings) on a GPU machine.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
libs=/usr/local/cuda/lib64
for d in $(python3 -c 'import nvidia, os; b = os.path.dirname(nvidia.__path__[0]); print(" ".join(os.path.join(b, "nvidia", x, "lib") for x in ("cu13", "cublas", "cuda_nvrtc")))' 2>/dev/null); do
    libs="$libs:$d"
done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
export SDRS_CUDA_CACHE="$here/cache" SDRS_REQUIRE_NVRTC=1
nvidia-smi -L || true
"$here/cuda_kernels_compile" --nocapture
"$here/cuda_ops" --test-threads 1 --nocapture
# The whole-pipeline tests find the fixtures under the repository (run from its root).
export SDRS_FIXTURES="$PWD/tests/fixtures"
"$here/cuda_pipeline" --nocapture
"$here/cuda_prompt" --nocapture
"$here/adapters_cuda" --nocapture
if [ "${1:-}" = bench ]; then
    "$here/cuda_bench" --runs 5
fi
if [ "${1:-}" = sanitize ]; then
    # Out-of-bounds accesses and shared-memory races in every kernel the op tests launch.
    compute-sanitizer --tool memcheck --error-exitcode 1 "$here/cuda_ops" --test-threads 1
    compute-sanitizer --tool racecheck --error-exitcode 1 "$here/cuda_ops" --test-threads 1 attention
fi
RUN
chmod +x .gpu/run.sh
ls -la .gpu
du -sh .gpu
for f in .gpu/cuda_ops .gpu/cuda_bench; do
    echo "$f needs: $(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)"
done
