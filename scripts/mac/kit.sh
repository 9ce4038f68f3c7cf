#!/bin/sh
# The Mac proof kit: what a Mac user runs to prove what pomme does on Apple Silicon.
#
#   scripts/mac/kit.sh [--quick] [--out DIR] [--duration S] [--models "mobilenet_v2 resnet50 ..."]
#
# WRITTEN, NOT RUN ON A MAC: every macOS step below was written from Apple's and
# pomme's documentation on Linux, where only model generation, the environment
# record and the report ran (CI checks this file with shellcheck, dash -n and
# bash --posix -n, and tests make_models.py and report.py). The first Mac run is
# its test; whatever fails there is named in the report.
#
# POSIX sh (macOS's /bin/sh, bash 3.2, dash): no arrays, no `local`, no `timeout`.
# Needs only what macOS ships (the Command Line Tools' python3, swiftc, curl) plus
# cargo. It creates its own venv (.venv-mackit) for coremltools, onnx and
# onnxruntime (and Apple's coreai-core where macOS has Core AI), then:
#   1. models: MobileNetV2, ResNet-50 (fp16 ML Programs), a MiniLM-size encoder (fixed
#      sequence length), an image classifier and a stateful model, generated here by
#      scripts/mac/make_models.py, plus the same networks as ONNX;
#   2. placement: `pomme inspect --placement` of each model; the model fails when Core
#      ML's compute plan puts less than its min_ane_share on the Neural Engine (the
#      ops that fell off are printed), and pomme loads it with min_ane_share set;
#   3. outputs: `pomme infer` on cpu, gpu and ane (Core ML) and through ONNX Runtime's
#      CoreML EP, each compared with the CPU within float16 tolerances;
#   4. warm latency, side by side: `pomme bench --backend coreml --device cpu|gpu|ane`
#      at batch 1 and 8 against a direct Swift program (scripts/mac/Direct.swift, built
#      here with swiftc), coremltools' predict, and ONNX Runtime's CoreML EP through
#      pomme and through its Python API;
#   5. served: `pomme serve` with MobileNetV2 on the ANE under `pomme bench --url` at
#      concurrency 1, 8 and 32, and the stateful model's state across one sequence of
#      three requests (scripts/mac/sequence.py) in a server of its own;
#      and the repository's Core ML fixtures (models/coreml: arrays, pipeline, flexible
#      shapes, image classifiers with HWC and NCHW (image_layout=nchw) uint8 images,
#      the Int64 mapping, the stateful and multifunction models) through `pomme infer`
#      on cpu, gpu and ane, each compared with its cpu run;
#   6. energy: with root (`sudo -v` just before), powermetrics during each bench;
#   7. Core AI (macOS 27): the Swift shim's build and tests, and `pomme bench
#      --backend coreai` on cpu, gpu and ane;
# and writes DIR/mac-report.json and DIR/mac-report.md (default DIR: mac-report/).
# A step that cannot run says why in one line and the kit goes on. Exit 1 when a
# check failed, 0 when all passed.
#
# Environment: POMME (a pomme binary; default: built here with cargo), PYTHON (the
# python3 for the venv), POMME_KIT_VENV (the venv, default .venv-mackit; CI's tests
# point it at .venv-mac), POMME_KIT_PORT (first of three ports, default 18000).
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)

OUT=mac-report
DURATION=5
WARMUP=2
QUICK=0
MODELS="mobilenet_v2 resnet50 encoder image_classifier stateful"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=2; WARMUP=1 ;;
    --out | --duration | --models)
      if [ $# -lt 2 ]; then echo "kit: $1 needs a value" >&2; exit 2; fi
      case "$1" in --out) OUT=$2 ;; --duration) DURATION=$2 ;; --models) MODELS=$2 ;; esac
      shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "kit: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
STEPS="$OUT/steps"
MODELS_DIR="$OUT/models"
VENV=${POMME_KIT_VENV:-$ROOT/.venv-mackit}
PORT=${POMME_KIT_PORT:-18000}
rm -rf "$STEPS"
mkdir -p "$STEPS/placement" "$STEPS/bench" "$STEPS/outputs" "$STEPS/served" "$STEPS/energy" "$STEPS/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pomme-kit.XXXXXX") || exit 2
SERVER_PID=""
KEEPALIVE_PID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; fi
  if [ -n "$KEEPALIVE_PID" ]; then kill "$KEEPALIVE_PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# log STEP ok|fail|skip MESSAGE: one line on the terminal and in steps/log.tsv.
