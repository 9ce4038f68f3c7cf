"""Tiny text models for fast tests (ONNX opset 17, IR 8, deterministic numpy weights).

What: writes into models/text/
  tiny_embed.onnx       input_ids, attention_mask int64 [batch,seq]
                        -> last_hidden_state float32 [batch,seq,16]
                        h = tanh(E[id % 1024] + P[pos] + (1 - mask) * D)
                        (no pooled output; the server pools).  A token's vector depends
                        only on its id and position, never on the other tokens or the
                        sequence length, so padding changes nothing at unmasked positions.
                        Padded positions are *not* zero (D shifts them), so a server
                        that pools without the mask gets a different answer.
  tiny_classifier.onnx  input_ids, attention_mask, token_type_ids int64 [batch,seq]
                        -> logits float32 [batch,3]
                        g = tanh(E[id % 1024] + P[pos] + T[type]);
                        logits = masked_mean(g) @ Wc + bc
                        id2label in tiny_classifier.labels.json
  tiny_reranker.onnx    same inputs -> logits float32 [batch,1] (cross-encoder style)
                        a = mean of g over tokens with mask=1 and type 0 (query),
                        b = the same over type 1 (passage);
                        logit = sum(a * b * wr) + br  (so the segments matter: with
                        all-zero token types the score is just br)
  tiny_reference.json   3 texts and 3 (query, passage) pairs, their ids from
                        models/text/minilm/tokenizer.json (no truncation/padding), and
                        onnxruntime's outputs for each, run one at a time (batch 1,
                        unpadded); for tiny_embed also the mask-mean-pooled,
                        L2-normalised embedding.
E [1024,16], P [512,16] (so seq <= 512), T [2,16], D [16], Wc, bc, wr, br come from
numpy default_rng(SEED); the numpy functions below (embed_ref, classifier_ref,
reranker_ref) are the reference semantics, checked against onnxruntime on a padded
batch when the script runs.

Why: MiniLM is 90 MB and slow; these exercise tokenization -> batching/padding ->
pooling -> response plumbing in milliseconds.

How: python scripts/text/make_tiny.py   (numpy, onnx, onnxruntime, tokenizers; from the repo root)
"""
import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "models" / "text"
SEED, VOCAB, MAXPOS, DIM = 20241, 1024, 512, 16
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
TEXTS = ["A man is eating food.", "The quick brown fox jumps over the lazy dog.",
         "Ångström: naïve café, 中文 and emoji \U0001f642!"]
PAIRS = [("What is the capital of France?", "Paris is the capital of France."),
         ("What is the capital of France?", "A man is eating food."),
         ("Paris is the capital of France.", "What is the capital of France?")]


def weights():
    rng = np.random.default_rng(SEED)
    f = lambda *shape, s=1.0: (rng.standard_normal(shape) * s).astype(np.float32)
    return dict(E=f(VOCAB, DIM), P=f(MAXPOS, DIM, s=0.3), T=f(2, DIM, s=0.5), D=f(DIM),
                Wc=f(DIM, 3), bc=f(3, s=0.1), wr=np.abs(f(DIM)) * 4, br=f(1, s=0.1))


W = weights()


# ---- numpy reference semantics (float32 inputs, float64 math) ----
def _tokens(ids, extra):
    return np.tanh(W["E"][ids % VOCAB].astype(np.float64) + W["P"][: ids.shape[1]] + extra)


