"""kiln export-onnx: the foundation models exported to ONNX run in ONNX Runtime with
kiln's interpreter's answers; unexportable ops are listed at once."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from kiln.cli import app
from kiln.errors import UnsupportedOpsError
from kiln.export.onnx import export_onnx
from kiln.frontend.torch import import_model
from kiln.ir import GraphBuilder, interpret, save, tensor
from tests.models import CNN, MLP, MODELS, randomize_batch_norm


def _check(graph, arrays):
    model = export_onnx(graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays)})
    for want, have in zip(interpret(graph, arrays), got):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_small_models_export(name):
    torch.manual_seed(0)
    model, x = (MLP().eval(), torch.randn(2, 20)) if name == "mlp" else \
        (randomize_batch_norm(CNN()), torch.randn(2, 3, 16, 16))
    _check(import_model(model, (x,)), [x.numpy()])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_foundation_models_export(name):
    torch.manual_seed(0)
    build, inputs, _, _ = MODELS[name]
    example = inputs(2, 8)
    _check(import_model(build().eval(), example), [t.numpy() for t in example])


def test_unexportable_ops_are_listed_together():
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 4))
    graph = b.build(b.atan2(b.expm1(x), b.log1p(x)))
    with pytest.raises(UnsupportedOpsError) as e:
        export_onnx(graph)
    assert set(e.value.ops) == {"atan2", "expm1", "log1p"}


def test_cli_export_onnx(tmp_path):
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "batch", 4))
    save(b.build(b.tanh(b.add(x, x))), tmp_path / "g.kir")
    out = tmp_path / "g.onnx"
    result = CliRunner().invoke(app, ["export-onnx", str(tmp_path / "g.kir"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], np.tanh(x + x), rtol=1e-6)
