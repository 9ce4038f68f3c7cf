"""Text models over real sockets: OpenAI's Python client on /v1/embeddings
and /v1/models, TEI's routes (/embed, /embed_all, /tokenize, /decode,
/rerank, /predict) and tritonclient sending strings over KServe v2, against
the tiny text fixtures (models/text) and, when the shared models are there,
all-MiniLM-L6-v2 against sentence-transformers' pooling."""
import json
import math
import os
import shutil
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, start_server, stop_server

TEXT = ROOT / "models/text"
REF = json.loads((TEXT / "tiny_reference.json").read_text())
SHARED = Path(os.environ.get("POMME_TEST_MODELS", ROOT.parent / "shared/models"))


def text_model(repo: Path, name: str, onnx: Path, vocab: str, text: str, batching: bool = True):
    (repo / name / "1").mkdir(parents=True)
    shutil.copy(onnx, repo / name / "1/model.onnx")
    shutil.copy(TEXT / "minilm" / vocab, repo / name / vocab)
    head = 'backends = ["tract"]\n'
    if batching:
        head += "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
    (repo / name / "config.toml").write_text(head + "[text]\n" + text)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("text") / "repo"
    text_model(repo, "tiny", TEXT / "tiny_embed.onnx", "tokenizer.json",
               "seq_buckets = [16, 32, 64]\nmax_batch_tokens = 128\ndimensions = [8]\n")
    text_model(repo, "tiny_strict", TEXT / "tiny_embed.onnx", "vocab.txt",
               'seq_buckets = [16]\ntruncation = "error"\n', batching=False)
    labels = json.loads((TEXT / "tiny_classifier.labels.json").read_text())
    text_model(repo, "tiny_cls", TEXT / "tiny_classifier.onnx", "vocab.txt",
               'task = "classify"\nlabels = %s\n' % json.dumps([labels[str(i)] for i in range(3)]))
    text_model(repo, "tiny_rerank", TEXT / "tiny_reranker.onnx", "tokenizer.json", 'task = "rerank"\n')
    minilm = SHARED / "minilm_l6.onnx"
    if minilm.exists():
        text_model(repo, "minilm", minilm, "vocab.txt",
                   "seq_buckets = [16, 32, 64, 128, 256]\nmax_batch_tokens = 2048\n")
    (repo / "add_one" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models/add_one.onnx", repo / "add_one/1/model.onnx")
    s = start_server(repo)
    yield s
    stop_server(s)


def post(s, path, body):
    req = urllib.request.Request(f"http://{s['http']}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def cos_dist(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def client(s):
    return openai.OpenAI(base_url=f"http://{s['http']}/v1", api_key="unused", max_retries=0)


def test_openai_client_embeds_as_the_reference(text_server):
    texts = [c["text"] for c in REF["texts"]]
    c = client(text_server)
    # The client asks for base64 by default and decodes it with numpy.
    for fmt in [{}, {"encoding_format": "float"}]:
        r = c.embeddings.create(model="tiny", input=texts, **fmt)
        assert [d.index for d in r.data] == list(range(len(texts)))
        for d, case in zip(r.data, REF["texts"]):
            assert cos_dist(d.embedding, case["tiny_embed"]["embedding"]) < 1e-6
        assert r.usage.prompt_tokens == sum(len(c["ids"]) for c in REF["texts"])
        assert r.model == "tiny"
    one = c.embeddings.create(model="tiny", input=texts[0]).data[0].embedding
    assert cos_dist(one, REF["texts"][0]["tiny_embed"]["embedding"]) < 1e-6
    # Token ids in, as the model's tokenizer wrote them.
    ids = REF["texts"][1]["ids"][1:-1]
    tok = c.embeddings.create(model="tiny", input=[ids]).data[0].embedding
    assert cos_dist(tok, REF["texts"][1]["tiny_embed"]["embedding"]) < 1e-6
    # Matryoshka: the first 8 values, normalized again.
    short = c.embeddings.create(model="tiny", input=texts[0], dimensions=8, encoding_format="float")
    v = np.asarray(short.data[0].embedding)
    assert v.shape == (8,) and abs(np.linalg.norm(v) - 1) < 1e-5
    names = [m.id for m in c.models.list().data]
    assert "tiny" in names and "add_one" in names


def test_openai_errors_are_openai_errors(text_server):
    c = client(text_server)
    with pytest.raises(openai.NotFoundError, match="not served"):
        c.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="empty string"):
        c.embeddings.create(model="tiny", input=["ok", ""])
    with pytest.raises(openai.BadRequestError, match="cannot give 5 dimensions"):
        c.embeddings.create(model="tiny", input="x", dimensions=5)
    with pytest.raises(openai.BadRequestError, match="not a text model"):
        c.embeddings.create(model="add_one", input="x")
    with pytest.raises(openai.BadRequestError, match="task"):
        c.embeddings.create(model="tiny_cls", input="x")
    code, body = post(text_server, "/v1/embeddings", {"model": "tiny"})
    assert code == 400 and "input" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


def test_concurrent_requests_batch_and_agree(text_server):
    texts = [c["text"] for c in REF["texts"]] * 8
    want = [c["tiny_embed"]["embedding"] for c in REF["texts"]] * 8
    c = client(text_server)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: c.embeddings.create(model="tiny", input=t).data[0].embedding, texts))
    assert max(cos_dist(g, w) for g, w in zip(got, want)) < 1e-6
    # A request of more texts than max_batch_size is split and answered whole.
    r = c.embeddings.create(model="tiny", input=texts)
    assert len(r.data) == len(texts)
    assert max(cos_dist(d.embedding, w) for d, w in zip(r.data, want)) < 1e-6


