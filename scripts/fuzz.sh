#!/usr/bin/env bash
# Builds pomme's cargo-fuzz targets (fuzz/) and runs each for a bounded time,
# from the committed seeds (fuzz/seeds/<target>) plus the local corpus
# (fuzz/corpus/<target>, git-ignored, grows between runs).
#
#   FUZZ_SECONDS=120 bash scripts/fuzz.sh            # every target, 120 s each
#   FUZZ_SECONDS=30 bash scripts/fuzz.sh http_infer  # one target
#   FUZZ_SEED=1 ...                                  # fixed libFuzzer seed (CI)
#
# Needs a nightly toolchain and cargo-fuzz; installs them when it can, and
# exits 0 with a SKIP line when it cannot (e.g. no network to rustup's server).
# A crash exits non-zero and leaves the input in fuzz/artifacts/<target>/.
# Built with `-s none` (no AddressSanitizer: pomme's own crates are safe Rust,
# and ASan would halve the executions per second on a 2-core machine) and
# `-a` (debug assertions and overflow checks on, so arithmetic overflow is a crash).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-20}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    echo "SKIP fuzz: no nightly toolchain and it cannot be installed here"
    exit 0
  fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet || { echo "SKIP fuzz: cargo-fuzz cannot be installed"; exit 0; }
fi

cd fuzz
# The targets that need files (models, packages, repositories) write one
# scratch path per process under /dev/shm (or $TMPDIR); remove them at exit.
scratch_dir=/dev/shm
[ -d "$scratch_dir" ] || scratch_dir=${TMPDIR:-/tmp}
trap 'rm -rf "$scratch_dir"/pomme-fuzz-*' EXIT
nice -n 10 cargo +nightly fuzz build -s none -a
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p target/logs
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: over 2 GiB is an OOM.
  if nice -n 10 cargo +nightly fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_SEED:+-seed=$FUZZ_SEED} \
      >"target/logs/$t.log" 2>&1; then
    result=ok
  else
    result="CRASH (see fuzz/target/logs/$t.log, fuzz/artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "target/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "target/logs/$t.log" | tail -n1 | grep -o '[0-9]*' || echo '?')
  echo "fuzz $t: ${SECS}s, $execs execs ($rate/s), cov $cov, $result"
done
exit $status
