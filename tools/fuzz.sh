#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time and prints, per target, how many
# inputs it executed and what it found (crash, timeout and out-of-memory artifacts).
#
# Usage: bash tools/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; where only a stable
# toolchain is installed it runs that one with RUSTC_BOOTSTRAP=1 (the sanitizer and coverage
# flags cargo-fuzz passes are nightly-only). When cargo-fuzz is missing (for instance on an
# offline machine) it says so and exits 0: it is a developer tool, not a CI gate.
# Exit status otherwise: 0 nothing found, 1 findings (their files are listed; reproduce one
# with `cargo +nightly fuzz run TARGET ARTIFACT`), 2 usage or build error.
# Inputs the fuzzer finds go to fuzz/corpus/TARGET (ignored by git); fuzz/seeds/TARGET seeds it.
set -uo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
  echo "usage: bash tools/fuzz.sh [SECONDS_PER_TARGET]  (a positive whole number)" >&2
  exit 2
fi

if cargo +nightly --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  echo "fuzz: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi
if ! cargo "${toolchain[@]}" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz; needs network)."
  exit 0
fi

targets=$(cargo "${toolchain[@]}" fuzz list 2>/dev/null)
if [ -z "$targets" ]; then
  echo "fuzz: no targets found in fuzz/" >&2
  exit 2
fi

mkdir -p fuzz/artifacts
echo "fuzz: building targets"
if ! cargo "${toolchain[@]}" fuzz build >/dev/null 2>fuzz/artifacts/build.log; then
  echo "fuzz: build failed, see fuzz/artifacts/build.log" >&2
  exit 2
fi

total_findings=0
summary=""
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  log="fuzz/artifacts/$t.log"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  echo "fuzz: $t for ${secs}s"
  cargo "${toolchain[@]}" fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  [ -z "$execs" ] && execs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#')
  after=$(ls "fuzz/artifacts/$t" | wc -l)
  found=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$found" -eq 0 ]; then
    # A failing run that left no artifact (a build or start-up problem) still counts.
    found=1
  fi
  total_findings=$((total_findings + found))
  summary+=$(printf '%-10s executions %-12s findings %s' "$t" "${execs:-?}" "$found")$'\n'
  if [ "$found" -gt 0 ]; then
    echo "  findings in fuzz/artifacts/$t (log: $log):"
    ls -t "fuzz/artifacts/$t" | head -n "$found" | sed 's/^/    /'
  fi
done

echo "== fuzz summary (${secs}s per target)"
printf '%s' "$summary"
if [ "$total_findings" -gt 0 ]; then
  exit 1
fi
echo "no findings"
