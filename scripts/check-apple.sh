#!/usr/bin/env bash
# Type-checks and lints the Apple-only code (cfg(target_os = "macos")) of the
# crates that have some, for aarch64-apple-darwin, on any host. Nothing is
# linked or run: `cargo check` never links, so no macOS SDK is needed. Crates
# with C build scripts get Debian's clang, told to target Apple arm64.
#
#   scripts/check-apple.sh                       # the default crate list below
#   scripts/check-apple.sh pomme-coreml pomme-cli
#   APPLE_CRATES="pomme-coreml pomme-tract" scripts/check-apple.sh
#
# Needs: rustup target add aarch64-apple-darwin; apt-get install -y clang
# (SKIP_SETUP=1 skips both). APPLE_CHECK_TARGETS=--lib checks libraries only
# (for crates whose dev-dependencies build C code that needs a macOS SDK).
set -euo pipefail
cd "$(dirname "$0")/.."

CRATES=("$@")
if [ ${#CRATES[@]} -eq 0 ]; then
  read -r -a CRATES <<< "${APPLE_CRATES:-pomme-coreml pomme-coreai}"
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

export CC_aarch64_apple_darwin=clang
export CFLAGS_aarch64_apple_darwin=--target=arm64-apple-macos11

PKGS=()
for c in "${CRATES[@]}"; do PKGS+=(-p "$c"); done

echo "== cargo check --target $TARGET ${PKGS[*]}"
cargo check "${PKGS[@]}" --target "$TARGET" ${APPLE_CHECK_TARGETS:---all-targets}
echo "== cargo clippy --target $TARGET ${PKGS[*]} -- -D warnings"
cargo clippy "${PKGS[@]}" --target "$TARGET" ${APPLE_CHECK_TARGETS:---all-targets} -- -D warnings
echo "check-apple: ${CRATES[*]} type-check and lint clean for $TARGET"
