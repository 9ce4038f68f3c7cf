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
# locales: ONNX Runtime's string operators (StringNormalizer) need the
# en_US.UTF-8 locale, which a bare Debian lacks (the ONNX conformance runner).
[ -e /usr/sbin/locale-gen ] || missing="$missing locales"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: missing$missing and not root; the Apple type-check / TLS interop test / Mac kit checks / string-op conformance will be skipped" >&2
  fi
fi
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
  if [ "$(id -u)" = 0 ] && [ -e /etc/locale.gen ]; then
    sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
    grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
    locale-gen >/dev/null
  else
    echo "setup: no en_US.UTF-8 locale and cannot generate it; ONNX Runtime's StringNormalizer will refuse models" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import onnxruntime, tritonclient.http, tritonclient.grpc, numpy, pytest, coreai.runtime, onnx, ml_dtypes; assert onnx.__version__ == '1.20.1'" 2>/dev/null; then
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
