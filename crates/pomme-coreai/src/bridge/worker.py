"""pomme's Core AI engine worker: one process, one asyncio loop, one model.

pomme spawns this with the Python interpreter of an environment holding
Apple's `coreai-core` and talks to it over its stdin (requests) and the file
descriptor that was stdout (replies); fd 1 is then pointed at stderr, so
anything the runtime prints never corrupts a reply. If Apple's runtime dies
(a Swift fatal error aborts the process), pomme sees the pipe close, fails the
in-flight request with the stderr tail and starts a fresh worker.

Frame (both ways): u32 header length, u64 payload length (little-endian),
a JSON header (space-padded so the payload starts 8-byte aligned in the
frame), then the payload: the tensors' bytes in the order the header lists
them, each starting at a multiple of 8 bytes (zero padding between).
`python -c WORKER SPIN_US`: after each reply, poll this long for the next
request before sleeping.
"""

import asyncio
import json
import os
import platform
import select
import struct
import sys
import time
import traceback
from pathlib import Path

PREFIX = struct.Struct("<IQ")
REPLY_FD = os.dup(1)
os.dup2(2, 1)
REQUEST_FD = 0


class Requests:
    """Reads request frames into one growing buffer (the runtime copies
    inputs into its own arrays, so the buffer is reused). With a spin
    window the fd is non-blocking and a read first polls for that long
    before sleeping in select: a stream of requests then never waits for
    a wake-up."""

    def __init__(self, fd, spin_s):
        self.fd = fd
        self.spin_s = spin_s
        self.buf = bytearray(1 << 16)
        self.view = memoryview(self.buf)
        if spin_s > 0:
            os.set_blocking(fd, False)

    def _fill(self, have, need):
        if need > len(self.buf):
            grown = bytearray(max(need, 2 * len(self.buf)))
            grown[:have] = self.buf[:have]
            self.buf, self.view = grown, memoryview(grown)
        spin_until = None
        while have < need:
            try:
                k = os.readv(self.fd, [self.view[have:]])
            except BlockingIOError:
                now = time.perf_counter()
                if spin_until is None:
                    spin_until = now + self.spin_s
                if now >= spin_until:
                    select.select([self.fd], [], [])
                continue
            if k == 0:
                # pomme closed the pipe: it is done with us. os._exit skips the
                # Swift runtime's teardown, which sometimes aborts at exit.
                os._exit(0)
            have += k
        return have

    def frame(self):
        """(header dict, payload memoryview valid until the next frame)."""
        have = self._fill(0, PREFIX.size)
        hlen, plen = PREFIX.unpack_from(self.buf, 0)
        total = PREFIX.size + hlen + plen
        self._fill(have, total)
        header = json.loads(bytes(self.view[PREFIX.size:PREFIX.size + hlen]))
        return header, self.view[PREFIX.size + hlen:total]


def write_all(parts):
    parts = [memoryview(p).cast("B") for p in parts if len(p)]
    while parts:
        k = os.writev(REPLY_FD, parts)
        while parts and k >= len(parts[0]):
            k -= len(parts[0])
            parts.pop(0)
        if parts and k:
            parts[0] = parts[0][k:]


PAD = bytes(8)


def reply(header, arrays=()):
    """Sends a header and tensors; each tensor starts 8-byte aligned in the payload."""
    blobs, total = [], 0
    for a in arrays:
        pad = -total % 8
        if pad:
            blobs.append(PAD[:pad])
            total += pad
        # As bytes: memoryview has no format for float16 / bfloat16.
        blobs.append(a.reshape(-1).view(np.uint8).data)
        total += a.nbytes
    head = json.dumps(header).encode()
    # Spaces after the JSON put the payload 8-byte aligned in the frame.
    head += b" " * (-(PREFIX.size + len(head)) % 8)
    write_all([PREFIX.pack(len(head), total), head, *blobs])


import numpy as np  # noqa: E402  (after the fd dance: imports may print)

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - coreai-core depends on it
    BF16 = None

from coreai.runtime import AIModel, NDArray  # noqa: E402

try:
    from coreai.runtime import _use_os_coreai as USE_OS  # noqa: E402
except ImportError:  # pragma: no cover
    USE_OS = False

DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "bool": np.dtype("?"),
}
if BF16 is not None:
    DTYPES["bfloat16"] = BF16


def spec(name, d):
    return {"name": name, "dtype": str(d.dtype), "shape": [-1 if s is None else int(s) for s in d.shape]}


def describe(fn):
    d = fn.desc
    return {
        "inputs": [spec(n, d.input_descriptor(n)) for n in d.input_names],
        "outputs": [spec(n, d.output_descriptor(n)) for n in d.output_names],
        "states": [spec(n, d.state_descriptor(n)) for n in d.state_names],
    }


def runtime_version():
    import importlib.metadata as md

    try:
        return md.version("coreai-core")
    except md.PackageNotFoundError:
        return "unknown"


def runtime_name():
    v = runtime_version()
    where = "CoreAI.framework" if USE_OS else "in-package runtime"
    return f"coreai-core {v} ({where}, {platform.system()} {platform.machine()})"


