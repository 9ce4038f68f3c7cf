#!/usr/bin/env python3
"""SmoothQuant probe on all-MiniLM-L6-v2: ONNX Runtime's own dynamic int8 quantizer on the float
model and on the model smoothed (SmoothQuant, strength ALPHA), worst/mean cosine of
sentence_embedding over quant_vs_ort.py's 256 sentences, channel maxima from its 64 gate
sentences. The probe behind pomme's `--smooth` (crates/pomme-quant/src/smooth.rs).

    .venv/bin/python benches/smoothquant_probe.py ALPHA [MODELS_DIR]   # e.g. 0.8 ../shared/models
"""
import os, sys, tempfile, time, numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper, helper, TensorProto
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quant_vs_ort import sentences
from tokenizers import Tokenizer
from onnxruntime.quantization import quantize_dynamic, QuantType
tok = Tokenizer.from_file(os.path.join(HERE, "..", "models", "text", "minilm", "tokenizer.json"))
tok.enable_padding(); tok.enable_truncation(128)
def enc(s):
    e = tok.encode_batch(s); return (np.array([x.ids for x in e], np.int64), np.array([x.attention_mask for x in e], np.int64))
ids, mask = enc(sentences(256, 1)); gids, gmask = enc(sentences(64, 2))
MODELS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "..", "shared", "models")
SRC = os.path.join(MODELS, "minilm_l6.onnx")
T = tempfile.mkdtemp()
def sess(p, t=1):
    so = ort.SessionOptions(); so.intra_op_num_threads = t; so.inter_op_num_threads = 1
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
def emb(p, ids, mask):
    s = sess(p, 2); out = []
    for i in range(0, len(ids), 32):
        out.append(s.run(["sentence_embedding"], {"input_ids": ids[i:i+32], "attention_mask": mask[i:i+32]})[0])
    return np.concatenate(out)
def lat(p):
    s = sess(p, 1); f = {"input_ids": ids[:8], "attention_mask": mask[:8]}
    w = int(mask[:8].sum(1).max()); f = {k: v[:, :w] for k, v in f.items()}
    s.run(None, f); ts = []
    for _ in range(15):
        t = time.perf_counter(); s.run(None, f); ts.append(time.perf_counter() - t)
    return np.median(ts) * 1000
fe = emb(SRC, ids, mask)
def report(name, p):
    qe = emb(p, ids, mask)
    cos = (fe * qe).sum(1) / np.linalg.norm(fe, axis=1) / np.linalg.norm(qe, axis=1)
    print(f"{name:30s} min cos {cos.min():.5f} mean {cos.mean():.5f}  lat {lat(p):.2f} ms (float {lat(SRC):.2f})", flush=True)

alpha = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
m = onnx.load(SRC)
inits = {i.name: i for i in m.graph.initializer}
mms = [n for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).ndim == 2]
print(len(mms), "weight matmuls")
# activation max per channel over calibration set
acts = sorted({n.input[0] for n in mms})
mc = onnx.load(SRC)
for a in acts: mc.graph.output.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, None))
onnx.save(mc, T + "/calib.onnx")
sc = sess(T + "/calib.onnx", 2)
amax = {a: None for a in acts}
for i in range(0, 64, 16):
    outs = sc.run(acts, {"input_ids": gids[i:i+16], "attention_mask": gmask[i:i+16]})
    for a, o in zip(acts, outs):
        v = np.abs(o.reshape(-1, o.shape[-1])).max(0)
        amax[a] = v if amax[a] is None else np.maximum(amax[a], v)
by_in = {}
for n in mms: by_in.setdefault(n.input[0], []).append(n)
new_nodes = []
for a, nodes in by_in.items():
    ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
    wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
    s = (np.maximum(amax[a], 1e-5) ** alpha) / (np.maximum(wmax, 1e-5) ** (1 - alpha))
    s = s.astype(np.float32)
    inv = numpy_helper.from_array((1 / s).astype(np.float32), a + "_sq_inv")
    m.graph.initializer.append(inv)
    sm = a + "_sq"
    new_nodes.append(helper.make_node("Mul", [a, inv.name], [sm], name=a + "_sqmul"))
    for n, w in zip(nodes, ws):
        inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
        n.input[0] = sm
# insert Mul nodes right after producers (topological: append at front isn't valid); rebuild order
nodes = list(m.graph.node); del m.graph.node[:]
prod = {}
out_nodes = []
pending = {nn.input[0]: nn for nn in new_nodes}
graph_inputs = {i.name for i in m.graph.input}
for nn in new_nodes:
    if nn.input[0] in graph_inputs: out_nodes.append(nn)
for n in nodes:
    out_nodes.append(n)
    for o in n.output:
        if o in pending: out_nodes.append(pending[o])
m.graph.node.extend(out_nodes)
onnx.save(m, T + "/smooth.onnx")
report("smoothed float", T + "/smooth.onnx")
for pc in (False, True):
    quantize_dynamic(T + "/smooth.onnx", f"{T}/smooth_q{pc}.onnx", weight_type=QuantType.QInt8, per_channel=pc)
    report(f"smooth a={alpha} ort dyn pc={pc}", f"{T}/smooth_q{pc}.onnx")
    quantize_dynamic(SRC, f"{T}/q{pc}.onnx", weight_type=QuantType.QInt8, per_channel=pc)
    report(f"plain ort dyn pc={pc}", f"{T}/q{pc}.onnx")
