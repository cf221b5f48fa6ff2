"""kiln `Graph` -> MLIR text, through ONNX and torch-mlir's ONNX importer.

    export_mlir(graph, dialect="linalg")
      -> export.onnx.export_onnx(graph) -> model.onnx (a temporary directory)
      -> iree-import-onnx (torch-mlir's ONNX importer, vendored by iree-base-compiler):
         torch dialect, `torch.operator "onnx.*"` ops         [dialect="torch" stops here]
      -> iree-opt: convert-torch-onnx-to-torch, torch-lower-to-backend-contract,
         torch-decompose-complex-ops, torch-backend-to-linalg-on-tensors-backend-pipeline
         -> linalg-on-tensors (linalg.matmul, linalg.generic, ...) for IREE or any MLIR tool

The tools come from the `iree-base-compiler` package (pinned in requirements.txt);
torch-mlir itself publishes no PyPI wheels.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

from ..errors import ExportError
from ..ir import Graph
from .onnx import export_onnx

DIALECTS = ("torch", "linalg")
LINALG_PIPELINE = ("builtin.module(func.func(convert-torch-onnx-to-torch),"
                   "torch-lower-to-backend-contract,func.func(torch-decompose-complex-ops),"
                   "torch-backend-to-linalg-on-tensors-backend-pipeline)")


def find_tool(name: str) -> str:
    """An IREE command-line tool: beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ExportError(f"MLIR export needs {name} from the iree-base-compiler package "
                          "(pip install iree-base-compiler==3.13.0); it was not found")
    return found


def _run(step: str, args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise ExportError(f"{step} failed (exit {result.returncode}): "
                          + " | ".join(message[:8]))


def onnx_to_mlir(model: onnx.ModelProto, dialect: str = "linalg") -> str:
    if dialect not in DIALECTS:
        raise ExportError(f"unknown MLIR dialect {dialect!r}; kiln exports: {', '.join(DIALECTS)}")
    with tempfile.TemporaryDirectory(prefix="kiln-mlir-") as tmp:
        model_path, torch_path, linalg_path = (Path(tmp) / n for n in
                                               ("model.onnx", "torch.mlir", "linalg.mlir"))
        onnx.save_model(model, str(model_path))
        _run("iree-import-onnx (torch-mlir's ONNX importer)",
             [find_tool("iree-import-onnx"), str(model_path), "-o", str(torch_path)])
        if dialect == "torch":
            return torch_path.read_text()
        _run("iree-opt (torch -> linalg-on-tensors)",
             [find_tool("iree-opt"), f"--pass-pipeline={LINALG_PIPELINE}", str(torch_path),
              "-o", str(linalg_path)])
        return linalg_path.read_text()


def export_mlir(graph: Graph, dialect: str = "linalg") -> str:
    """The MLIR module of `graph` in the torch or linalg-on-tensors dialect."""
    return onnx_to_mlir(export_onnx(graph), dialect)
