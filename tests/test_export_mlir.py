"""kiln export-mlir: through ONNX and torch-mlir's ONNX importer (iree-import-onnx) to
the torch dialect and on to linalg-on-tensors; the text re-parses with iree-opt."""
from __future__ import annotations

import subprocess

import numpy as np
from typer.testing import CliRunner

from kiln.cli import app
from kiln.export.mlir import export_mlir, find_tool
from kiln.ir import GraphBuilder, save, tensor


def _mlp():
    b = GraphBuilder("mlp")
    x = b.input("x", tensor("f32", 2, 4))
    w = b.constant("w", np.ones((3, 4), np.float32))
    return b.build(b.relu(b.linear(x, w)))


def _reparses(path) -> None:
    subprocess.run([find_tool("iree-opt"), str(path)], check=True, capture_output=True)


def test_torch_dialect(tmp_path):
    text = export_mlir(_mlp(), dialect="torch")
    assert 'torch.operator "onnx.MatMul"' in text and 'torch.operator "onnx.Relu"' in text
    (tmp_path / "t.mlir").write_text(text)
    _reparses(tmp_path / "t.mlir")


def test_linalg_on_tensors(tmp_path):
    text = export_mlir(_mlp())
    assert "linalg.matmul" in text and "linalg.generic" in text and "torch." not in text
    (tmp_path / "l.mlir").write_text(text)
    _reparses(tmp_path / "l.mlir")


def test_cli_export_mlir(tmp_path):
    save(_mlp(), tmp_path / "mlp.kir")
    out = tmp_path / "mlp.mlir"
    result = CliRunner().invoke(app, ["export-mlir", str(tmp_path / "mlp.kir"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "linalg.matmul" in out.read_text()
