#!/bin/sh
# The C compiler `scripts/check-apple.sh` gives build scripts of crates that
# compile C *libraries* for aarch64-apple-darwin (ring for rustls, zstd-sys
# for npyz's zip). Their sources include libc headers (<stdint.h>, <string.h>)
# that only a macOS SDK has, so Debian's clang cannot compile them; and
# `cargo check` never links, so their objects are never used. This stands in
# for the compiler: preprocessing and version queries (compiler detection) go
# to clang for Apple arm64, every compilation writes an empty arm64 object.
# Only Rust code is type-checked this way; no C is checked or built.
out=""
prev=""
for a in "$@"; do
  case "$a" in
    -E|--version|-dM) exec clang --target=arm64-apple-macos11 "$@" ;;
    # cc-rs may take this wrapper for clang-cl and pass `-Fo<object>`.
    -Fo*) out="${a#-Fo}" ;;
  esac
  [ "$prev" = "-o" ] && out="$a"
  prev="$a"
done
[ -n "$out" ] || exit 0
exec clang --target=arm64-apple-macos11 -c -x c /dev/null -o "$out"
