#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each one.
#
#   fuzz/run.sh [SECONDS] [TARGET...]   each target for SECONDS (default 30); targets
#                                       default to all: fuzz_safetensors fuzz_json
#   fuzz/run.sh --check                 exit 0 if the toolchain is there (clang with
#                                       libFuzzer and OpenMP), else say what is missing
#
# Build dir: $DIFFRL_FUZZ_BUILD (default build-fuzz). The seed corpus in
# fuzz/corpus/<name>/ is read, never written: new inputs go to <build>/corpus/<target>/,
# crashes to <build>/artifacts/<target>/ (reproduce: <build>/fuzz/<target> FILE).
set -euo pipefail
cd "$(dirname "$0")/.."

check_toolchain() {
  if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz/run.sh: clang is not installed (apt-get install clang libomp-dev)"
    return 1
  fi
  local tmp
  tmp=$(mktemp -d)
  printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' >"$tmp/t.c"
  if ! clang -fsanitize=fuzzer,address,undefined -fopenmp "$tmp/t.c" -o "$tmp/t" 2>"$tmp/err"; then
    echo "fuzz/run.sh: clang cannot build a libFuzzer + OpenMP program (apt-get install libomp-dev):"
    sed 's/^/  /' "$tmp/err" | head -5
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp"
}

if [ "${1:-}" = "--check" ]; then
  check_toolchain
  exit $?
fi
case "${1:-}" in -h|--help) sed -n '2,11p' "$0"; exit 0 ;; esac

seconds=${1:-30}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_safetensors fuzz_json fuzz_clip_tokenizer fuzz_png fuzz_jpeg fuzz_tar fuzz_zip fuzz_pickle fuzz_wordpiece)
check_toolchain || exit 2

build=${DIFFRL_FUZZ_BUILD:-build-fuzz}
mkdir -p "$build"
if ! { cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DDIFFRL_FUZZ=ON -DDIFFRL_CUDA=OFF \
         -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"; } >"$build/build.log" 2>&1; then
  echo "fuzz/run.sh: the build failed; the end of $build/build.log:"
  tail -n 30 "$build/build.log"
  exit 1
fi

for t in "${targets[@]}"; do
  seeds=fuzz/corpus/${t#fuzz_}
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t/
  mkdir -p "$corpus" "$artifacts"
  echo "== $t: ${seconds}s (seeds $seeds, corpus $corpus)"
  log=$build/$t.log
  status=0
  OMP_NUM_THREADS=1 "$build/fuzz/$t" -max_total_time="$seconds" -dict=fuzz/json.dict \
    -max_len=8192 -timeout=10 -artifact_prefix="$artifacts" -print_final_stats=1 \
    "$corpus" "$seeds" >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|new_units_added)' "$log" || true
  if [ "$status" != 0 ]; then
    echo "fuzz/run.sh: $t failed (exit $status); the end of $log:"
    tail -n 40 "$log"
    exit 1
  fi
done
echo "fuzz/run.sh: no failures"
