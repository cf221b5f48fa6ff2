"""Differential tests over the benchmark models (tests/models.py: MLP, CNN, BERT,
GPT-2, Llama, ResNet): the interpreter gives the same results before and after each
canonicalization pass and the default pipeline, on random inputs at two sizes; each
pass is idempotent on them; canonicalize folds every batch norm of the CNNs."""
from __future__ import annotations

import collections

import pytest
import torch

from kiln.compiler import copy_graph
from kiln.frontend.torch import import_model
from kiln.passes import DEFAULT_PIPELINE, PassManager

from tests.models import CNN, MLP, MODELS, randomize_batch_norm
from tests.passes.pass_testing import assert_idempotent, assert_same_results

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

# float32 through a few layers; batch-norm folding reassociates (W*s)x against (Wx)*s
TOLERANCE = {"rtol": 1e-4, "atol": 2e-5}
SIZES = [{"batch": 2, "seq": 8}, {"batch": 3, "seq": 5}]
PASSES = ["canonicalize", "constant_fold", "cse", "dce", "simplify", "fold_batch_norm",
          "fuse", "canonicalize,fuse", "canonicalize,block_layout",
          "canonicalize,block_layout,winograd", DEFAULT_PIPELINE]


def _build(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        return import_model(MLP().eval(), (torch.randn(4, 20),), dynamic_dims={"x": {0: "batch"}})
    if name == "cnn":
        return import_model(randomize_batch_norm(CNN()), (torch.randn(2, 3, 16, 16),),
                            dynamic_dims={0: {0: "batch"}})
    build, make_inputs, dims, _ = MODELS[name]
    model = build().eval()
    if name == "resnet":
        randomize_batch_norm(model)
    return import_model(model, make_inputs(2, 8), dims)


@pytest.fixture(scope="module", params=["mlp", "cnn"] + sorted(MODELS))
def model_graph(request):
    return request.param, _build(request.param)


def _bindings(graph, size):
    return {s: v for s, v in size.items() if s in graph.symbols}


@pytest.mark.slow
@pytest.mark.parametrize("spec", PASSES)
def test_pass_keeps_results_and_is_idempotent(model_graph, spec):
    name, original = model_graph
    graph = copy_graph(original)
    PassManager(spec).run(graph)
    for seed, size in enumerate(SIZES):
        assert_same_results(original, graph, bindings=_bindings(original, size), seed=seed,
                            **TOLERANCE)
    if spec != DEFAULT_PIPELINE:   # the default pipeline may hold passes that are not
        assert_idempotent(spec, graph)


@pytest.mark.slow
def test_canonicalize_shrinks_the_models(model_graph):
    name, original = model_graph
    graph = copy_graph(original)
    [report] = PassManager("canonicalize").run(graph)
    before = collections.Counter(n.op for n in original.nodes)
    after = collections.Counter(n.op for n in graph.nodes)
    print(f"\n{name}: {len(original.nodes)} -> {len(graph.nodes)} nodes; {report}")
    assert len(graph.nodes) <= len(original.nodes)
    if name != "mlp":   # the MLP has nothing to canonicalize
        assert report.changed and len(graph.nodes) < len(original.nodes)
    if before["batch_norm"]:
        assert after["batch_norm"] == 0
        assert report.counts["batch_norm_folded"] == before["batch_norm"]
    if name == "gpt2":   # Conv1D's x @ W + b: every GEMM becomes a linear
        assert after["matmul"] == 0 and after["linear"] == before["matmul"]
