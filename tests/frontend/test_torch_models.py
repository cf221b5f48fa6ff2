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

# torch.export's own pytree code warns about its internals
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

F32 = {"rtol": 1e-4, "atol": 1e-5}
BF16 = {"rtol": 2e-2, "atol": 5e-2}
F16 = {"rtol": 5e-3, "atol": 5e-3}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(20, 64)
        self.fc2 = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        return torch.log_softmax(self.head(h), dim=-1)


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(3, stride=1, padding=1)
        self.gap = torch.nn.AdaptiveAvgPool2d((2, 2))
        self.fc = torch.nn.Linear(16 * 4, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avg(torch.nn.functional.silu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


def _randomize_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics, so batch norm is not the identity."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


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
    model = _randomize_batch_norm(CNN())
    graph = import_model(model, (torch.randn(2, 3, 16, 16),), dynamic_dims={0: {0: "batch"}})
    assert {n.op for n in graph.nodes} >= {"conv", "batch_norm", "max_pool", "avg_pool",
                                          "adaptive_avg_pool", "reshape", "linear"}
    for batch in (2, 3, 5):
        assert_same_outputs(model, graph, (torch.randn(batch, 3, 16, 16),), **F32)
    assert_roundtrip(graph)


# --- transformers models ----------------------------------------------------------------
def _bert():
    from transformers import BertConfig, BertModel
    return BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128,
                                max_position_embeddings=64))


def _gpt2():
    from transformers import GPT2Config, GPT2Model
    return GPT2Model(GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                use_cache=False, bos_token_id=0, eos_token_id=0))


def _llama():
    from transformers import LlamaConfig, LlamaModel
    return LlamaModel(LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=128, max_position_embeddings=64,
                                  use_cache=False))


def _resnet():
    from transformers import ResNetConfig, ResNetModel
    return ResNetModel(ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                    depths=[1, 1], layer_type="basic"))


def _token_ids(batch: int, seq: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 100, (batch, seq)),)


def _image(batch: int, seq: int) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, 64, 64),)


TEXT_DIMS = {"input_ids": {0: "batch", 1: "seq"}}
MODELS = {   # name -> (build, inputs(batch, seq), dynamic_dims, other (batch, seq) sizes)
    "bert": (_bert, _token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "gpt2": (_gpt2, _token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "llama": (_llama, _token_ids, TEXT_DIMS, [(3, 5), (1, 17)]),
    "resnet": (_resnet, _image, {"pixel_values": {0: "batch"}}, [(3, None), (1, None)]),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request):
    """(name, model, graph, make_inputs, other sizes): one dynamic import per model."""
    build, make_inputs, dims, sizes = MODELS[request.param]
    torch.manual_seed(0)
    model = build().eval()
    if request.param == "resnet":
        _randomize_batch_norm(model)
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
    model = _llama().eval().to(torch.bfloat16)
    graph = import_model(model, _token_ids(2, 8), dynamic_dims=TEXT_DIMS)
    assert graph.constants["layers.0.self_attn.q_proj.weight"].dtype.name == "bfloat16"
    for batch, seq in ((2, 8), (3, 13)):
        assert_same_outputs(model, graph, _token_ids(batch, seq), **BF16)
