#!/usr/bin/env bash
# First run of the Core ML backend on a real Mac (Apple Silicon, macOS 14.4+ for
# the placement report). Nothing in pomme-coreml has run on Apple hardware
# before this script: it is the smoke test a person with a Mac runs.
#
#   scripts/macos-smoke.sh [RUNS]        # RUNS timed inferences per device (default 20)
#
# It builds pomme, then for every fixture in models/coreml/ (made by
# scripts/make_coreml_fixtures.py):
#   1. `pomme inspect` and `pomme inspect --placement` (Core ML's compute plan),
#   2. `pomme infer --backend coreml --device {cpu,gpu,ane}` on the same random
#      input, checks gpu / ane outputs against cpu within a tolerance (float16 on
#      the GPU and ANE), and
#   3. prints a latency table (median and p90 wall time of `pomme infer` runs, so
#      it includes process start and model load from the compile cache).
# Needs python3 with numpy (to write .npy inputs and compare outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${1:-20}"
RTOL="${RTOL:-2e-2}"
ATOL="${ATOL:-2e-2}"
if [ "$(uname -s)" != Darwin ]; then
  echo "macos-smoke: run this on macOS (this is $(uname -s))" >&2
  exit 1
fi
[ "$(uname -m)" = arm64 ] || echo "macos-smoke: not Apple Silicon: the ANE column will fall back" >&2
python3 -c 'import numpy' 2>/dev/null || { echo "macos-smoke: needs python3 with numpy" >&2; exit 1; }

cargo build --release -p pomme-cli
POMME="${POMME:-target/release/pomme}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export POMME_CACHE_DIR="$WORK/cache"

sw_vers || true
sysctl -n machdep.cpu.brand_string || true

# name: input name, input shape (the default shape of flexible inputs)
declare -A INPUT=(
  [nn_dense.mlmodel]="x 4 float64"
  [pipeline.mlmodel]="x 4 float64"
  [mlp_program.mlpackage]="x 1,8 float32"
  [enumerated.mlpackage]="x 2,3,8,8 float32"
  [range.mlpackage]="x 1,3,16 float32"
)

FAIL=0
TABLE="$WORK/table.txt"
printf '%-24s %-6s %10s %10s %s\n' model device "p50 ms" "p90 ms" "max |diff| vs cpu" > "$TABLE"
for model in nn_dense.mlmodel pipeline.mlmodel mlp_program.mlpackage enumerated.mlpackage range.mlpackage; do
  path="models/coreml/$model"
  read -r name shape dtype <<< "${INPUT[$model]}"
  echo "== $model"
  "$POMME" inspect "$path" || FAIL=1
  echo "-- placement"
  "$POMME" inspect --placement "$path" || echo "(placement report unavailable)"
  python3 - "$WORK/$model.npy" "$shape" "$dtype" <<'PY'
import sys, numpy as np
shape = tuple(int(s) for s in sys.argv[2].split(","))
np.save(sys.argv[1], np.random.default_rng(0).standard_normal(shape).astype(sys.argv[3]))
PY
  for dev in cpu gpu ane; do
    out="$WORK/out-$model-$dev"
    times="$WORK/times-$model-$dev"
    : > "$times"
    for i in $(seq "$RUNS"); do
      t0=$(python3 -c 'import time; print(time.perf_counter())')
      if ! "$POMME" infer "$path" --input "$name=$WORK/$model.npy" --backend coreml --device "$dev" -o "$out" > /dev/null; then
        echo "FAIL: infer $model on $dev" >&2
        FAIL=1
        break
      fi
      python3 -c "import time; print((time.perf_counter() - $t0) * 1000)" >> "$times"
    done
    diff="-"
    if [ "$dev" != cpu ] && [ -d "$out" ]; then
      diff=$(python3 - "$WORK/out-$model-cpu" "$out" "$RTOL" "$ATOL" <<'PY' || echo MISMATCH
import sys, os, numpy as np
ref, got, rtol, atol = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
worst = 0.0
for f in sorted(os.listdir(ref)):
    if not f.endswith(".npy"):
        continue
    a, b = np.load(os.path.join(ref, f)).astype(np.float64), np.load(os.path.join(got, f)).astype(np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
        print("MISMATCH"); sys.exit(1)
    worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
print(f"{worst:.3g}")
PY
)
      [ "$diff" = MISMATCH ] && FAIL=1
    fi
    python3 - "$times" "$model" "$dev" "$diff" >> "$TABLE" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
p = lambda q: v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
print(f"{sys.argv[2]:<24} {sys.argv[3]:<6} {p(0.5):>10.2f} {p(0.9):>10.2f} {sys.argv[4]}")
PY
  done
done
echo
cat "$TABLE"
if [ "$FAIL" != 0 ]; then
  echo "macos-smoke: FAILED (see above)" >&2
  exit 1
fi
echo "macos-smoke: all fixtures ran on cpu, gpu and ane and matched cpu"
