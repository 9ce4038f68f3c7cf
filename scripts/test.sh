#!/usr/bin/env bash
# The whole test suite: setup, formatting, lints (Linux and Apple targets),
# Rust tests, and interoperability tests with Triton's official Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# POMME_FREE_DISK=1 (set by .ci/run): CI's disk is not large, so build artifacts
# that no later step reads are removed as the run goes.
FREE_DISK=${POMME_FREE_DISK:-0}

# Free disk at each stage, so that a run that fills the disk says where.
disk() { echo "disk: $(df -h --output=avail . | tail -n1 | tr -d ' ') free ($1)"; }
disk start

bash scripts/setup.sh

# The ort backend loads ONNX Runtime from the venv.
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | head -n1)
export ORT_DYLIB_PATH
export POMME_TEST_MODELS=${POMME_TEST_MODELS:-$PWD/../shared/models}
# The Core AI tests run Apple's Linux runtime (coreai-core, installed in .venv
# by setup.sh, where they find it) for real: here a missing runtime fails them
# instead of skipping. (POMME_COREAI_PYTHON is left alone: the server's config
# tests read POMME_* variables through clap.)
export POMME_REQUIRE_COREAI=${POMME_REQUIRE_COREAI:-1}

echo "== deploy: Dockerfile, Kubernetes manifests, Helm chart, KServe, Prometheus, Grafana"
bash scripts/validate-deploy.sh

echo "== Mac proof kit: shellcheck, POSIX syntax, tests/mackit"
# scripts/mac/kit.sh runs under macOS's /bin/sh (bash 3.2): a bash-4-ism must not come back.
mac_t0=$SECONDS
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -s sh scripts/mac/*.sh scripts/macos-smoke.sh
else
  echo "SKIP shellcheck: not installed (scripts/setup.sh installs it when run as root)"
fi
for f in scripts/mac/*.sh scripts/macos-smoke.sh; do
  if command -v dash >/dev/null 2>&1; then dash -n "$f"; fi
  bash --posix -n "$f"
done
.venv-mac/bin/python -m pytest -q tests/mackit
echo "mac kit checks: $((SECONDS - mac_t0)) s"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy (linux)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo check + clippy (aarch64-apple-darwin)"
if command -v clang >/dev/null 2>&1; then
  # Every crate of the `pomme` binary, with its tests. C libraries in build
  # scripts get scripts/apple-check-cc.sh (empty objects: a check never links).
  SKIP_SETUP=1 bash scripts/check-apple.sh pomme-core pomme-runtime pomme-kserve pomme-server \
    pomme-tract pomme-ort pomme-quant pomme-coreml pomme-coreai pomme-backends pomme-text pomme-cli
  # Nothing later reads the Apple check's artifacts.
  if [ "$FREE_DISK" = 1 ]; then rm -rf target/aarch64-apple-darwin; fi
  disk "after the Apple type-check"
else
  echo "SKIP apple type-check: clang not installed"
fi

echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
grep -E "^test result:" target/test-output.txt | awk '{p+=$4; f+=$6} END {print "rust: " p " passed, " f " failed"}'
disk "after cargo test"

if [ -d tests/interop ]; then
  echo "== interop (tritonclient against a real pomme serve)"
  # `cargo test --workspace` above already built target/debug/pomme with the
  # workspace's unified features; building it alone would recompile dependencies.
  POMME_BIN=$PWD/target/debug/pomme .venv/bin/python -m pytest -q tests/interop
  echo "== interop (KServe's SDK against a real pomme serve)"
  POMME_BIN=$PWD/target/debug/pomme POMME_REQUIRE_KSERVE=1 \
    .venv-kserve/bin/python -m pytest -q tests/interop/test_kserve_sdk.py
fi

echo "== Mac proof kit's plumbing with this pomme (ONNX Runtime on the CPU; nothing Apple-specific)"
POMME_BIN=$PWD/target/debug/pomme .venv-mac/bin/python -m pytest -q tests/mackit/test_kit.py -k plumbing

# Everything after this point builds in target dirs of its own; the debug build
# (tens of test binaries that each link tract) goes, so the loom and fuzz builds
# do not add to its disk.
if [ "$FREE_DISK" = 1 ]; then rm -rf target/debug; fi
disk "after removing target/debug"

echo "== loom (admission controller model checks)"
# A target dir of its own: --cfg loom changes every crate's flags, so sharing
# target/ would rebuild the workspace twice.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p pomme-runtime --test loom_admission --release

echo "== cargo deny (licenses, bans, sources)"
# `advisories` needs the RustSec database, a git repository on GitHub, which this
# network cannot reach (RELIABILITY.md); the three checks here run offline.
if command -v cargo-deny >/dev/null 2>&1; then
  cargo deny --log-level error check licenses bans sources
else
  echo "SKIP cargo deny: not installed (scripts/setup.sh could not install it)"
fi

# A short fuzz pass from the committed seeds, fixed seed; POMME_FUZZ_SECONDS=0 skips it.
# CI has 90 minutes: the first fuzz build (nightly, cargo-fuzz, tract with coverage
# instrumentation) can take half an hour on 2 cores, so the pass only starts with
# enough time left and stops 5 minutes before the limit (that is not a failure; a
# crash is). POMME_CI_BUDGET_S overrides the 90 minutes.
FUZZ_SECONDS=${POMME_FUZZ_SECONDS:-20}
BUDGET=${POMME_CI_BUDGET_S:-5400}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  left=$(( BUDGET - 300 - SECONDS ))
  if [ "$left" -lt 900 ]; then
    echo "SKIP fuzz: only $(( BUDGET - SECONDS )) s of the CI budget left"
  else
    echo "== fuzz (${FUZZ_SECONDS} s per target, at most ${left} s in all)"
    rc=0
    FUZZ_SECONDS=$FUZZ_SECONDS FUZZ_SEED=1 timeout "$left" bash scripts/fuzz.sh || rc=$?
    if [ "$rc" = 124 ]; then
      echo "fuzz: stopped at the CI time budget (no crash found before that)"
    elif [ "$rc" != 0 ]; then
      exit "$rc"
    fi
  fi
fi
disk end
echo "== done in ${SECONDS} s"
