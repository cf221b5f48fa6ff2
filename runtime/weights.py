"""Weights on disk: a table of named arrays as one safetensors file.

safetensors has no bfloat16 in its NumPy API, so bfloat16 arrays are stored as their
raw uint16 bits, with the true dtype recorded in the file's metadata under
`kiln.dtypes` (a JSON object: name -> "bf16"). Both the compiler (`kiln.ir.weights`,
the `.kir` sidecar) and the runtime (the `.kiln` artifact) read and write weights
through this module; it imports only NumPy, safetensors and the runtime's dtype table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import KilnError
from .buffers import aligned_copy
from .dtypes import NUMPY_DTYPES

META_KEY = "kiln.dtypes"
_BF16 = NUMPY_DTYPES["bf16"]
_KNOWN = set(NUMPY_DTYPES.values())


def save_weights(constants: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write `constants` to the safetensors file `path` (bfloat16 as bits + metadata)."""
    arrays, dtypes = {}, {}
    for name, array in constants.items():
        array = np.asarray(array)
        if array.dtype not in _KNOWN:
            raise KilnError(f"cannot save weight {name!r}: kiln has no dtype for NumPy "
                            f"{array.dtype}")
        if array.dtype == _BF16:
            array = array.view(np.uint16)
            dtypes[name] = "bf16"
        # not np.ascontiguousarray: it turns a 0-d array into shape [1]
        arrays[name] = array if array.flags.c_contiguous else np.array(array, order="C")
    save_file(arrays, str(path), metadata={META_KEY: json.dumps(dtypes)})


def load_weights(path: str | Path, *, aligned: bool = False) -> dict[str, np.ndarray]:
    """Read a weights file. With `aligned`, every array is a 64-byte aligned copy that a
    kernel can read (made one tensor at a time, so peak memory stays near the total)."""
    try:
        arrays: dict[str, np.ndarray] = {}
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            special = json.loads(meta.get(META_KEY, "{}"))
            if not isinstance(special, dict):
                raise ValueError(f"metadata {META_KEY!r} is not a JSON object")
            for name in f.keys():
                array = f.get_tensor(name)
                arrays[name] = aligned_copy(array) if aligned else array
        for name, dt in special.items():
            if dt != "bf16":
                raise ValueError(f"metadata gives {name!r} the unknown dtype {dt!r}")
            if name not in arrays:
                raise ValueError(f"metadata names {name!r}, which the file does not hold")
            arrays[name] = arrays[name].view(_BF16)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise KilnError(f"cannot read weights file {path}: {e}") from None
    return arrays