log() {
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STEPS/log.tsv"
  printf '%-5s %-34s %s\n' "$2" "$1" "$3"
}
say() { printf '\n== %s\n' "$1"; }

# --- what this machine is ------------------------------------------------------------------------
OS=$(uname -s)
ARCH=$(uname -m)
MAC=0
if [ "$OS" = Darwin ] && [ "$ARCH" = arm64 ]; then
  MAC=1
  log platform ok "$(sysctl -n machdep.cpu.brand_string 2>/dev/null), macOS $(sw_vers -productVersion 2>/dev/null) ($(sw_vers -buildVersion 2>/dev/null))"
elif [ "$OS" = Darwin ]; then
  log platform skip "an Intel Mac has no Neural Engine: the ane rows fall back to CPU/GPU"
  MAC=1
else
  log platform skip "this is $OS/$ARCH: every Core ML, Swift and powermetrics step needs macOS; models and report only"
fi
# Energy needs root for powermetrics. Asked here, at the start: sudo's credentials
# (`sudo -v` just before the kit) are kept fresh while the kit runs, since building
# pomme alone may outlast sudo's 5-minute timeout.
ENERGY=0
SUDO=""
if [ "$MAC" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    ENERGY=1
  elif sudo -n true 2>/dev/null; then
    ENERGY=1
    SUDO="sudo -n"
    (while sudo -n true 2>/dev/null; do sleep 60; done) &
    KEEPALIVE_PID=$!
  fi
fi
MACOS_MAJOR=0
if [ "$OS" = Darwin ]; then
  MACOS_MAJOR=$(sw_vers -productVersion 2>/dev/null | cut -d. -f1)
  MACOS_MAJOR=${MACOS_MAJOR:-0}
fi

# --- python and the venv -----------------------------------------------------------------------
pick_python() {
  for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3.10 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
say "python venv ($VENV)"
PY=""
if BASE_PY=$(pick_python); then
  # A venv of another Python than the one picked (PYTHON=python3.12 after a first run
  # with 3.9, say) is made again, when it is the kit's own.
  if [ -z "${POMME_KIT_VENV:-}" ] && [ -x "$VENV/bin/python" ] &&
    [ "$("$VENV/bin/python" -c 'import sys; print(sys.version_info[:2])')" != "$("$BASE_PY" -c 'import sys; print(sys.version_info[:2])')" ]; then
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    # A new pip first: the Command Line Tools' Python 3.9 comes with pip 21.
    if "$BASE_PY" -m venv "$VENV"; then
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    else
      log venv fail "$BASE_PY -m venv $VENV failed"
    fi
  fi
  if [ -x "$VENV/bin/python" ]; then
    if "$VENV/bin/python" -c 'import coremltools, onnx, onnxruntime, numpy' >/dev/null 2>&1 ||
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r scripts/mac/requirements.txt; then
      PY="$VENV/bin/python"
      log venv ok "$("$PY" -c 'import sys, coremltools, onnxruntime; print("python", sys.version.split()[0], "coremltools", coremltools.__version__, "onnxruntime", onnxruntime.__version__)' 2>/dev/null)"
    else
      log venv fail "pip could not install scripts/mac/requirements.txt into $VENV"
    fi
  fi
else
  log venv fail "no python3 >= 3.9 (on macOS: xcode-select --install gives one)"
fi
# Core AI's Python package: macOS 27+ and Python 3.11+ only.
HAS_COREAI_PY=0
if [ -n "$PY" ] && [ "$MACOS_MAJOR" -ge 27 ]; then
  if "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    if "$PY" -c 'import coreai.runtime' >/dev/null 2>&1 ||
      "$PY" -m pip install -q --disable-pip-version-check 'coreai-core==1.0.0b3'; then
      HAS_COREAI_PY=1
      log coreai-python ok "coreai-core installed in $VENV"
    else
      log coreai-python fail "pip could not install coreai-core"
    fi
  else
    log coreai-python skip "coreai-core needs Python 3.11+ (this venv: $("$PY" -V 2>&1)); set PYTHON=python3.12 to include it"
  fi
elif [ "$MAC" = 1 ]; then
  log coreai-python skip "Core AI needs macOS 27 (this is macOS $(sw_vers -productVersion 2>/dev/null))"
fi

# --- models --------------------------------------------------------------------------------------
say "models ($MODELS_DIR)"
HAVE_MODELS=0
if [ -n "$PY" ]; then
  small=""
  if [ "$QUICK" = 1 ]; then small="--small"; fi
  only=$(echo "$MODELS" | tr ' ' ',')
  # shellcheck disable=SC2086 # $small is one optional word
  if "$PY" scripts/mac/make_models.py "$MODELS_DIR" $small --only "$only" 2> "$STEPS/logs/make_models.txt"; then
    HAVE_MODELS=1
    log models ok "$(grep -c parameters "$STEPS/logs/make_models.txt") models in $MODELS_DIR${small:+ (small)}"
  else
    log models fail "make_models.py failed: $(tail -n 1 "$STEPS/logs/make_models.txt")"
  fi
else
  log models skip "no venv with coremltools"
fi

# manifest FIELD MODEL: what the kit needs of a model's manifest entry (report.py field).
manifest() {
  "$PY" scripts/mac/report.py field "$MODELS_DIR/manifest.json" "$1" "$2"
}

# --- pomme ---------------------------------------------------------------------------------------
say "pomme"
POMME=${POMME:-}
if [ -z "$POMME" ]; then
  if [ "$MAC" = 0 ]; then
    log build skip "pomme's Core ML backend only builds for macOS; set POMME=path to use a built binary"
  elif ! command -v cargo >/dev/null 2>&1; then
    log build fail "cargo not found: install Rust (https://rustup.rs), then run the kit again"
  elif cargo build --release -p pomme-cli > "$STEPS/logs/build.txt" 2>&1; then
    POMME="$ROOT/target/release/pomme"
    log build ok "$("$POMME" --version)"
  elif POMME_COREAI_NO_SHIM=1 cargo build --release -p pomme-cli > "$STEPS/logs/build-no-shim.txt" 2>&1; then
    # The Core ML steps need pomme more than the Core AI shim does: go on without it.
    POMME="$ROOT/target/release/pomme"
    log build fail "cargo build --release -p pomme-cli failed (steps/logs/build.txt); built with POMME_COREAI_NO_SHIM=1 to go on"
  else
    log build fail "cargo build --release -p pomme-cli failed: see $STEPS/logs/build.txt"
  fi
fi
if [ -n "$POMME" ]; then
  "$POMME" devices --json > "$STEPS/devices.json" 2>&1 || log devices fail "pomme devices failed"
  export POMME_CACHE_DIR="$WORK/cache"
  # ONNX Runtime for the ort backend: the venv's onnxruntime (its macOS wheel has the CoreML EP).
  export POMME_ORT_VENV="$VENV"
fi
if [ -n "$PY" ]; then "$PY" scripts/mac/report.py env "$OUT" "${POMME:-}"; fi
RUN=0
if [ -n "$POMME" ] && [ "$HAVE_MODELS" = 1 ] && [ -n "$PY" ]; then RUN=1; fi
# Off macOS (with POMME=path) only ONNX Runtime on the CPU runs: it checks the kit's
# plumbing (pomme's flags, JSON, the report), not anything Apple-specific.
if [ "$MAC" = 1 ]; then
  DEVICES="cpu gpu ane"
  ORT_DEVICES="cpu ane"
else
  DEVICES=""
  ORT_DEVICES="cpu"
fi

# --- the direct Swift baseline -----------------------------------------------------------------------
DIRECT=""
if [ "$MAC" = 1 ]; then
  if xcrun swiftc -O -o "$WORK/direct" scripts/mac/Direct.swift > "$STEPS/logs/swiftc.txt" 2>&1; then
    DIRECT="$WORK/direct"
    log swift-direct ok "built scripts/mac/Direct.swift ($(xcrun swiftc --version 2>&1 | head -n 1))"
  else
    log swift-direct fail "swiftc could not build scripts/mac/Direct.swift: $(grep -m 1 error: "$STEPS/logs/swiftc.txt")"
  fi
else
  log swift-direct skip "needs macOS (xcrun swiftc and CoreML.framework)"
fi

# --- energy ----------------------------------------------------------------------------------------
if [ "$MAC" = 1 ]; then
  if [ "$ENERGY" = 1 ]; then
    # shellcheck disable=SC2086 # $SUDO is empty or two words
    if $SUDO powermetrics --samplers cpu_power,gpu_power,ane_power -i 1000 -n 5 > "$STEPS/energy/idle.txt" 2>&1; then
      log energy ok "powermetrics available; idle sampled for 5 s"
    else
      ENERGY=0
      log energy fail "powermetrics failed: $(tail -n 1 "$STEPS/energy/idle.txt")"
    fi
  else
    log energy skip "powermetrics needs root: run 'sudo -v' right before the kit to include energy per inference"
  fi
fi

# measure KEY CMD...: runs CMD (stdout to steps/bench/KEY.json), with powermetrics
# sampling the measured window (after the warm-up) when energy is on. POSIX sh has no
# `local`: the function's variables are m_-prefixed so they cannot clobber the caller's.
measure() {
  m_key=$1
  shift
  m_pm_pid=""
  if [ "$ENERGY" = 1 ]; then
    # shellcheck disable=SC2086
    (sleep "$WARMUP"; $SUDO powermetrics --samplers cpu_power,gpu_power,ane_power -i 1000 -n "$DURATION" \
      > "$STEPS/energy/$m_key.txt" 2>&1) &
    m_pm_pid=$!
  fi
  if "$@" > "$STEPS/bench/$m_key.json" 2> "$STEPS/logs/$m_key.txt"; then
    measure_rc=0
  else
    measure_rc=1
    rm -f "$STEPS/bench/$m_key.json"
  fi
  if [ -n "$m_pm_pid" ]; then wait "$m_pm_pid"; fi
  return $measure_rc
}

units_of() {
  case "$1" in cpu) echo cpuOnly ;; gpu) echo cpuAndGPU ;; ane) echo cpuAndNeuralEngine ;; esac
}