def specialization(device):
    """SpecializationOptions for `device` (macOS with the OS framework only)."""
    from coreai.runtime import ComputeUnitKind, SpecializationOptions

    if device == "cpu":
        return SpecializationOptions.cpu_only()
    if device == "auto":
        return SpecializationOptions.default()
    kind = {"ane": ComputeUnitKind.neural_engine, "gpu": ComputeUnitKind.gpu}[device]()
    return SpecializationOptions.from_preferred_compute_unit_kind(kind)


def compile_into(asset, compiled):
    """Lowers `asset` to the Linux runtime's .odix program in `compiled`,
    written beside it first and renamed, so concurrent workers never see half."""
    from coreai.authoring import AIModelAsset

    compiled = Path(compiled)
    compiled.parent.mkdir(parents=True, exist_ok=True)
    tmp = compiled.with_name(f"{compiled.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    AIModelAsset.load(Path(asset))._write_odix(tmp)
    try:
        os.rename(tmp, compiled)
    except OSError:
        # Another worker got there first; theirs is as good as ours.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


class Engine:
    def __init__(self):
        self.model = None
        self.functions = {}

    async def load(self, h):
        started = time.perf_counter()
        path = Path(h["path"])
        compiled = h.get("compiled")
        device = h.get("device", "cpu")
        how = ""
        if any(path.glob("*.odix")):
            self.model = await AIModel.load(path)
            how = "precompiled"
        elif USE_OS:
            opts = None if device is None else specialization(device)
            self.model = await AIModel.load(path, opts)
            how = f"specialized by CoreAI.framework for {device}"
        else:
            if device not in (None, "cpu", "auto"):
                raise RuntimeError(
                    f"device '{device}' needs CoreAI.framework (macOS 27+); "
                    "this runtime runs on the CPU only"
                )
            if compiled is not None:
                # The cache key's second half: what compiled it, and for where.
                tag = f"coreai-core{runtime_version()}-{platform.system()}-{platform.machine()}"
                compiled = f"{compiled}-{tag}.aimodelx"
            cache_hit = compiled is not None and any(Path(compiled).glob("*.odix"))
            if not cache_hit:
                if compiled is None:
                    raise RuntimeError("no compiled-program cache directory was given")
                compile_into(path, compiled)
            self.model = await AIModel.load(Path(compiled))
            how = "cache hit" if cache_hit else "compiled"
        names = list(self.model.function_names)
        functions = {}
        for n in names:
            functions[n] = describe(self.fn(n))
        meta = {}
        mpath = path / "metadata.json"
        if mpath.is_file():
            try:
                meta = json.loads(mpath.read_text())
            except ValueError:
                meta = {}
        return {
            "functions": functions,
            "order": names,
            "metadata": meta,
            "runtime": runtime_name(),
            "how": how,
            "load_ms": (time.perf_counter() - started) * 1e3,
            "pid": os.getpid(),
            "compiled": compiled if not USE_OS else None,
        }

    def fn(self, name):
        f = self.functions.get(name)
        if f is None:
            f = self.model.load_function(name)
            self.functions[name] = f
        return f

    async def run(self, h, payload):
        f = self.fn(h["function"])
        view = memoryview(payload)
        offset = 0

        def take(specs):
            nonlocal offset
            out = {}
            for s in specs:
                dt = DTYPES[s["dtype"]]
                count = 1
                for d in s["shape"]:
                    count *= d
                n = count * dt.itemsize
                offset += -offset % 8
                arr = np.frombuffer(view, dtype=dt, count=count, offset=offset).reshape(s["shape"])
                offset += n
                out[s["name"]] = NDArray(arr)
            return out

        inputs = take(h["inputs"])
        states = take(h.get("states", []))
        result = await f(inputs, states)
        outs, arrays = [], []
        for name, v in result.items():
            a = np.ascontiguousarray(v.numpy())
            outs.append({"name": name, "dtype": v.dtype, "shape": list(a.shape)})
            arrays.append(a)
        new_states = []
        for name, v in states.items():
            a = np.ascontiguousarray(v.numpy())
            new_states.append({"name": name, "dtype": v.dtype, "shape": list(a.shape)})
            arrays.append(a)
        return {"outputs": outs, "states": new_states}, arrays


async def main():
    engine = Engine()
    reply({"ready": True, "runtime": runtime_name(), "pid": os.getpid()})
    spin_s = float(sys.argv[1]) / 1e6 if len(sys.argv) > 1 else 0.0
    requests = Requests(REQUEST_FD, spin_s)
    while True:
        header, payload = requests.frame()
        op = header.get("op")
        try:
            if op == "run":
                h, arrays = await engine.run(header, payload)
                reply(h, arrays)
            elif op == "load":
                reply(await engine.load(header))
            elif op == "exit":
                os._exit(0)
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - every failure becomes a reply
            msg = " ".join(str(e).split()) or type(e).__name__
            if op != "run":
                traceback.print_exc(file=sys.stderr)
            reply({"error": f"{type(e).__name__}: {msg}"})


asyncio.run(main())
