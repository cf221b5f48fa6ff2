"""Weights on disk: a graph's constant table as a safetensors file (the `.kir` sidecar).

The format (bfloat16 stored as raw uint16 bits with its dtype in the metadata) is
shared with the `.kiln` artifact and lives in `kiln.runtime.weights`, which imports
nothing from the compiler.
"""
from __future__ import annotations

from ..runtime.weights import load_weights, save_weights

__all__ = ["load_weights", "save_weights"]
