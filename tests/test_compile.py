"""kiln.compile end to end: compiled (TVM kernels + runtime) vs the reference
interpreter vs torch eager on every model of the frontend tests; one artifact serves
several batch sizes; save -> load in a fresh process gives the same outputs; bad
inputs and damaged artifacts get errors that name the problem.

Tolerances: compiled vs interpreter and vs eager, float32: rtol 1e-4, atol 1e-4
(kernels reorder float sums; outputs are O(1)).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import kiln
from kiln.errors import ArtifactError, RuntimeInputError, UnsupportedOpsError
from kiln.ir import GraphBuilder, interpret, tensor
from tests.models import CNN, MLP, MODELS, randomize_batch_norm

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _check(compiled, model, inputs) -> list[np.ndarray]:
    """Compiled == interpreter == eager on `inputs`; returns the compiled outputs."""
    arrays = [t.numpy() for t in inputs]
    got = compiled(*arrays)
    ref = interpret(compiled.graph, arrays)
    with torch.no_grad():
        eager = model(*inputs)
    leaves = [eager] if isinstance(eager, torch.Tensor) else \
        [t for t in torch.utils._pytree.tree_leaves(eager) if isinstance(t, torch.Tensor)]
    assert len(got) == len(ref) == len(leaves)
    for g, r, e in zip(got, ref, leaves):
        np.testing.assert_allclose(g, r, **TOL)
        np.testing.assert_allclose(g, e.numpy(), **TOL)
    return got


@pytest.fixture(scope="module")
def mlp_compiled():
    torch.manual_seed(0)
    model = MLP().eval()
    compiled = kiln.compile(model, (torch.randn(4, 20),), dynamic_dims={"x": {0: "batch"}})
    return model, compiled


def test_mlp_dynamic_batch(mlp_compiled):
    model, compiled = mlp_compiled
    for batch in (1, 3, 8):
        _check(compiled, model, (torch.randn(batch, 20),))


def test_cnn_dynamic_batch():
    torch.manual_seed(0)
    model = randomize_batch_norm(CNN())
    compiled = kiln.compile(model, (torch.randn(2, 3, 16, 16),), dynamic_dims={0: {0: "batch"}})
    for batch in (1, 3):
        _check(compiled, model, (torch.randn(batch, 3, 16, 16),))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_compiles_and_matches(name):
    build, make_inputs, dims, sizes = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    if name == "resnet":
        randomize_batch_norm(model)
    compiled = kiln.compile(model, make_inputs(2, 8), dynamic_dims=dims)
    torch.manual_seed(1)
    _check(compiled, model, make_inputs(2, 8))
    for batch, seq in sizes:
        _check(compiled, model, make_inputs(batch, seq))


def test_torch_tensors_are_accepted(mlp_compiled):
    model, compiled = mlp_compiled
    x = torch.randn(5, 20)
    np.testing.assert_allclose(compiled(x)[0], compiled(x.numpy())[0])


@pytest.mark.parametrize("call, message", [
    (lambda cm: cm(np.zeros((2, 21), np.float32)), "x"),            # wrong shape
    (lambda cm: cm(np.zeros((2, 20), np.float64)), "x"),            # wrong dtype
    (lambda cm: cm(), "x"),                                         # missing input
    (lambda cm: cm(np.zeros((2, 20), np.float32), np.zeros(3)), "2"),  # extra input
    (lambda cm: cm(y=np.zeros((2, 20), np.float32)), "y"),          # unknown name
])
def test_bad_inputs_name_the_input(mlp_compiled, call, message):
    _, compiled = mlp_compiled
    with pytest.raises(RuntimeInputError, match=message):
        call(compiled)


def test_save_load_in_a_fresh_process(mlp_compiled, tmp_path):
    """The artifact runs where torch, tvm and kiln's compiler cannot be imported."""
    model, compiled = mlp_compiled
    path = compiled.save(tmp_path / "mlp.kiln")
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = compiled(x)[0]
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "tvm"):
            sys.modules[name] = None          # any import of them now fails
        import numpy as np, kiln
        out = kiln.load({str(path)!r})(np.load({str(tmp_path / 'x.npy')!r}))[0]
        np.save({str(tmp_path / 'out.npy')!r}, out)
        leaked = [m for m in sys.modules if m.startswith(("kiln.ir", "kiln.frontend",
                                                          "kiln.codegen", "kiln.passes"))]
        assert not leaked, leaked
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_corrupted_artifact_is_refused(mlp_compiled, tmp_path):
    _, compiled = mlp_compiled
    data = bytearray(compiled.save(tmp_path / "mlp.kiln").read_bytes())
    bad = tmp_path / "bad.kiln"
    data[len(data) // 2] ^= 0xFF       # a byte inside a stored member
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt|checksum|sha256|CRC"):
        kiln.load(bad)
    truncated = tmp_path / "truncated.kiln"
    truncated.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ArtifactError, match="truncated|not a kiln artifact"):
        kiln.load(truncated)


def test_graph_input_and_kir_path(tmp_path):
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", "n", 16))
    w = b.constant("w", np.arange(16, dtype=np.float32))
    graph = b.build(b.softmax(b.mul(x, w), axis=-1))
    compiled = kiln.compile(graph)
    arr = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(compiled(arr)[0], interpret(graph, [arr])[0], **TOL)
    kiln.ir.save(graph, tmp_path / "g.kir")
    again = kiln.compile(str(tmp_path / "g.kir"))
    np.testing.assert_allclose(again(arr)[0], compiled(arr)[0])


def test_op_without_lowering_lists_every_such_op(monkeypatch):
    from kiln.ir import registry
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 4))
    graph = b.build(b.exp(b.relu(x)), b.relu(x))
    for op in ("exp", "relu"):
        monkeypatch.delitem(registry.get_op(op).lowerings, "tvm")
    with pytest.raises(UnsupportedOpsError) as info:
        kiln.compile(graph, passes="")   # no passes: CSE would merge the two relus
    assert set(info.value.ops) == {"exp", "relu"} and len(info.value.ops["relu"]) == 2


def test_kernel_needing_an_attribute_only_symbol_is_a_clear_error():
    from kiln.errors import CodegenError
    b = GraphBuilder("g")
    x = b.input("x", tensor("i64", "n"))
    positions = b.arange(start="n", end="n + 4")     # [4]: n lives only in the attributes
    graph = b.build(x, positions)
    with pytest.raises(CodegenError, match="symbol.*'n'|\\['n'\\]"):
        kiln.compile(graph)
