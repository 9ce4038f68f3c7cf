"""What the benchmark scripts that start `pomme serve` share: finding ONNX Runtime for it.

pomme's `ort` backend loads the onnxruntime library at run time. These scripts start pomme
outside the repository's working directory, so they name the library explicitly: ORT_DYLIB_PATH
if set, else the one in this repository's ./.venv (scripts/setup.sh makes it).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pomme_env() -> dict | None:
    """os.environ with ORT_DYLIB_PATH set, or None (after printing why) when no library is found."""
    env = dict(os.environ)
    if "ORT_DYLIB_PATH" not in env:
        libs = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*")))
        if not libs:
            print("error: ONNX Runtime not found: set ORT_DYLIB_PATH or create ./.venv with onnxruntime",
                  file=sys.stderr)
            return None
        env["ORT_DYLIB_PATH"] = libs[0]
    return env