# --- per model: placement, outputs, latency ---------------------------------------------------------
for model in $MODELS; do
  say "$model"
  if [ "$RUN" = 0 ]; then
    log "$model" skip "placement, outputs and latency need a pomme build and the models (and macOS for Core ML)"
    continue
  fi
  if [ "$MAC" = 0 ]; then
    log "$model" skip "placement and Core ML need macOS: ONNX Runtime on the CPU only, as a check of the kit's plumbing"
  fi
  pkg="$MODELS_DIR/$model/model.mlpackage"
  min=$(manifest min "$model")
  onnx=$(manifest onnx "$model")
  ref_inputs=$(manifest ref-inputs "$model")
  spec=$(manifest spec "$model")

  # Placement: Core ML's compute plan for cpuAndNeuralEngine, then pomme's own gate.
  if [ "$MAC" = 0 ]; then
    :
  elif "$POMME" inspect --json --placement "$pkg" > "$STEPS/placement/$model.json" 2> "$STEPS/logs/inspect.$model.txt"; then
    "$PY" scripts/mac/report.py placement "$STEPS/placement/$model.json" "$min"
    case $? in
      0) log "placement $model" ok "see the table above (min_ane_share $min)" ;;
      1) log "placement $model" fail "below min_ane_share $min (the ops off the Neural Engine are listed above)" ;;
      *) log "placement $model" fail "no compute plan from pomme inspect --placement (Core ML gives one on macOS 14.4+)" ;;
    esac
  else
    log "placement $model" fail "pomme inspect --placement: $(tail -n 1 "$STEPS/logs/inspect.$model.txt")"
    rm -f "$STEPS/placement/$model.json"
  fi
  gate=""
  if [ "$min" != "-" ]; then gate="--backend-option min_ane_share=$min"; fi

  # Outputs on every device, on the model's reference input (as .npy where they are numbers;
  # pomme's JSON summary, in steps/logs, for a classifier's label and dictionary).
  npy=$(manifest npy-outputs "$model")
  for dev in $DEVICES; do
    opt=""
    if [ "$dev" = ane ]; then opt=$gate; fi
    odir=""
    if [ "$npy" = yes ]; then odir="$STEPS/outputs/$model/pomme.$dev"; fi
    # shellcheck disable=SC2086 # $ref_inputs and $opt are word lists
    if "$POMME" infer "$pkg" $ref_inputs --backend coreml --device "$dev" $opt ${odir:+-o "$odir"} \
      > "$STEPS/logs/infer.$model.$dev.txt" 2>&1; then
      log "infer $model coreml/$dev" ok "${odir:-summary in steps/logs/infer.$model.$dev.txt}"
    else
      log "infer $model coreml/$dev" fail "$(tail -n 1 "$STEPS/logs/infer.$model.$dev.txt")"
    fi
  done
  if [ -n "$onnx" ]; then
    for dev in $ORT_DEVICES; do
      ort_opt=""
      if [ "$dev" != cpu ]; then ort_opt="--backend-option coreml_model_format=mlprogram"; fi
      # shellcheck disable=SC2086
      if "$POMME" infer "$onnx" $ref_inputs --backend ort --device "$dev" $ort_opt \
        -o "$STEPS/outputs/$model/pomme-ort.$dev" > "$STEPS/logs/infer-ort.$model.$dev.txt" 2>&1; then
        log "infer $model ort/$dev" ok "outputs in steps/outputs/$model/pomme-ort.$dev"
      else
        log "infer $model ort/$dev" fail "$(tail -n 1 "$STEPS/logs/infer-ort.$model.$dev.txt")"
      fi
    done
  fi

  if [ "$(manifest bench "$model")" != yes ]; then
    log "bench $model" skip "a fixture (checked for placement and outputs, not timed)"
    continue
  fi
  for batch in 1 8; do
    for dev in $DEVICES; do
      opt=""
      if [ "$dev" = ane ]; then opt=$gate; fi
      key="$model.$dev.b$batch"
      # shellcheck disable=SC2086
      measure "pomme.$key" "$POMME" bench "$pkg" --backend coreml --device "$dev" $opt --batch "$batch" \
        --duration "${DURATION}s" --warmup "${WARMUP}s" --json ||
        log "bench pomme.$key" fail "$(tail -n 1 "$STEPS/logs/pomme.$key.txt")"
      if [ -n "$DIRECT" ]; then
        measure "swift.$key" "$DIRECT" "$pkg" "$(units_of "$dev")" "$batch" "$WARMUP" "$DURATION" ||
          log "bench swift.$key" fail "$(tail -n 1 "$STEPS/logs/swift.$key.txt")"
      fi
      # shellcheck disable=SC2086
      measure "coremltools.$key" "$PY" scripts/mac/pybench.py coremltools "$pkg" "$dev" "$batch" $spec \
        --warmup "$WARMUP" --duration "$DURATION" ||
        log "bench coremltools.$key" fail "$(tail -n 1 "$STEPS/logs/coremltools.$key.txt")"
    done
    for dev in $ORT_DEVICES; do
      key="$model.$dev.b$batch"
      if [ -n "$onnx" ]; then
        ort_opt=""
        if [ "$dev" != cpu ]; then ort_opt="--backend-option coreml_model_format=mlprogram"; fi
        # shellcheck disable=SC2086
        measure "pomme-ort.$key" "$POMME" bench "$onnx" --backend ort --device "$dev" $ort_opt --batch "$batch" \
          --duration "${DURATION}s" --warmup "${WARMUP}s" --json ||
          log "bench pomme-ort.$key" fail "$(tail -n 1 "$STEPS/logs/pomme-ort.$key.txt")"
        # shellcheck disable=SC2086
        measure "ort-py.$key" "$PY" scripts/mac/pybench.py ort "$onnx" "$dev" "$batch" $spec \
          --warmup "$WARMUP" --duration "$DURATION" ||
          log "bench ort-py.$key" fail "$(tail -n 1 "$STEPS/logs/ort-py.$key.txt")"
      fi
    done
  done
  rows=0
  for f in "$STEPS/bench"/*."$model".*.json; do
    if [ -f "$f" ]; then rows=$((rows + 1)); fi
  done
  log "bench $model" ok "$rows timed rows"
done

# serve_start REPO MODEL LOG: pomme serve on $PORT.. in the background; 0 once MODEL is ready
# (at most 120 s), 1 when the server ended or never got ready. serve_stop ends it.
serve_start() {
  "$POMME" serve --model-repository "$1" --http-port "$PORT" --grpc-port "$((PORT + 1))" \
    --metrics-port "$((PORT + 2))" > "$STEPS/logs/$3.txt" 2>&1 &
  SERVER_PID=$!
  s_i=0
  while [ $s_i -lt 240 ]; do
    if curl -sf "http://127.0.0.1:$PORT/v2/models/$2/ready" > /dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
    sleep 0.5
    s_i=$((s_i + 1))
  done
  return 1
}
serve_stop() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=""
}

# --- served ------------------------------------------------------------------------------------------
say "served: pomme serve, Core ML on the ANE, pomme bench --url"
SERVED=mobilenet_v2
if [ "$RUN" = 1 ] && [ -d "$MODELS_DIR/$SERVED/model.mlpackage" ]; then
  repo="$WORK/repo"
  mkdir -p "$repo/$SERVED/1"
  if [ "$MAC" = 1 ]; then
    served_as="coreml/ane"
    cp -R "$MODELS_DIR/$SERVED/model.mlpackage" "$repo/$SERVED/1/model.mlpackage"
    cat > "$repo/$SERVED/config.toml" <<EOF
backends = ["coreml"]
device = "ane"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_us = 2000

[extra]
min_ane_share = "$(manifest min "$SERVED")"
EOF
  else
    served_as="ort/cpu (off macOS: a check of the kit's plumbing, not the Core ML measurement)"
    cp "$MODELS_DIR/$SERVED/model.onnx" "$repo/$SERVED/1/model.onnx"
    cat > "$repo/$SERVED/config.toml" <<EOF
backends = ["ort"]
device = "cpu"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_us = 2000
EOF
  fi
  echo "$served_as" > "$STEPS/served/$SERVED.backend"
  if serve_start "$repo" "$SERVED" serve; then
    if "$POMME" bench --url "http://127.0.0.1:$PORT" --model "$SERVED" --concurrency 1,8,32 \
      --duration "${DURATION}s" --warmup "${WARMUP}s" --json > "$STEPS/served/$SERVED.json" 2> "$STEPS/logs/served.txt"; then
      log "served $SERVED" ok "$served_as: concurrency 1, 8, 32 over HTTP"
    else
      log "served $SERVED" fail "pomme bench --url: $(tail -n 1 "$STEPS/logs/served.txt")"
      rm -f "$STEPS/served/$SERVED.json"
    fi
    curl -s "http://127.0.0.1:$((PORT + 2))/metrics" 2>/dev/null | grep '^pomme_placement' > "$STEPS/served/$SERVED.placement-metrics.txt"
  else
    log "served $SERVED" fail "pomme serve did not get ready in 120 s: $(tail -n 1 "$STEPS/logs/serve.txt")"
  fi
  serve_stop

  # A stateful model's state across one sequence of three requests, in a server of its own.
  seq_repo="$WORK/repo-seq"
  seq_model=""
  if [ "$MAC" = 1 ] && [ -d "$MODELS_DIR/stateful/model.mlpackage" ]; then
    seq_model=stateful
    seq_dev=ane
    mkdir -p "$seq_repo/stateful/1"
    cp -R "$MODELS_DIR/stateful/model.mlpackage" "$seq_repo/stateful/1/model.mlpackage"
    printf 'backends = ["coreml"]\ndevice = "ane"\n' > "$seq_repo/stateful/config.toml"
    seq_input="$MODELS_DIR/stateful/ref/input.x.npy"
  elif [ "$MAC" = 0 ] && [ -n "${POMME_COREAI_PYTHON:-}" ]; then
    # Off macOS: Core AI's stateful fixture through Apple's Linux runtime, as a plumbing check.
    seq_model=coreai_accumulator
    seq_dev=cpu
    mkdir -p "$seq_repo/$seq_model/1"
    cp -R models/coreai/accumulator.aimodel "$seq_repo/$seq_model/1/model.aimodel"
    printf 'backends = ["coreai"]\n' > "$seq_repo/$seq_model/config.toml"
    "$PY" -c "import sys, numpy as np; np.save(sys.argv[1], np.array([[1, 2, 3, 4]], np.float32))" "$WORK/acc-x.npy"
    seq_input="$WORK/acc-x.npy"
  fi
  if [ -z "$seq_model" ]; then
    log "served sequence" skip "no stateful model to serve here (macOS: the kit's stateful model; elsewhere: set POMME_COREAI_PYTHON)"
  elif serve_start "$seq_repo" "$seq_model" serve-seq; then
    if "$PY" scripts/mac/sequence.py "http://127.0.0.1:$PORT" "$seq_model" "x=$seq_input" 3 \
      "$STEPS/outputs/$seq_model/served.$seq_dev" > "$STEPS/logs/sequence.txt" 2>&1; then
      log "served sequence $seq_model" ok "three requests of one sequence on $seq_dev: steps/outputs/$seq_model/served.$seq_dev"
    else
      log "served sequence $seq_model" fail "$(tail -n 1 "$STEPS/logs/sequence.txt")"
    fi
    serve_stop
  else
    log "served sequence $seq_model" fail "pomme serve did not get ready: $(tail -n 1 "$STEPS/logs/serve-seq.txt")"
    serve_stop
  fi
else
  log "served $SERVED" skip "needs a pomme build and the models (and macOS for Core ML on the ANE)"
fi

# --- small Core ML fixtures of the repository (models/coreml): every device against the CPU -----------
say "fixtures (models/coreml)"
if [ "$MAC" = 1 ] && [ -n "$POMME" ] && [ -n "$PY" ]; then
  # file:input:shape:dtype[:backend option]. Integer inputs are random in 0..3 (the Int64 mapping's
  # codes 1..3 and its default), uint8 images in 0..255; the image classifier runs once more with
  # image_layout=nchw; the stateful model runs requests without a sequence (a fresh state each);
  # the multifunction package runs its default function.
  for fx in nn_dense.mlmodel:x:4:float64 pipeline.mlmodel:x:4:float64 mlp_program.mlpackage:x:1,8:float32 \
    enumerated.mlpackage:x:2,3,8,8:float32 range.mlpackage:x:1,3,16:float32 \
    image_classifier.mlpackage:image:8,8,3:uint8 image_classifier.mlpackage:image:1,3,8,8:uint8:image_layout=nchw \
    nn_classifier.mlmodel:image:4,4,1:uint8 int64_mapping.mlmodel:code:1:int64 \
    stateful.mlpackage:x:1,4:float32 multifunction.mlpackage:x:1,4:float32; do
    file=${fx%%:*}
    rest=${fx#*:}
    name=${rest%%:*}
    rest=${rest#*:}
    shape=${rest%%:*}
    rest=${rest#*:}
    dtype=${rest%%:*}
    opt=
    case $rest in *:*) opt=${rest#*:} ;; esac
    stem=fixture_${file%%.*}
    if [ -n "$opt" ]; then
      stem=${stem}_${opt#*=}
      set -- --backend-option "$opt"
    else
      set --
    fi
    "$PY" -c "import sys, numpy as np
r = np.random.default_rng(0); s = tuple(int(d) for d in sys.argv[2].split(',')); t = np.dtype(sys.argv[3])
a = r.integers(0, 256 if t == np.uint8 else 4, size=s) if t.kind in 'iu' else r.standard_normal(s)
np.save(sys.argv[1], a.astype(t))" "$WORK/$stem.npy" "$shape" "$dtype"
    for dev in cpu gpu ane; do
      if "$POMME" infer "models/coreml/$file" --input "$name=$WORK/$stem.npy" --backend coreml --device "$dev" "$@" \
        -o "$STEPS/outputs/$stem/pomme.$dev" > "$STEPS/logs/$stem.$dev.txt" 2>&1; then
        log "fixture $file${opt:+ $opt} $dev" ok "ran"
      else
        log "fixture $file${opt:+ $opt} $dev" fail "$(tail -n 1 "$STEPS/logs/$stem.$dev.txt")"
      fi
    done
  done
else
  log fixtures skip "needs macOS and a pomme build"
fi

# --- Core AI (macOS 27): the Swift shim and pomme's coreai backend ----------------------------------------
say "Core AI"
if [ "$MAC" = 0 ] || [ -z "$POMME" ]; then
  log coreai skip "needs macOS and a pomme build"
else
  SDK_VERSION=$(xcrun --sdk macosx --show-sdk-version 2>/dev/null || echo 0)
  if [ "$(echo "$SDK_VERSION" | cut -d. -f1)" -lt 27 ]; then
    log coreai-shim skip "the Swift shim needs the macOS 27 SDK (Xcode 27); this SDK is $SDK_VERSION"
  elif POMME_COREAI_REQUIRE_SHIM=1 cargo build --release -p pomme-cli > "$STEPS/logs/build-shim.txt" 2>&1; then
    link=$(otool -l "$ROOT/target/release/pomme" | awk '/ cmd LC_/ { cmd = $2 } /CoreAI.framework/ { print cmd; exit }')
    case "$link" in
      LC_LOAD_WEAK_DYLIB) log coreai-shim ok "built; CoreAI.framework is weak-linked (pomme starts on macOS < 27)" ;;
      "") log coreai-shim fail "built, but CoreAI.framework is not among pomme's load commands" ;;
      *) log coreai-shim fail "built, but CoreAI.framework is linked with $link, not weakly: pomme will not start on macOS < 27" ;;
    esac
    POMME="$ROOT/target/release/pomme"
    if [ "$MACOS_MAJOR" -lt 27 ]; then
      log coreai-tests skip "macOS $(sw_vers -productVersion) has no CoreAI.framework"
    else
      if POMME_COREAI_REQUIRE_SHIM=1 cargo test --release -p pomme-coreai --test shim -- --nocapture \
        > "$STEPS/logs/shim-tests.txt" 2>&1 && grep -q "through the Swift shim" "$STEPS/logs/shim-tests.txt"; then
        log coreai-tests ok "crates/pomme-coreai/tests/shim.rs through the shim"
      else
        log coreai-tests fail "tests/shim.rs through the shim: see steps/logs/shim-tests.txt"
      fi
      if POMME_COREAI_REQUIRE_SHIM=1 cargo test --release -p pomme-coreai --test shim -- \
        --ignored a_call_past_the_signature_is_an_error --nocapture > "$STEPS/logs/shim-past.txt" 2>&1; then
        log coreai-past-signature ok "a call past the signature is an error, not a crash"
      else
        log coreai-past-signature fail "a call past the signature ended the test process (in-process it would end pomme)"
      fi
      for dev in cpu gpu ane; do
        for am in mlp encoder; do
          if "$POMME" infer "models/coreai/$am.aimodel" --backend coreai --backend-option bridge=shim --device "$dev" \
            -o "$STEPS/outputs/coreai_$am/pomme-coreai.$dev" > "$STEPS/logs/coreai.$am.$dev.txt" 2>&1; then
            log "coreai infer $am $dev" ok "through the shim"
          else
            log "coreai infer $am $dev" fail "$(tail -n 1 "$STEPS/logs/coreai.$am.$dev.txt")"
          fi
          measure "pomme-coreai.coreai_$am.$dev.b1" "$POMME" bench "models/coreai/$am.aimodel" --backend coreai \
            --backend-option bridge=shim --device "$dev" --duration "${DURATION}s" --warmup "${WARMUP}s" --json ||
            log "bench coreai $am $dev" fail "$(tail -n 1 "$STEPS/logs/pomme-coreai.coreai_$am.$dev.b1.txt")"
        done
      done
    fi
  else
    log coreai-shim fail "POMME_COREAI_REQUIRE_SHIM=1 cargo build failed: see steps/logs/build-shim.txt"
  fi
  # Core AI through Apple's Python package: pomme's Python bridge and the package's own API.
  if [ "$HAS_COREAI_PY" = 1 ]; then
    for dev in cpu gpu ane; do
      for am in mlp encoder; do
        if POMME_COREAI_PYTHON="$PY" "$POMME" infer "models/coreai/$am.aimodel" --backend coreai \
          --backend-option bridge=python --device "$dev" -o "$STEPS/outputs/coreai_$am/pomme-coreai-py.$dev" \
          > "$STEPS/logs/coreai-py.$am.$dev.txt" 2>&1; then
          log "coreai-py infer $am $dev" ok "through the Python bridge"
        else
          log "coreai-py infer $am $dev" fail "$(tail -n 1 "$STEPS/logs/coreai-py.$am.$dev.txt")"
        fi
        measure "pomme-coreai-py.coreai_$am.$dev.b1" env POMME_COREAI_PYTHON="$PY" "$POMME" bench \
          "models/coreai/$am.aimodel" --backend coreai --backend-option bridge=python --device "$dev" \
          --duration "${DURATION}s" --warmup "${WARMUP}s" --json ||
          log "bench coreai-py $am $dev" fail "$(tail -n 1 "$STEPS/logs/pomme-coreai-py.coreai_$am.$dev.b1.txt")"
        measure "coreai-py.coreai_$am.$dev.b1" "$PY" scripts/mac/pybench.py coreai "models/coreai/$am.aimodel" \
          "$dev" 1 --warmup "$WARMUP" --duration "$DURATION" ||
          log "bench coreai direct $am $dev" fail "$(tail -n 1 "$STEPS/logs/coreai-py.coreai_$am.$dev.b1.txt")"
      done
    done
  fi
  if [ "$HAS_COREAI_PY" = 0 ]; then
    log coreai-python-bridge skip "coreai-core is not installed in the venv (see coreai-python above)"
  fi
fi

# --- the report ------------------------------------------------------------------------------------
say "report"
if [ -z "$PY" ]; then
  echo "kit: no python venv, so no report; the steps' logs are in $STEPS" >&2
  exit 1
fi
if "$PY" scripts/mac/report.py write "$OUT"; then
  rc=0
else
  rc=1
fi
echo "kit: report in $OUT/mac-report.md and $OUT/mac-report.json: please attach both to an issue"
exit $rc
