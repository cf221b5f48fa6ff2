"""When the torch frontend imports torch's training IR as it is, without
`ExportedProgram.run_decompositions`: the decision (`decomposition_reasons`) on small
programs, the programs that still need decomposing, and whole models, whose directly
imported graph matches torch eager and equals, up to value names and source
locations, the graph imported after decomposing.

Tolerances as in test_torch_models.py (float32: rtol 1e-4, atol 1e-5).
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.export import ExportedProgram, export

import kiln.frontend.torch as frontend
from kiln.errors import UnsupportedOpsError
from kiln.frontend.torch import decomposition_reasons, import_model
from kiln.ir import print_graph
from kiln.testing import assert_same_outputs
from tests.models import CNN, MLP, MODELS, randomize_batch_norm

# torch.export's own pytree code warns about its internals
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

F32 = {"rtol": 1e-4, "atol": 1e-5}


class Fn(torch.nn.Module):
    def __init__(self, fn, layer: torch.nn.Module | None = None):
        super().__init__()
        self.fn, self.layer = fn, layer

    def forward(self, x):
        return self.fn(self, x)


def _without_grad(s, x):
    with torch.no_grad():   # becomes a wrap_with_set_grad_enabled call with a body graph
        y = x.sin() * 2
    return y + 1


def _roll_without_grad(s, x):
    with torch.no_grad():
        y = torch.roll(x, 1, 0)
    return y + 1


def _seen_through_view(s, x):
    y = x * 2
    first = y[0]     # a view of y, read after y changes
    y.add_(1)
    return first + y


# name -> (module, the reasons decomposition_reasons must give)
PROGRAMS = {
    "converted_ops": (Fn(lambda s, x: F.gelu(s.layer(x)).softmax(-1), torch.nn.Linear(4, 4)),
                      []),
    "op_without_converter": (Fn(lambda s, x: torch.roll(x, 1, 0) + 1), ["aten.roll.default"]),
    "update_of_new_tensor": (Fn(lambda s, x: s.layer(x).add_(x).relu(),     # ResNet's `+=`
                                torch.nn.Linear(4, 4)), []),
    "update_seen_through_view": (Fn(_seen_through_view), ["aten.add_.Tensor (in place)"]),
    "update_after_aliasing_op": (Fn(lambda s, x: F.dropout(x * 2, 0.5, False).add_(1)),
                                 ["aten.add_.Tensor (in place)"]),
    "update_in_another_dtype": (Fn(lambda s, x: (x * 2).add_(x.double())),
                                ["aten.add_.Tensor (in place)"]),
    "grad_mode_body": (Fn(_without_grad), []),
    "grad_mode_body_needing_decomposition": (Fn(_roll_without_grad), ["aten.roll.default"]),
}


def _export(name: str) -> tuple[torch.nn.Module, ExportedProgram]:
    torch.manual_seed(0)
    model = PROGRAMS[name][0].eval()
    return model, export(model, (torch.randn(3, 4),))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_decomposition_reasons(name):
    model, ep = _export(name)
    assert decomposition_reasons(ep) == PROGRAMS[name][1]
    graph = import_model(ep)   # either path: the same values as torch
    assert_same_outputs(model, graph, (torch.randn(3, 4),), **F32)


def test_updates_of_inputs_and_buffers_need_decomposing():
    """...which turns them into graph outputs that the importer reports."""
    ep = export(Fn(lambda s, x: x.mul_(2) + 1), (torch.randn(3, 4),))
    assert decomposition_reasons(ep) == ["aten.mul_.Tensor (in place)"]
    with pytest.raises(UnsupportedOpsError, match="in-place update of user input x"):
        import_model(ep)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))  # training
    ep = export(model, (torch.randn(3, 4),))
    assert decomposition_reasons(ep) == ["aten.add_.Tensor (in place)"]   # num_batches_tracked
    decomposed = ep.run_decompositions()
    assert decomposition_reasons(decomposed) == [
        "BUFFER_MUTATION 1.running_mean", "BUFFER_MUTATION 1.running_var",
        "BUFFER_MUTATION 1.num_batches_tracked",
        "aten._native_batch_norm_legit_functional.default"]
    with pytest.raises(UnsupportedOpsError, match="in-place update of buffer 1.running_mean"):
        import_model(ep)


@pytest.mark.parametrize("name", ["op_without_converter", "update_seen_through_view",
                                  "grad_mode_body_needing_decomposition"])
def test_programs_needing_decomposition_are_decomposed(name, monkeypatch):
    """Imported without decomposing, these fail (roll has no converter) or give other
    values (the view sees the update); decomposed, they match torch."""
    model, ep = _export(name)
    calls = []
    decompose = ExportedProgram.run_decompositions
    monkeypatch.setattr(ExportedProgram, "run_decompositions",
                        lambda self, *a, **k: calls.append(1) or decompose(self, *a, **k))
    graph = import_model(ep)
    assert calls == [1]
    assert_same_outputs(model, graph, (torch.randn(3, 4),), **F32)


def _structure(graph) -> list[str]:
    """The printed graph with values renamed in order of appearance, without source
    locations (torch names nodes and records frames differently in the two IRs)."""
    names: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        return names.setdefault(match.group(0), f"%v{len(names)}")
    return [re.sub(r"%[\w.]+", rename, re.sub(r' loc\("[^"]*"\)', "", line))
            for line in print_graph(graph).splitlines()]


def _mlp():
    return MLP().eval(), (torch.randn(4, 20),), {"x": {0: "batch"}}


def _cnn():
    return randomize_batch_norm(CNN()), (torch.randn(2, 3, 16, 16),), {0: {0: "batch"}}


def _transformers(name: str):
    build, make_inputs, dims, _ = MODELS[name]
    model = build().eval()
    if name == "resnet":
        randomize_batch_norm(model)
    return model, make_inputs(2, 8), dims


MODEL_CASES = [pytest.param("mlp", _mlp, id="mlp"), pytest.param("cnn", _cnn, id="cnn")] + [
    pytest.param(name, lambda name=name: _transformers(name), id=name, marks=pytest.mark.slow)
    for name in sorted(MODELS)]


@pytest.mark.parametrize("name, build", MODEL_CASES)
def test_model_imports_without_decomposing(name, build, monkeypatch):
    torch.manual_seed(0)
    model, inputs, dims = build()

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{name} was decomposed: {decomposition_reasons(self)}")
    with monkeypatch.context() as patch:
        patch.setattr(ExportedProgram, "run_decompositions", refuse)
        direct = import_model(model, inputs, dynamic_dims=dims)
    torch.manual_seed(1)
    assert_same_outputs(model, direct, inputs, **F32)
    monkeypatch.setattr(frontend, "decomposition_reasons", lambda ep: ["decompose (test)"])
    decomposed = import_model(model, inputs, dynamic_dims=dims)
    assert _structure(direct) == _structure(decomposed)
