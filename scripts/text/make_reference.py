"""Reference all-MiniLM-L6-v2 sentence embeddings for pomme's embedding tests.

What: writes tests/text/reference_embeddings.json, {about, model, texts: [{text, ids,
truncated, embedding}]} for 12 varied texts (1 to 256 tokens; the last one is
longer than 256 tokens and is truncated, to pin down truncation). The embedding is
the sentence-transformers definition: tokenize with models/text/minilm/tokenizer.json
(truncation at 256, no padding), run the ONNX model ALONE per text (batch 1, no
padding) with onnxruntime, mean-pool last_hidden_state over the attention mask,
L2-normalise; 384 float32 values per text (stored as their exact float64 value).

Why: golden vectors for the Rust embedding path (tokenizer + batching/padding into
seq buckets + pooling + normalisation), independent of how pomme batches.

How:  python scripts/text/make_reference.py [--model /work/shared/models/minilm_l6.onnx]
--model may also be the 1/model.onnx written by scripts/text/export_minilm.py (the
result is identical, see that script). Also prints how far the model's own
sentence_embedding output is from the pooled vectors (measured: 4.5e-08; with the exported model the file comes out identical).
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH = 256
PARA = ("Machine learning inference servers load trained models and answer requests over HTTP or gRPC. "
        "They batch requests together, pick a backend such as ONNX Runtime or tract, pad sequences to a few "
        "fixed lengths to keep kernels warm, and return embeddings, labels or scores. ")
TEXTS = [
    "Hello!",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email account?",
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m r\u00e9sum\u00e9 fa\u00e7ade jalape\u00f1o co\u00f6perate Zo\u00eb",  # torture.txt
    "I love pizza \U0001f355 and \U0001f389 parties \U0001f602\U0001f602\U0001f602",  # torture.txt
    "Chinese: \u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",  # torture.txt
    "   leading and trailing spaces   ",  # torture.txt
    "[CLS] [SEP] [MASK] [UNK] [PAD]",  # torture.txt: literal special tokens are matched as specials
    (PARA * 3).strip(),  # ~180 tokens
    (PARA * 5).strip(),  # > 256 tokens: truncated to [CLS] + 254 + [SEP]
]


def main():
    import onnxruntime as ort
    from tokenizers import Tokenizer
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/shared/models/minilm_l6.onnx")
    ap.add_argument("--out", default=str(ROOT / "tests" / "text" / "reference_embeddings.json"))
    a = ap.parse_args()
    tok = Tokenizer.from_file(str(ROOT / "models" / "text" / "minilm" / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    rows, worst = [], 0.0
    for t in TEXTS:
        e = tok.encode(t)
        ids, mask = np.array([e.ids], np.int64), np.array([e.attention_mask], np.int64)
        hidden, model_emb = sess.run(["last_hidden_state", "sentence_embedding"],
                                     {"input_ids": ids, "attention_mask": mask})
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        emb = (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)[0]
        worst = max(worst, float(np.abs(emb - model_emb[0]).max()))
        truncated = len(e.overflowing) > 0
        rows.append({"text": t, "ids": e.ids, "truncated": truncated, "embedding": [float(x) for x in emb]})
        print(f"{len(e.ids):4d} tokens{' (truncated)' if truncated else ''}: {t[:60]!r}")
    out = {"about": "all-MiniLM-L6-v2 sentence embeddings (mean pooling over the attention mask, L2-normalised), "
                    "each text run alone (batch 1, no padding); ids from models/text/minilm/tokenizer.json with "
                    f"truncation at {MAX_LENGTH}; written by scripts/text/make_reference.py",
           "model": Path(a.model).name, "max_length": MAX_LENGTH, "dim": 384, "texts": rows}
    text = json.dumps(out, ensure_ascii=False, indent=1)
    # one line per list of numbers
    text = re.sub(r"\[\s+([-+0-9.,e\s]+?)\s+\]", lambda mm: "[" + " ".join(mm.group(1).split()) + "]", text)
    Path(a.out).write_text(text + "\n")
    cos = np.array([r["embedding"] for r in rows])
    print(f"wrote {a.out}; max |pooled - model's sentence_embedding| {worst:.1e}; "
          f"cos(food, bread) {cos[1] @ cos[2]:.3f}, cos(food, fox) {cos[1] @ cos[3]:.3f}")


if __name__ == "__main__":
    main()
