"""Loading weight files with torch's safe (weights_only) unpickler, and saying clearly why one fails.

Training checkpoints carry their run's arguments as an argparse.Namespace (LaViLa's do), sometimes holding
paths; those are allow-listed. Anything else that needs arbitrary unpickling is refused, and the error
names the class so the user can re-save the state_dict alone.
"""
from __future__ import annotations

import argparse
import pathlib
import re
from contextlib import AbstractContextManager

import torch

SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath]


def safe_globals() -> AbstractContextManager:
    return torch.serialization.safe_globals(SAFE_GLOBALS)


def load_failure(e: BaseException) -> str:
    """One line on why torch could not load a file."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it pickles {m.group(1)}, which safe loading refuses (save the state_dict alone)"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:300]
