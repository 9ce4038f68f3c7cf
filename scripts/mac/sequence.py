#!/usr/bin/env python3
"""One sequence of a stateful model through pomme serve (KServe v2 JSON over HTTP).

    python3 scripts/mac/sequence.py http://127.0.0.1:8000 MODEL NAME=FILE.npy STEPS OUTDIR [--sequence-id 7]

Sends the same input STEPS times with Triton's sequence parameters (sequence_start on
the first request, sequence_end on the last) and writes each output's answers, stacked
step by step, as OUTDIR/<output>_steps.npy: the model's state must carry from one request
to the next. Python's standard library and numpy only.
"""
import argparse
import json
import os
import sys
import urllib.request

DTYPES = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8"}


def infer(url, model, inputs, params):
    body = {"inputs": [{"name": k, "datatype": DTYPES[str(v.dtype)], "shape": list(v.shape),
                        "data": v.ravel().tolist()} for k, v in inputs.items()],
            "parameters": params}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main(argv=None):
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("input", metavar="NAME=FILE.npy")
    ap.add_argument("steps", type=int)
    ap.add_argument("out_dir")
    ap.add_argument("--sequence-id", type=int, default=7)
    args = ap.parse_args(argv)
    name, _, path = args.input.partition("=")
    inputs = {name: np.load(path)}
    answers = {}
    for i in range(args.steps):
        params = {"sequence_id": args.sequence_id, "sequence_start": i == 0, "sequence_end": i == args.steps - 1}
        try:
            resp = infer(args.url.rstrip("/"), args.model, inputs, params)
        except urllib.error.HTTPError as e:
            print(f"sequence: request {i + 1}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}",
                  file=sys.stderr)
            return 1
        for o in resp["outputs"]:
            answers.setdefault(o["name"], []).append(np.array(o["data"], dtype=np.float32).reshape(o["shape"]))
    os.makedirs(args.out_dir, exist_ok=True)
    for k, v in answers.items():
        np.save(os.path.join(args.out_dir, f"{k}_steps.npy"), np.stack(v))
    print(json.dumps({k: len(v) for k, v in answers.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