def test_tei_routes(text_server):
    s = text_server
    texts = [c["text"] for c in REF["texts"]]
    code, v = post(s, "/embed", {"inputs": texts, "model": "tiny"})
    assert code == 200 and len(v) == 3
    assert max(cos_dist(a, c["tiny_embed"]["embedding"]) for a, c in zip(v, REF["texts"])) < 1e-6
    code, raw = post(s, "/embed", {"inputs": texts[0], "model": "tiny", "normalize": False})
    assert code == 200 and abs(np.linalg.norm(raw[0]) - 1) > 1e-3
    assert cos_dist(raw[0], v[0]) < 1e-6
    code, allv = post(s, "/embed_all", {"inputs": texts, "model": "tiny"})
    assert code == 200
    for tokens, case in zip(allv, REF["texts"]):
        want = np.asarray(case["tiny_embed"]["last_hidden_state"])
        assert np.asarray(tokens).shape == want.shape
        assert np.abs(np.asarray(tokens) - want).max() < 1e-5
    code, toks = post(s, "/tokenize", {"inputs": texts[0], "model": "tiny"})
    assert code == 200 and [t["id"] for t in toks[0]] == REF["texts"][0]["ids"]
    assert toks[0][0]["special"] and toks[0][1]["start"] == 0
    code, dec = post(s, "/decode", {"ids": REF["texts"][0]["ids"], "model": "tiny"})
    assert code == 200 and dec == [texts[0].lower()]
    # Several text models: TEI's requests must name one.
    code, body = post(s, "/embed", {"inputs": "x"})
    assert code == 413 and "several text models" in body["error"] and body["error_type"] == "Validation"
    # Too long: refused unless truncation is asked for, with TEI's 413.
    long = "word " * 40
    code, body = post(s, "/embed", {"inputs": long, "model": "tiny_strict"})
    assert code == 413 and "limit of 16" in body["error"] and body["error_type"] == "Validation"
    code, cut = post(s, "/embed", {"inputs": long, "model": "tiny_strict", "truncate": True})
    assert code == 200 and len(cut[0]) == 16
    code, body = post(s, "/embed", {"inputs": long * 2, "model": "tiny", "truncate": False})
    assert code == 413 and "more than this model's limit" in body["error"]
    # Empty input: TEI's 400 "Empty"; a body that does not deserialize: 422.
    code, body = post(s, "/embed", {"inputs": [], "model": "tiny"})
    assert code == 400 and body["error_type"] == "Empty", body
    code, body = post(s, "/embed", {"input": "x", "model": "tiny"})
    assert code == 422, body


