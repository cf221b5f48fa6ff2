"""Whole models through the torch frontend: hand-written MLP and CNN, and small
`transformers` models (BERT, GPT-2, Llama, ResNet) built from configs with random
weights. For each: the interpreter matches torch eager, the `.kir` text round-trips,
and one graph imported with dynamic dims runs at two other sizes.

Tolerances (rtol, atol), per dtype: float32 (1e-4, 1e-5): observed errors are about
1e-6 on outputs of magnitude ~1-3. bfloat16 (2e-2, 5e-2): two bf16 ulps (2**-6 each
for values in [2, 4)) after two decoder layers; float16 (5e-3, 5e-3).
"""
from __future__ import annotations

import time

import pytest
import torch

from kiln.frontend.torch import import_model
from kiln.testing import assert_roundtrip, assert_same_outputs
from tests.models import (CNN, MLP, MODELS, TEXT_DIMS, llama, randomize_batch_norm,
                          token_ids)

# torch.export's own pytree code warns about its internals
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

F32 = {"rtol": 1e-4, "atol": 1e-5}
BF16 = {"rtol": 2e-2, "atol": 5e-2}
F16 = {"rtol": 5e-3, "atol": 5e-3}


def _timed_import(model, inputs, dynamic_dims):
    start = time.perf_counter()
    graph = import_model(model, inputs, dynamic_dims=dynamic_dims)
    return graph, time.perf_counter() - start


# --- hand-written models ----------------------------------------------------------------
def test_mlp():
    torch.manual_seed(0)
    model = MLP().eval()
    graph = import_model(model, (torch.randn(4, 20),), dynamic_dims={"x": {0: "batch"}})
    assert [str(v.type) for v in graph.inputs] == ["f32[batch, 20]"]
    for batch in (4, 1, 7):
        assert_same_outputs(model, graph, (torch.randn(batch, 20),), **F32)
    assert_roundtrip(graph)


def test_mlp_float16():
    torch.manual_seed(0)
    model = MLP().eval().to(torch.float16)
    graph = import_model(model, (torch.randn(4, 20, dtype=torch.float16),))
    assert_same_outputs(model, graph, (torch.randn(4, 20, dtype=torch.float16),), **F16)


def test_cnn():
    torch.manual_seed(0)
    model = randomize_batch_norm(CNN())
    graph = import_model(model, (torch.randn(2, 3, 16, 16),), dynamic_dims={0: {0: "batch"}})
    assert {n.op for n in graph.nodes} >= {"conv", "batch_norm", "max_pool", "avg_pool",
                                          "adaptive_avg_pool", "reshape", "linear"}
    for batch in (2, 3, 5):
        assert_same_outputs(model, graph, (torch.randn(batch, 3, 16, 16),), **F32)
    assert_roundtrip(graph)


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request):
    """(name, model, graph, make_inputs, other sizes): one dynamic import per model."""
    build, make_inputs, dims, sizes = MODELS[request.param]
    torch.manual_seed(0)
    model = build().eval()
    if request.param == "resnet":
        randomize_batch_norm(model)
    graph, seconds = _timed_import(model, make_inputs(2, 8), dims)
    print(f"\n{request.param}: imported in {seconds:.1f}s, {len(graph.nodes)} nodes")
    return request.param, model, graph, make_inputs, sizes


@pytest.mark.slow
def test_model_matches_eager(imported):
    name, model, graph, make_inputs, _ = imported
    torch.manual_seed(1)
    assert_same_outputs(model, graph, make_inputs(2, 8), **F32)


@pytest.mark.slow
def test_model_roundtrip(imported):
    name, model, graph, *_ = imported
    assert_roundtrip(graph)


@pytest.mark.slow
def test_model_dynamic_sizes(imported):
    name, model, graph, make_inputs, sizes = imported
    expected = ["i64[batch, seq]"] if name != "resnet" else ["f32[batch, 3, 64, 64]"]
    assert [str(v.type) for v in graph.inputs] == expected
    torch.manual_seed(2)
    for batch, seq in sizes:
        assert_same_outputs(model, graph, make_inputs(batch, seq), **F32)


@pytest.mark.slow
def test_llama_bfloat16():
    torch.manual_seed(0)
    model = llama().eval().to(torch.bfloat16)
    graph = import_model(model, token_ids(2, 8), dynamic_dims=TEXT_DIMS)
    assert graph.constants["layers.0.self_attn.q_proj.weight"].dtype.name == "bfloat16"
    for batch, seq in ((2, 8), (3, 13)):
        assert_same_outputs(model, graph, token_ids(batch, seq), **BF16)
