"""The graph cache for torch models (frontend/model_cache.py, used by `kiln.compile`):
a second compile of the same nn.Module skips torch.export and the passes, and
anything that could change the exported program misses: weights, attributes, the
source of the module's class, input shapes, options; models it cannot fingerprint
soundly (hooks, attributes without a stable encoding) are compiled as usual."""
from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import torch

import kiln
from kiln.frontend.model_cache import GraphCache, Unfingerprintable, fingerprint


class Scaled(torch.nn.Module):
    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.scale = scale

    def forward(self, x):
        return torch.relu(self.fc(x)) * self.scale


def _model(**kw) -> Scaled:
    torch.manual_seed(0)
    return Scaled(**kw).eval()


X = (torch.randn(4, 8),)


def _compile(model, cache, inputs=X, **kw):
    compiled = kiln.compile(model, inputs, cache_dir=cache, **kw)
    with torch.no_grad():
        want = model(*inputs).numpy()
    np.testing.assert_allclose(compiled(*[t.numpy() for t in inputs])[0], want, rtol=1e-5,
                               atol=1e-5)
    return compiled.report


def test_a_second_compile_reads_the_optimized_graph(tmp_path):
    first = _compile(_model(), tmp_path)
    second = _compile(_model(), tmp_path)      # another instance, same weights and code
    assert first.graph_cache == "stored" and "import" in first.seconds
    assert second.graph_cache == "hit" and "import" not in second.seconds
    assert second.cache_hits == second.distinct_kernels and second.cache_misses == 0
    assert second.kernel_calls == first.kernel_calls


def test_changed_weights_attributes_inputs_or_options_miss(tmp_path):
    model = _model()
    assert _compile(model, tmp_path).graph_cache == "stored"
    with torch.no_grad():
        model.fc.weight[0, 0] += 1.0             # one weight changed in place
    assert _compile(model, tmp_path).graph_cache == "stored"
    assert _compile(_model(scale=3.0), tmp_path).graph_cache == "stored"
    assert _compile(_model(), tmp_path, inputs=(torch.randn(5, 8),)).graph_cache == "stored"
    assert _compile(_model(), tmp_path, passes="canonicalize,plan").graph_cache == "stored"
    assert _compile(_model(), tmp_path).graph_cache == "hit"


def test_shared_weights_count(tmp_path):
    class Two(torch.nn.Module):
        def __init__(self, tied: bool):
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Linear(8, 8, bias=False)
            self.b = torch.nn.Linear(8, 8, bias=False)
            if tied:
                self.b.weight = self.a.weight
            else:
                with torch.no_grad():
                    self.b.weight.copy_(self.a.weight)

        def forward(self, x):
            return self.b(self.a(x))
    assert fingerprint(Two(True), X, None, "") != fingerprint(Two(False), X, None, "")


def test_an_edited_class_source_misses(tmp_path):
    def load(source: str) -> torch.nn.Module:
        path = tmp_path / "edited_model.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location("edited_model", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["edited_model"] = module
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        return module.M().eval()
    source = """
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(8, 8)
            def forward(self, x):
                return torch.relu(self.fc(x))
    """
    try:
        a = fingerprint(load(source), X, None, "")
        b = fingerprint(load(source.replace("torch.relu", "torch.sigmoid")), X, None, "")
        assert isinstance(a, str) and isinstance(b, str) and a != b
    finally:
        sys.modules.pop("edited_model", None)


def test_models_it_cannot_fingerprint_compile_as_usual(tmp_path):
    hooked = _model()
    hooked.fc.register_forward_hook(lambda module, args, out: out * 0)
    report = _compile(hooked, tmp_path)
    assert report.graph_cache.startswith("off (module 'fc' has hooks")

    class Opaque:                                # repr holds an address
        pass
    odd = _model()
    odd.helper = Opaque()
    assert isinstance(fingerprint(odd, X, None, ""), Unfingerprintable)
    assert _compile(odd, tmp_path).graph_cache.startswith("off (an attribute of type")
    assert _compile(_model(), "off").graph_cache == "off"
    assert _compile(_model(), tmp_path, dump_ir=tmp_path / "dumps").graph_cache == \
        "off (IR dumps asked for)"


def test_a_damaged_entry_is_a_miss_and_is_replaced(tmp_path):
    _compile(_model(), tmp_path)
    digest = fingerprint(_model(), X, None, "")
    entries = list((tmp_path / "graphs").glob("*/*/graph.kir"))
    assert len(entries) == 1
    entries[0].write_text("graph broken {")
    assert _compile(_model(), tmp_path).graph_cache == "stored"
    assert _compile(_model(), tmp_path).graph_cache == "hit"
    assert GraphCache(tmp_path / "graphs").load("0" * 64) is None
    assert isinstance(digest, str)
    (entries[0]).unlink()                        # a partial entry (its graph gone)
    assert _compile(_model(), tmp_path).graph_cache == "stored"
    assert _compile(_model(), tmp_path).graph_cache == "hit"


def test_stored_weights_are_aligned_and_mapped(tmp_path):
    from kiln.ir import GraphBuilder, tensor
    b = GraphBuilder("g")
    x = b.input("x", tensor("f32", 3))
    odd = np.arange(3, dtype=np.float32)         # 12 bytes: the next array would be unaligned
    graph = b.build(b.add(b.add(x, b.constant("a", odd)), b.constant("b", odd * 2)))
    cache = GraphCache(tmp_path)
    cache.store("ab" * 32, graph)
    back = cache.load("ab" * 32)
    assert back is not None and set(back.constants) == {"a", "b"}
    for ref, array in back.constants.items():
        np.testing.assert_array_equal(array, graph.constants[ref])
        assert array.ctypes.data % 64 == 0 and isinstance(array.base, np.memmap)
