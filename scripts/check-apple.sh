#!/usr/bin/env bash
# Type-checks and lints the Apple-only code (cfg(target_os = "macos")) of the
# crates that have some, for aarch64-apple-darwin, on any host. Nothing is
# linked or run: `cargo check` never links, so no macOS SDK is needed. Build
# scripts that compile C get scripts/apple-check-cc.sh as their compiler: C
# libraries (ring, zstd-sys) include libc headers only a macOS SDK has, and
# their objects are never linked by a check, so it writes empty arm64 objects
# (preprocessing and version queries go to Debian's clang for Apple arm64).
# Only Rust is checked. With it the whole `pomme` binary (pomme-cli and every
# dependency) type-checks and lints.
#
#   scripts/check-apple.sh                       # the default crate list below
#   scripts/check-apple.sh pomme-coreml pomme-cli    # pomme-cli: the whole binary
#   APPLE_CRATES="pomme-coreml pomme-tract" scripts/check-apple.sh
#
# Needs: rustup target add aarch64-apple-darwin; apt-get install -y clang
# (SKIP_SETUP=1 skips both). APPLE_CHECK_TARGETS=--lib checks libraries only
# (for crates whose dev-dependencies build C code that needs a macOS SDK).
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=("$@")
if [ ${#CRATES[@]} -eq 0 ]; then
  read -r -a CRATES <<< "${APPLE_CRATES:-pomme-coreml pomme-coreai pomme-cli}"
fi
TARGET=aarch64-apple-darwin

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  if ! command -v clang >/dev/null; then
    if command -v apt-get >/dev/null; then
      (apt-get update -qq && apt-get install -y -qq clang) >/dev/null
    else
      echo "check-apple: clang is needed (for build scripts that compile C for $TARGET)" >&2
      exit 1
    fi
  fi
fi

CC_STUB="$(pwd)/scripts/apple-check-cc.sh"
export CC_aarch64_apple_darwin="$CC_STUB"
export CFLAGS_aarch64_apple_darwin=--target=arm64-apple-macos11

PKGS=()
for c in "${CRATES[@]}"; do PKGS+=(-p "$c"); done

echo "== cargo check --target $TARGET ${PKGS[*]}"
cargo check "${PKGS[@]}" --target "$TARGET" ${APPLE_CHECK_TARGETS:---all-targets}
echo "== cargo clippy --target $TARGET ${PKGS[*]} -- -D warnings"
cargo clippy "${PKGS[@]}" --target "$TARGET" ${APPLE_CHECK_TARGETS:---all-targets} -- -D warnings
echo "check-apple: ${CRATES[*]} type-check and lint clean for $TARGET"
