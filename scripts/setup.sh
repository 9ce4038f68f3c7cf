#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: rustfmt/clippy, the Apple
# target for the type-check, Debian's clang (root only; the Apple check needs a
# C compiler that can target arm64-apple-macos), shellcheck and dash (root only;
# the Mac kit's checks), ./.venv with onnxruntime, tritonclient and Apple's
# coreai-core (the Core AI runtime), and ./.venv-mac for the Mac kit's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add aarch64-apple-darwin >/dev/null

# clang: the Apple type-check's C compiler; openssl: the TLS interop test's
# certificates (that test skips without it); shellcheck and dash: the Mac proof
# kit's POSIX checks (scripts/mac/kit.sh must run on macOS's bash 3.2 / sh).
missing=""
command -v clang >/dev/null 2>&1 || missing="$missing clang"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v dash >/dev/null 2>&1 || missing="$missing dash"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: missing$missing and not root; the Apple type-check / TLS interop test / Mac kit checks will be skipped" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import onnxruntime, tritonclient.http, tritonclient.grpc, numpy, pytest, coreai.runtime" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi

# KServe's SDK has its own venv: its grpcio/protobuf pins are not tritonclient's.
if [ ! -x .venv-kserve/bin/python ]; then
  python3 -m venv .venv-kserve
fi
if ! .venv-kserve/bin/python -c "import kserve, pytest" 2>/dev/null; then
  .venv-kserve/bin/pip install -q --disable-pip-version-check -r scripts/requirements-kserve.txt
fi

# The Mac proof kit's Linux tests (tests/mackit): coremltools, onnx, onnxruntime, no torch.
if [ ! -x .venv-mac/bin/python ]; then
  python3 -m venv .venv-mac
fi
if ! .venv-mac/bin/python -c "import coremltools, onnx, onnxruntime, numpy, pytest" 2>/dev/null; then
  .venv-mac/bin/pip install -q --disable-pip-version-check -r scripts/requirements-mac.txt
fi

# The dependency audit (cargo deny) in scripts/test.sh; cargo-fuzz and the
# nightly toolchain are installed by scripts/fuzz.sh itself.
if ! command -v cargo-deny >/dev/null 2>&1; then
  cargo install cargo-deny --locked --quiet ||
    echo "setup: cargo-deny could not be installed; the dependency audit will be skipped" >&2
fi