def test_tei_rerank_and_predict(text_server):
    s = text_server
    pairs = REF["pairs"]
    query = pairs[0]["query"]
    passages = [p["passage"] for p in pairs]
    code, ranked = post(s, "/rerank", {"query": query, "texts": passages, "model": "tiny_rerank",
                                       "return_text": True, "raw_scores": True})
    assert code == 200
    assert [r["score"] for r in ranked] == sorted([r["score"] for r in ranked], reverse=True)
    first = next(r for r in ranked if r["index"] == 0)
    assert abs(first["score"] - pairs[0]["tiny_reranker"]["logits"][0]) < 1e-5
    assert first["text"] == passages[0]
    code, sig = post(s, "/rerank", {"query": query, "texts": passages[:1], "model": "tiny_rerank"})
    assert abs(sig[0]["score"] - 1 / (1 + math.exp(-pairs[0]["tiny_reranker"]["logits"][0]))) < 1e-5
    code, pred = post(s, "/predict", {"inputs": REF["texts"][0]["text"], "model": "tiny_cls"})
    assert code == 200
    logits = np.asarray(REF["texts"][0]["tiny_classifier"]["logits"])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    labels = ["negative", "neutral", "positive"]
    assert pred[0]["label"] == labels[int(np.argmax(p))]
    assert abs(pred[0]["score"] - p.max()) < 1e-5
    code, batch = post(s, "/predict", {"inputs": [[t["text"]] for t in REF["texts"]], "model": "tiny_cls"})
    assert code == 200 and len(batch) == 3
    code, body = post(s, "/predict", {"inputs": ["a", "b"], "model": "tiny_cls"})
    assert code == 413 and "single texts" in body["error"]
    code, body = post(s, "/rerank", {"query": "q", "texts": ["t"], "model": "tiny"})
    assert code == 413 and 'task = "rerank"' in body["error"]


def test_tritonclient_sends_strings(text_server):
    c = httpclient.InferenceServerClient(text_server["http"])
    meta = c.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["name"] == "embedding"
    texts = np.array([c_["text"].encode() for c_ in REF["texts"]], dtype=object)
    x = httpclient.InferInput("text", [len(texts)], "BYTES")
    x.set_data_from_numpy(texts)
    r = c.infer("tiny", [x], outputs=[httpclient.InferRequestedOutput("embedding")])
    emb = r.as_numpy("embedding")
    assert emb.shape == (3, 16)
    for e, case in zip(emb, REF["texts"]):
        assert cos_dist(e, case["tiny_embed"]["embedding"]) < 1e-6
    # Triton's classification extension names the classifier's labels.
    r = c.infer("tiny_cls", [x], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
    top = r.as_numpy("logits")
    assert top.shape == (3, 1) and b":" in top[0][0]
    # The same over gRPC.
    g = grpcclient.InferenceServerClient(text_server["grpc"])
    gx = grpcclient.InferInput("text", [len(texts)], "BYTES")
    gx.set_data_from_numpy(texts)
    gemb = g.infer("tiny", [gx], outputs=[grpcclient.InferRequestedOutput("embedding")]).as_numpy("embedding")
    assert np.abs(gemb - emb).max() < 1e-6
    bad = httpclient.InferInput("text", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(Exception, match="not UTF-8"):
        c.infer("tiny", [bad])


def test_minilm_matches_sentence_transformers(text_server):
    if not (SHARED / "minilm_l6.onnx").exists():
        print(f"SKIP test_minilm_matches_sentence_transformers: no {SHARED}/minilm_l6.onnx")
        return
    ref = json.loads((ROOT / "tests/text/reference_embeddings.json").read_text())
    texts = [t["text"] for t in ref["texts"]]
    c = client(text_server)
    with ThreadPoolExecutor(8) as pool:
        alone = list(pool.map(lambda t: c.embeddings.create(model="minilm", input=t).data[0].embedding, texts))
    together = [d.embedding for d in c.embeddings.create(model="minilm", input=texts).data]
    for a, b, t in zip(alone, together, ref["texts"]):
        assert cos_dist(a, t["embedding"]) < 1e-5
        assert cos_dist(b, t["embedding"]) < 1e-5
