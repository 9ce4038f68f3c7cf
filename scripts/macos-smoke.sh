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
# Then it builds the Core AI backend's Swift shim (crates/pomme-coreai/swift,
# never built before), checks how CoreAI.framework is linked and, on macOS 27+,
# runs crates/pomme-coreai/tests/shim.rs and `pomme infer --backend coreai`
# through the shim on cpu, gpu and ane (models/coreai/mlp.aimodel).
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

# name: input name, input shape (the default shape of flexible inputs).
# A function, not an associative array: macOS's own bash is 3.2.
input_for() {
  case "$1" in
    nn_dense.mlmodel | pipeline.mlmodel) echo "x 4 float64" ;;
    mlp_program.mlpackage) echo "x 1,8 float32" ;;
    enumerated.mlpackage) echo "x 2,3,8,8 float32" ;;
    range.mlpackage) echo "x 1,3,16 float32" ;;
  esac
}

FAIL=0
TABLE="$WORK/table.txt"
printf '%-24s %-6s %10s %10s %s\n' model device "p50 ms" "p90 ms" "max |diff| vs cpu" > "$TABLE"
for model in nn_dense.mlmodel pipeline.mlmodel mlp_program.mlpackage enumerated.mlpackage range.mlpackage; do
  path="models/coreml/$model"
  read -r name shape dtype <<< "$(input_for "$model")"
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

# --- Core AI through pomme's Swift shim (crates/pomme-coreai/swift) ----------
# Written from Apple's documentation and never built before this script: this
# is its first build and run. It needs Xcode with the macOS 27 SDK to build
# and macOS 27 to run.
echo "== Core AI: building the Swift shim (POMME_COREAI_REQUIRE_SHIM=1)"
MACOS_MAJOR=$(sw_vers -productVersion 2>/dev/null | cut -d. -f1)
SDK_VERSION=$(xcrun --sdk macosx --show-sdk-version 2>/dev/null || echo 0)
if [ "$(echo "$SDK_VERSION" | cut -d. -f1)" -lt 27 ]; then
  echo "SKIP: the Swift shim needs the macOS 27 SDK (Xcode 27); this SDK is $SDK_VERSION"
elif POMME_COREAI_REQUIRE_SHIM=1 cargo build --release -p pomme-cli; then
  # Weak: a pomme built with the shim still starts on macOS < 27.
  link=$(otool -l "$POMME" | awk '/ cmd LC_/ { cmd = $2 } /CoreAI.framework/ { print cmd; exit }')
  case "$link" in
    LC_LOAD_WEAK_DYLIB) echo "CoreAI.framework is weak-linked ($link): pomme starts on macOS < 27" ;;
    "") echo "NOTE: CoreAI.framework is not among pomme's load commands" >&2 ;;
    *) echo "NOTE: CoreAI.framework is linked with $link, not weakly: pomme will not start on macOS < 27" >&2 ;;
  esac
  if [ "${MACOS_MAJOR:-0}" -lt 27 ]; then
    echo "(macOS $(sw_vers -productVersion): no CoreAI.framework, so the shim cannot run here; skipping its tests)"
    "$POMME" devices || true
  else
    out="$WORK/shim-tests.txt"
    if POMME_COREAI_REQUIRE_SHIM=1 cargo test --release -p pomme-coreai --test shim -- --nocapture >"$out" 2>&1; then
      cat "$out"
      if ! grep -q "through the Swift shim" "$out"; then
        echo "FAIL: the shim was built but its probe found no CoreAI.framework on macOS $MACOS_MAJOR" >&2
        FAIL=1
      fi
    else
      cat "$out"
      echo "FAIL: tests/shim.rs through the shim" >&2
      FAIL=1
    fi
    # Alone: does Core AI turn a call past the signature into an error, or trap
    # (which, in-process, ends pomme)?
    if POMME_COREAI_REQUIRE_SHIM=1 cargo test --release -p pomme-coreai --test shim -- \
      --ignored a_call_past_the_signature_is_an_error --nocapture; then
      echo "Core AI on macOS returned an error for a call past the signature (no crash)"
    else
      echo "NOTE: a call past the signature ended the test process: in-process, it would end pomme" >&2
    fi
    "$POMME" devices || FAIL=1
    "$POMME" inspect models/coreai/mlp.aimodel || FAIL=1
    python3 - "$WORK/coreai-x.npy" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).standard_normal((4, 32)).astype("float32"))
PY
    for dev in cpu gpu ane; do
      out="$WORK/out-coreai-$dev"
      times="$WORK/times-coreai-$dev"
      : > "$times"
      for i in $(seq "$RUNS"); do
        t0=$(python3 -c 'import time; print(time.perf_counter())')
        if ! "$POMME" infer models/coreai/mlp.aimodel --input "x=$WORK/coreai-x.npy" --backend coreai \
          --backend-option bridge=shim --device "$dev" -o "$out" > /dev/null; then
          echo "FAIL: infer coreai mlp on $dev through the shim" >&2
          FAIL=1
          break
        fi
        python3 -c "import time; print((time.perf_counter() - $t0) * 1000)" >> "$times"
      done
      diff="-"
      if [ "$dev" != cpu ] && [ -d "$out" ]; then
        diff=$(python3 - "$WORK/out-coreai-cpu/y.npy" "$out/y.npy" "$RTOL" "$ATOL" <<'PY' || echo MISMATCH
import sys, numpy as np
a, b = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2]).astype(np.float64)
if a.shape != b.shape or not np.allclose(a, b, rtol=float(sys.argv[3]), atol=float(sys.argv[4])):
    print("MISMATCH"); sys.exit(1)
print(f"{float(np.max(np.abs(a - b))):.3g}")
PY
)
        [ "$diff" = MISMATCH ] && FAIL=1
      fi
      python3 - "$times" "coreai:mlp (shim)" "$dev" "$diff" >> "$TABLE" <<'PY'
import sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
p = lambda q: v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
print(f"{sys.argv[2]:<24} {sys.argv[3]:<6} {p(0.5):>10.2f} {p(0.9):>10.2f} {sys.argv[4]}")
PY
    done
  fi
else
  echo "FAIL: the Swift shim did not build (see swiftc's errors above)" >&2
  FAIL=1
fi

echo
cat "$TABLE"
if [ "$FAIL" != 0 ]; then
  echo "macos-smoke: FAILED (see above)" >&2
  exit 1
fi
echo "macos-smoke: all fixtures ran on cpu, gpu and ane and matched cpu (Core AI: through the Swift shim where macOS has CoreAI.framework)"