def _masked_mean(h, m):
    m = m[..., None].astype(np.float64)
    return (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def embed_ref(ids, mask):
    return _tokens(ids, (1 - mask[..., None]) * W["D"].astype(np.float64))


def pooled_ref(ids, mask):
    p = _masked_mean(embed_ref(ids, mask), mask)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def classifier_ref(ids, mask, types):
    return _masked_mean(_tokens(ids, W["T"][types]), mask) @ W["Wc"] + W["bc"]


def reranker_ref(ids, mask, types):
    g = _tokens(ids, W["T"][types])
    a, b = _masked_mean(g, mask * (types == 0)), _masked_mean(g, mask * (types == 1))
    return (a * b * W["wr"]).sum(1, keepdims=True) + W["br"]


# ---- ONNX graphs ----
class G:
    def __init__(self):
        self.nodes, self.inits = [], {}

    def c(self, name, arr):
        self.inits.setdefault(name, numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def n(self, op, ins, out, **kw):
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def tokens(self, extra=None):
        """tanh(E[id % 1024] + P[:seq] (+ extra)) -> [batch,seq,16]."""
        ids = self.n("Mod", ["input_ids", self.c("vocab", np.array(VOCAB, np.int64))], "ids_mod")
        x = self.n("Gather", [self.c("E", W["E"]), ids], "tok_emb")
        seq = self.n("Shape", ["input_ids"], "seq_len", start=1, end=2)
        pos = self.n("Slice", [self.c("P", W["P"]), self.c("zero", np.array([0], np.int64)), seq,
                               self.c("axis0", np.array([0], np.int64))], "pos_emb")
        x = self.n("Add", [x, pos], "tok_pos")
        if extra:
            x = self.n("Add", [x, extra], "tok_pos_extra")
        return self.n("Tanh", [x], "tokens")

    def mask3(self, mask, name):
        m = self.n("Cast", [mask], name + "_f", to=TensorProto.FLOAT)
        return self.n("Unsqueeze", [m, self.c("axis_last", np.array([-1], np.int64))], name)

    def masked_mean(self, h, m3, name):
        ax = self.c("axis1", np.array([1], np.int64))
        s = self.n("ReduceSum", [self.n("Mul", [h, m3], name + "_masked"), ax], name + "_sum", keepdims=0)
        cnt = self.n("Clip", [self.n("ReduceSum", [m3, ax], name + "_cnt_raw", keepdims=0),
                              self.c("eps", np.array(1e-9, np.float32))], name + "_cnt")
        return self.n("Div", [s, cnt], name)

    def model(self, name, inputs, outputs, doc):
        ids = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        g = helper.make_graph(self.nodes, name, [ids(i) for i in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              list(self.inits.values()))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pomme scripts/text/make_tiny.py", doc_string=doc)
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def tiny_embed():
    g = G()
    m = g.n("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = g.n("Sub", [g.c("one", np.array(1.0, np.float32)), m], "mask_inv")
    inv = g.n("Unsqueeze", [inv, g.c("axis_last", np.array([-1], np.int64))], "mask_inv3")
    g.n("Identity", [g.tokens(g.n("Mul", [inv, g.c("D", W["D"])], "pad_shift"))], "last_hidden_state")
    return g.model("tiny_embed", ["input_ids", "attention_mask"], [("last_hidden_state", ["batch", "seq", DIM])],
                   "tiny test embedder: last_hidden_state = tanh(E[id % 1024] + P[pos] + (1 - mask) * D)")


def _typed_tokens(g):
    t = g.n("Gather", [g.c("T", W["T"]), "token_type_ids"], "type_emb")
    return g.tokens(t)


def tiny_classifier():
    g = G()
    h = g.masked_mean(_typed_tokens(g), g.mask3("attention_mask", "mask3"), "mean")
    g.n("Add", [g.n("MatMul", [h, g.c("Wc", W["Wc"])], "logits_mm"), g.c("bc", W["bc"])], "logits")
    return g.model("tiny_classifier", ["input_ids", "attention_mask", "token_type_ids"], [("logits", ["batch", 3])],
                   "tiny test sequence classifier (3 labels, see tiny_classifier.labels.json): "
                   "logits = masked_mean(tanh(E[id % 1024] + P[pos] + T[type])) @ Wc + bc")


def tiny_reranker():
    g = G()
    h = _typed_tokens(g)
    m = g.n("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    tb = g.n("Cast", ["token_type_ids"], "type_f", to=TensorProto.FLOAT)  # passage indicator (types are 0/1)
    mb = g.n("Mul", [m, tb], "mask_passage")
    ma = g.n("Sub", [m, mb], "mask_query")
    ax = g.c("axis_last", np.array([-1], np.int64))
    a = g.masked_mean(h, g.n("Unsqueeze", [ma, ax], "mask_query3"), "mean_query")
    b = g.masked_mean(h, g.n("Unsqueeze", [mb, ax], "mask_passage3"), "mean_passage")
    ab = g.n("Mul", [g.n("Mul", [a, b], "qp"), g.c("wr", W["wr"])], "qp_w")
    s = g.n("ReduceSum", [ab, g.c("axis1", np.array([1], np.int64))], "score", keepdims=1)
    g.n("Add", [s, g.c("br", W["br"])], "logits")
    return g.model("tiny_reranker", ["input_ids", "attention_mask", "token_type_ids"], [("logits", ["batch", 1])],
                   "tiny test cross-encoder: logit = sum(mean_query(g) * mean_passage(g) * wr) + br, "
                   "g = tanh(E[id % 1024] + P[pos] + T[type]); query = type 0, passage = type 1")


def main():
    import onnxruntime as ort
    from tokenizers import Tokenizer
    models = {"tiny_embed": tiny_embed(), "tiny_classifier": tiny_classifier(), "tiny_reranker": tiny_reranker()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = {}
    for name, m in models.items():
        path = OUT / f"{name}.onnx"
        onnx.save(m, path)
        assert path.stat().st_size < 200_000, path
        sess[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.1f} kB)")
    (OUT / "tiny_classifier.labels.json").write_text(json.dumps(LABELS, indent=1) + "\n")

    tok = Tokenizer.from_file(str(OUT / "minilm" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    arr = lambda x: np.array([x], np.int64)
    f = lambda a: [float(v) for v in np.asarray(a).ravel()]  # float32 -> exact float64 in JSON
    ref = {"about": "written by scripts/text/make_tiny.py; ids from models/text/minilm/tokenizer.json "
                    "(no truncation, no padding); outputs from onnxruntime, one text at a time (batch 1)",
           "labels": LABELS, "texts": [], "pairs": []}
    worst = 0.0
    for t in TEXTS:
        e = tok.encode(t)
        feed = {"input_ids": arr(e.ids), "attention_mask": arr(e.attention_mask)}
        hidden = sess["tiny_embed"].run(None, feed)[0]
        m = feed["attention_mask"][..., None]
        pooled = (hidden * m).sum(1) / m.sum(1)
        pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        logits = sess["tiny_classifier"].run(None, {**feed, "token_type_ids": arr(e.type_ids)})[0]
        worst = max(worst, np.abs(pooled - pooled_ref(feed["input_ids"], feed["attention_mask"])).max())
        ref["texts"].append({"text": t, "ids": e.ids, "token_type_ids": e.type_ids,
                             "tiny_embed": {"last_hidden_state": [f(r) for r in hidden[0]], "embedding": f(pooled[0])},
                             "tiny_classifier": {"logits": f(logits[0]), "label": LABELS[str(int(logits.argmax()))]}})
    for q, p in PAIRS:
        e = tok.encode(q, p)
        feed = {"input_ids": arr(e.ids), "attention_mask": arr(e.attention_mask), "token_type_ids": arr(e.type_ids)}
        ref["pairs"].append({"query": q, "passage": p, "ids": e.ids, "token_type_ids": e.type_ids,
                             "tiny_reranker": {"logits": f(sess["tiny_reranker"].run(None, feed)[0][0])},
                             "tiny_classifier": {"logits": f(sess["tiny_classifier"].run(None, feed)[0][0])}})
    text = json.dumps(ref, indent=1, ensure_ascii=False)  # then put each list of numbers on one line
    text = re.sub(r"\[\s+([-+0-9.,e\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    (OUT / "tiny_reference.json").write_text(text + "\n")
    print(f"wrote models/text/tiny_reference.json; labels {[r['tiny_classifier']['label'] for r in ref['texts']]}, "
          f"reranker logits: {[r['tiny_reranker']['logits'][0] for r in ref['pairs']]}")

    # ONNX vs numpy references on a padded batch of every text and pair, and padding invariance.
    enc = [tok.encode(t) for t in TEXTS] + [tok.encode(q, p) for q, p in PAIRS]
    S = max(len(e.ids) for e in enc) + 5
    pad = lambda rows: np.array([r + [0] * (S - len(r)) for r in rows], np.int64)
    ids, mask, types = (pad([getattr(e, k) for e in enc]) for k in ("ids", "attention_mask", "type_ids"))
    got = sess["tiny_embed"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    worst = max(worst, np.abs(got - embed_ref(ids, mask)).max())
    for name, fn in (("tiny_classifier", classifier_ref), ("tiny_reranker", reranker_ref)):
        got = sess[name].run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        worst = max(worst, np.abs(got - fn(ids, mask, types)).max())
    batched = sess["tiny_reranker"].run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    single = [r["tiny_reranker"]["logits"][0] for r in ref["pairs"]]
    pad_diff = np.abs(batched[len(TEXTS):, 0] - single).max()
    print(f"max abs diff onnxruntime vs numpy reference (padded batch): {worst:.1e}; "
          f"reranker padded-batch vs single: {pad_diff:.1e}")
    assert worst < 1e-5 and pad_diff < 1e-5


if __name__ == "__main__":
    main()
