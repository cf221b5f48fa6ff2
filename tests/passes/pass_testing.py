"""The common check of pass tests: a pass turns `before` into `after` (compared
structurally), keeps the interpreter's results, and a second run changes nothing.

Import it as `from tests.passes.pass_testing import check_rewrite`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.compiler import copy_graph
from kiln.ir import Graph, example_inputs, graphs_equal, interpret, parse, print_graph
from kiln.passes import PassManager, PassReport


def assert_same_results(before: Graph, after: Graph, *, bindings: Mapping[str, int] | None = None,
                        seed: int = 0, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """The interpreter gives the same outputs for both graphs on random inputs."""
    inputs = example_inputs(before, bindings, seed=seed)
    for i, (a, b) in enumerate(zip(interpret(before, inputs), interpret(after, inputs),
                                   strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"output {i}: {a.dtype}{a.shape} " \
                                                          f"became {b.dtype}{b.shape}"
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, err_msg=f"output {i}")


def assert_idempotent(spec: str, graph: Graph) -> None:
    """Running `spec` again reports no change and leaves the graph as it was."""
    snapshot = copy_graph(graph)
    reports = PassManager(spec).run(graph)
    assert not any(r.changed for r in reports), f"second run changed: {reports}"
    assert graphs_equal(graph, snapshot), f"second run changed the graph:\n{graph}"


def check_rewrite(spec: str, before: str, after: str,
                  constants: Mapping[str, np.ndarray] | None = None, *,
                  bindings: Mapping[str, int] | None = None, rtol: float = 1e-5,
                  atol: float = 1e-6) -> PassReport:
    """Run the one-pass pipeline `spec` on `before`; the result must equal `after`
    (structurally; constants it names come from the rewritten graph), give the same
    interpreter results, and be a fixed point. Returns the pass's report."""
    graph = parse(before, dict(constants or {}))
    original = copy_graph(graph)
    [report] = PassManager(spec).run(graph)
    expected = parse(after, graph.constants)
    assert graphs_equal(graph, expected), \
        f"{spec} gave:\n{print_graph(graph)}\nexpected:\n{after}"
    assert_same_results(original, graph, bindings=bindings, rtol=rtol, atol=atol)
    assert_idempotent(spec, graph)
    return report
