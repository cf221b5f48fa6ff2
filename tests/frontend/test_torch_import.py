"""What `kiln.frontend.torch.import_model` promises besides matching outputs: weights
held by reference and named by their state-dict names, value names and source
locations from torch, symbolic dims under the user's names, the input forms it
accepts, and errors that list every unsupported op with its count and source line."""
from __future__ import annotations

import inspect

import ml_dtypes
import numpy as np
import pytest
import torch
from torch.export import Dim, export

from kiln.errors import FrontendError, UnsupportedOpsError
from kiln.frontend.torch import import_model
from kiln.testing import assert_same_outputs

# torch.export's own pytree code warns about its internals
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _line_of(fn, text: str) -> int:
    """The line number of the line of `fn`'s source that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.register_buffer("scale", torch.full((8,), 0.5))
        self.register_buffer("shift", torch.ones(8), persistent=False)

    def forward(self, x):
        h = torch.relu(self.proj(x))
        h = self.norm(h) * self.scale + self.shift
        return h + torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = Block().eval()
    graph = import_model(model, (torch.randn(2, 3, 8),),
                         dynamic_dims={"x": {0: "batch", 1: "seq"}})
    return model, graph


def test_weights_are_held_by_reference(block):
    model, graph = block
    weight = graph.constants["proj.weight"]
    assert np.shares_memory(weight, model.proj.weight.detach().numpy())
    with torch.no_grad():
        model.proj.weight[0, 0] = 42.0
    assert weight[0, 0] == 42.0


def test_constants_are_named_by_state_dict_names(block):
    model, graph = block
    names = set(graph.constants)
    assert {"proj.weight", "proj.bias", "norm.weight", "norm.bias", "scale", "shift"} <= names
    lifted = names - set(dict(model.named_parameters())) - set(dict(model.named_buffers()))
    assert len(lifted) == 1   # the torch.tensor([...]) in forward
    np.testing.assert_array_equal(graph.constants[lifted.pop()], np.arange(1, 9, dtype=np.float32))
    assert graph.value("proj.weight").producer.attrs == {"ref": "proj.weight"}


def test_value_names_and_sources_come_from_torch(block):
    model, graph = block
    by_op = {n.op: n for n in graph.nodes}
    assert by_op["linear"].output.name == "linear"
    assert by_op["relu"].output.name == "relu"
    line = _line_of(Block.forward, "torch.relu(self.proj(x))")
    assert by_op["relu"].source == f"test_torch_import.py:{line} in forward"
    assert by_op["linear"].source == f"test_torch_import.py:{line} in forward"   # not torch's
    assert by_op["layer_norm"].source == \
        f"test_torch_import.py:{_line_of(Block.forward, 'self.norm(h)')} in forward"


def test_symbols_take_the_user_names(block):
    model, graph = block
    assert [str(v.type) for v in graph.inputs] == ["f32[batch, seq, 8]"]
    assert [str(v.type) for v in graph.outputs] == ["f32[batch, seq, 8]"]
    for batch, seq in ((1, 1), (4, 7)):
        assert_same_outputs(model, graph, (torch.randn(batch, seq, 8),), **TOL)


def test_size_arithmetic_becomes_dim_expressions():
    class Flatten(torch.nn.Module):
        def forward(self, x):
            b, s, d = x.shape
            return x.view(b * s, d)[: s + 1] * s

    graph = import_model(Flatten(), (torch.randn(2, 3, 4),),
                         dynamic_dims={"x": {0: "batch", 1: "seq"}})
    ops = [n.op for n in graph.nodes]
    reshape = next(n for n in graph.nodes if n.op == "reshape")
    assert reshape.attrs["shape"] == ("batch*seq", 4)
    assert next(n for n in graph.nodes if n.op == "slice").attrs["end"] == "seq + 1"
    assert "arange" in ops   # `* s`: a tensor holding the size, made from the symbol
    assert_same_outputs(Flatten(), graph, (torch.randn(3, 5, 4),), **TOL)


def test_inputs_sharing_a_symbol_share_it():
    class Pair(torch.nn.Module):
        def forward(self, a, b):
            return a.sum(0) + b.sum(0)

    graph = import_model(Pair(), (torch.randn(2, 3), torch.randn(4, 3)),
                         dynamic_dims={"a": {0: "n"}, 1: {0: "m"}})
    assert [str(v.type) for v in graph.inputs] == ["f32[n, 3]", "f32[m, 3]"]
    assert_same_outputs(Pair(), graph, (torch.randn(5, 3), torch.randn(1, 3)), **TOL)


def test_dynamic_dims_by_position_equals_by_name():
    torch.manual_seed(0)
    model = Block().eval()
    x = (torch.randn(2, 3, 8),)
    by_name = import_model(model, x, dynamic_dims={"x": {0: "batch"}})
    by_position = import_model(model, x, dynamic_dims={0: {0: "batch"}})
    assert str(by_name) == str(by_position)


def test_keyword_inputs():
    class Masked(torch.nn.Module):
        def forward(self, x, mask=None):
            return x.masked_fill(mask, 0.0).sum(-1)

    inputs = {"x": torch.randn(2, 5), "mask": torch.rand(2, 5) > 0.5}
    graph = import_model(Masked(), inputs, dynamic_dims={"x": {0: "b"}, "mask": {0: "b"}})
    assert [v.name for v in graph.inputs] == ["x", "mask"]
    assert_same_outputs(Masked(), graph, {"x": torch.randn(3, 5), "mask": torch.rand(3, 5) > 0.5},
                        **TOL)


def test_exported_program_input():
    torch.manual_seed(0)
    model = Block().eval()
    ep = export(model, (torch.randn(2, 3, 8),), dynamic_shapes={"x": {0: Dim("b")}})
    graph = import_model(ep, dynamic_dims={"x": {0: "batch"}})
    assert str(graph.inputs[0].type) == "f32[batch, 3, 8]"
    assert_same_outputs(ep, graph, (torch.randn(5, 3, 8),), **TOL)
    unnamed = import_model(ep)   # torch's own symbol names
    assert str(unnamed.inputs[0].type).startswith("f32[s")


def test_bfloat16_weights_are_views():
    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    graph = import_model(model, (torch.randn(2, 4, dtype=torch.bfloat16),))
    weight = graph.constants["weight"]
    assert weight.dtype == ml_dtypes.bfloat16
    assert weight.__array_interface__["data"][0] == model.weight.data_ptr()
    np.testing.assert_array_equal(weight.astype(np.float32), model.weight.float().detach().numpy())


def test_promotion_inserts_casts():
    class Mixed(torch.nn.Module):
        def forward(self, x, i):
            return x + i, i / 2, (i > 1.5).sum()

    graph = import_model(Mixed(), (torch.randn(3), torch.arange(3)))
    casts = [n for n in graph.nodes if n.op == "cast"]
    assert {str(n.output.type) for n in casts} == {"f32[3]", "i64[3]"}
    assert_same_outputs(Mixed(), graph, (torch.randn(3), torch.arange(3)), **TOL)


# --- errors ---------------------------------------------------------------------------------
class Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        spectrum = torch.fft.rfft(x).abs()
        inverse = torch.linalg.inv(self.proj(x).view(-1, 2, 2, 2))
        again = torch.fft.rfft(x * 2).abs()
        return spectrum.sum() + inverse.sum() + again.sum() + torch.relu(x).sum()


def test_unsupported_ops_are_all_listed_with_counts_and_sources():
    with pytest.raises(UnsupportedOpsError) as info:
        import_model(Unsupported(), (torch.randn(3, 8),))
    ops = info.value.ops
    assert set(ops) == {"aten._fft_r2c.default", "aten.linalg_inv_ex.default",
                        "aten._linalg_check_errors.default"}
    assert len(ops["aten._fft_r2c.default"]) == 2
    here = inspect.getsourcefile(Unsupported)
    lines = [_line_of(Unsupported.forward, t) for t in ("fft.rfft(x).abs", "fft.rfft(x * 2)")]
    assert ops["aten._fft_r2c.default"] == [
        f"{here}:{lines[0]} in forward: spectrum = torch.fft.rfft(x).abs()",
        f"{here}:{lines[1]} in forward: again = torch.fft.rfft(x * 2).abs()"]
    message = str(info.value)
    assert "torch model Unsupported: 3 unsupported op(s)" in message
    assert "aten._fft_r2c.default  (x2)" in message
    assert "aten.linalg_inv_ex.default  (x1)" in message
    assert f"at {here}:{_line_of(Unsupported.forward, 'linalg.inv')} in forward" in message


def test_unsupported_arguments_are_listed_with_the_ops():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.ConvTranspose1d(4, 4, 2)

        def forward(self, x):
            pooled = torch.nn.functional.avg_pool2d(x.unsqueeze(0), 2, divisor_override=3)
            return self.up(x), pooled, torch.sort(x).values

    with pytest.raises(UnsupportedOpsError) as info:
        import_model(Odd(), (torch.randn(2, 4, 6),))
    assert set(info.value.ops) == {"aten.convolution.default (transposed convolution)",
                                   "aten.avg_pool2d.default (divisor_override=3)",
                                   "aten.sort.default"}


def test_in_place_buffer_updates_and_training_mode_are_reported():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(UnsupportedOpsError) as info:
        import_model(model, (torch.randn(3, 4),))   # still in training mode
    assert "call model.eval() first" in str(info.value)
    assert "in-place update of buffer 1.running_mean" in info.value.ops


def test_data_dependent_shapes_are_unsupported():
    class Select(torch.nn.Module):
        def forward(self, x):
            return x[x > 0]

    with pytest.raises(UnsupportedOpsError, match="aten.nonzero|boolean mask"):
        import_model(Select(), (torch.randn(5),))


def test_frontend_errors_name_the_problem():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(FrontendError, match="needs example_inputs"):
        import_model(model)
    with pytest.raises(FrontendError, match=r"names input 'y'.*\['input'\]"):
        import_model(model, (torch.randn(2, 4),), dynamic_dims={"y": {0: "batch"}})
    with pytest.raises(FrontendError, match="'2b' is not a symbol name"):
        import_model(model, (torch.randn(2, 4),), dynamic_dims={0: {0: "2b"}})
    with pytest.raises(FrontendError, match="nn.Module or an ExportedProgram"):
        import_model(lambda x: x, (torch.randn(2, 4),))

    class Static(torch.nn.Module):
        def forward(self, x):
            return x.view(2, 2, 4)   # the batch must be 4

    with pytest.raises(FrontendError, match="specialized it to be a constant"):
        import_model(Static(), (torch.randn(4, 4),), dynamic_dims={0: {0: "batch"}})
