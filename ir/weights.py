"""Weights on disk: a graph's constant table as a safetensors file.

safetensors has no bfloat16 in its NumPy API, so bfloat16 arrays are stored as
their raw uint16 bits with the true dtype recorded in the file's metadata.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..errors import KilnError
from .dtypes import bfloat16, from_numpy

_META_KEY = "kiln.dtypes"


def save_weights(constants: Mapping[str, np.ndarray], path: str | Path) -> None:
    arrays, dtypes = {}, {}
    for name, array in constants.items():
        dt = from_numpy(array)
        if dt == bfloat16:
            array = array.view(np.uint16)
            dtypes[name] = dt.name
        # not np.ascontiguousarray: it turns a 0-d array into shape [1]
        arrays[name] = array if array.flags.c_contiguous else np.array(array, order="C")
    save_file(arrays, str(path), metadata={_META_KEY: json.dumps(dtypes)})


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        arrays = load_file(str(path))
        for name, dt in json.loads(meta.get(_META_KEY, "{}")).items():
            if dt != bfloat16.name:
                raise ValueError(f"metadata gives {name!r} the unknown dtype {dt!r}")
            arrays[name] = arrays[name].view(bfloat16.numpy)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise KilnError(f"cannot read weights file {path}: {e}") from None
    return arrays
