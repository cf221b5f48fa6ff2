"""The pass manager: the pipeline spec parser and its errors, registration, the
verifier after every pass, per-pass timing and reports, IR dumps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from kiln.compiler import copy_graph
from kiln.errors import PipelineError, VerifyError
from kiln.ir import Graph, GraphBuilder, graphs_equal, load, tensor
from kiln.passes import DEFAULT_PIPELINE, Pass, PassManager, PassReport, parse_pipeline, \
    register_pass, registered_passes
from kiln.passes.manager import format_pipeline

from tests.passes.pass_testing import assert_same_results


@register_pass
@dataclass(frozen=True)
class Knobs(Pass):
    """One option of each kind; changes nothing."""
    name: ClassVar[str] = "testing_knobs"
    count: int = 1
    ratio: float = 0.5
    enabled: bool = True
    mode: str = "fast"

    def run(self, graph: Graph) -> PassReport:
        return PassReport(changed=False, counts={"count": self.count, "ratio": self.ratio})


@register_pass
@dataclass(frozen=True)
class BreakTypes(Pass):
    """Deliberately broken: gives the last node's output a wrong type."""
    name: ClassVar[str] = "testing_break_types"

    def run(self, graph: Graph) -> PassReport:
        out = graph.nodes[-1].outputs[0]
        out.type = tensor("f64", *out.type.shape)
        return PassReport(changed=True)


@register_pass
@dataclass(frozen=True)
class Sleep(Pass):
    """Takes `ms` milliseconds."""
    name: ClassVar[str] = "testing_sleep"
    ms: int = 20

    def run(self, graph: Graph) -> PassReport:
        time.sleep(self.ms / 1000)
        return PassReport(changed=False)


@register_pass
@dataclass(frozen=True)
class NeedsCse(Pass):
    """Requires cse before it."""
    name: ClassVar[str] = "testing_needs_cse"
    requires: ClassVar[tuple[str, ...]] = ("cse",)

    def run(self, graph: Graph) -> PassReport:
        return PassReport(changed=False)


def small_graph() -> Graph:
    b = GraphBuilder("small")
    x = b.input("x", tensor("f32", "batch", 4))
    w = b.constant("w", np.arange(12, dtype=np.float32).reshape(4, 3))
    one = b.full(shape=[], value=1.0)
    y = b.mul(b.matmul(x, b.transpose(b.transpose(w, perm=[1, 0]), perm=[1, 0])), one)
    return b.build(b.relu(y))


# --- the spec parser -------------------------------------------------------------------------
def test_parse_options_of_each_kind():
    [p] = parse_pipeline('testing_knobs(count=3, ratio=2, enabled=false, mode="a b")')
    assert p == Knobs(count=3, ratio=2.0, enabled=False, mode="a b")
    assert isinstance(p.ratio, float)


def test_parse_several_passes_defaults_and_dashes():
    passes = parse_pipeline(" cse , testing_knobs( ) ,testing_knobs(mode=slow,ratio=-1e-3) ,dce")
    assert [p.name for p in passes] == ["cse", "testing_knobs", "testing_knobs", "dce"]
    assert passes[1] == Knobs() and passes[2] == Knobs(mode="slow", ratio=-1e-3)
    assert parse_pipeline("testing_knobs(enabled=TRUE)") == [Knobs(enabled=True)]


def test_format_pipeline_parses_back():
    passes = [Knobs(count=2, mode="x y"), Knobs(), Knobs(enabled=False, ratio=0.25)]
    spec = format_pipeline(passes)
    assert spec == 'testing_knobs(count=2,mode="x y"),testing_knobs,' \
                   'testing_knobs(ratio=0.25,enabled=false)'
    assert parse_pipeline(spec) == passes


def test_empty_spec_is_an_empty_pipeline():
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


def test_default_pipeline_parses_and_the_canonicalization_passes_are_registered():
    assert parse_pipeline(DEFAULT_PIPELINE)
    assert {"canonicalize", "constant_fold", "cse", "dce", "simplify",
            "fold_batch_norm"} <= set(registered_passes())
    assert registered_passes()["canonicalize"].summary().startswith("Constant folding, CSE")


def test_unknown_pass_lists_the_passes():
    with pytest.raises(PipelineError, match=r"unknown pass 'canonicalise'; the passes are: .*"
                                            r"canonicalize.*cse") as e:
        parse_pipeline("cse,canonicalise")
    assert e.value.pass_name == "canonicalise"


def test_unknown_option_lists_the_options():
    with pytest.raises(PipelineError, match=r"pass 'testing_knobs' has no option 'size'; its "
                                            r"options are: count: int = 1, ratio: float = 0.5, "
                                            r"enabled: bool = true, mode: str = fast") as e:
        parse_pipeline("testing_knobs(size=3)")
    assert (e.value.pass_name, e.value.option) == ("testing_knobs", "size")
    with pytest.raises(PipelineError, match="pass 'cse' has no option 'x'; its options are: none"):
        parse_pipeline("cse(x=1)")


@pytest.mark.parametrize("spec, kind, text", [
    ("testing_knobs(count=1.5)", "int", "1.5"),
    ("testing_knobs(count=many)", "int", "many"),
    ('testing_knobs(count="3")', "int", '"3"'),
    ("testing_knobs(ratio=fast)", "float", "fast"),
    ("testing_knobs(enabled=1)", "bool", "1"),
    ("testing_knobs(enabled=yes)", "bool", "yes"),
])
def test_badly_typed_values(spec, kind, text):
    with pytest.raises(PipelineError, match=f"option '[a-z]+' takes a {kind}, got {text}$"):
        parse_pipeline(spec)


@pytest.mark.parametrize("spec, message", [
    ("cse,", "expected a pass name at column 5, got the end"),
    (",cse", "expected a pass name at column 1, got ','"),
    ("cse dce", "expected ',' between passes at column 5, got 'dce'"),
    ("testing_knobs(", "expected an option of testing_knobs at column 15, got the end"),
    ("testing_knobs(count)", "expected '=' after count at column 20, got ')'"),
    ("testing_knobs(count=)", "expected a value for count at column 21, got ')'"),
    ("testing_knobs(count=1,)", "expected an option of testing_knobs at column 23, got ')'"),
    ("testing_knobs(count=1 mode=x)", "expected ',' or ')' in the options of testing_knobs "
                                      "at column 23, got 'mode'"),
    ('testing_knobs(mode="x)', "unterminated string at column 20"),
    ("testing_knobs(count=1,count=2)", "option 'count' of pass 'testing_knobs' is given twice"),
])
def test_syntax_errors_say_where(spec, message):
    with pytest.raises(PipelineError) as e:
        parse_pipeline(spec)
    assert str(e.value) == f"pipeline {spec!r}: {message}"


def test_requires_is_checked():
    PassManager("cse,testing_needs_cse")
    for spec in ("testing_needs_cse", "testing_needs_cse,cse"):
        with pytest.raises(PipelineError, match="pass 'testing_needs_cse' requires 'cse' to run "
                                                "before it"):
            PassManager(spec)


# --- registration ----------------------------------------------------------------------------
def test_register_pass_refuses_malformed_passes():
    class NoName(Pass):
        pass
    with pytest.raises(PipelineError, match="needs a ClassVar `name`"):
        register_pass(NoName)

    @dataclass
    class Mutable(Pass):
        name: ClassVar[str] = "testing_mutable"
    with pytest.raises(PipelineError, match="must be a frozen dataclass"):
        register_pass(Mutable)

    @dataclass(frozen=True)
    class ListOption(Pass):
        name: ClassVar[str] = "testing_list_option"
        sizes: tuple = ()
    with pytest.raises(PipelineError, match="options are int, float, bool or str"):
        register_pass(ListOption)

    @dataclass(frozen=True)
    class Twice(Pass):
        name: ClassVar[str] = "cse"
    with pytest.raises(PipelineError, match="pass 'cse' is registered twice"):
        register_pass(Twice)
    assert "testing_mutable" not in registered_passes()


# --- running ---------------------------------------------------------------------------------
def test_verify_runs_after_each_pass_and_names_the_broken_one():
    with pytest.raises(VerifyError, match=r"pass 'testing_break_types' \(step 2 of pipeline "
                                          r"'cse,testing_break_types,dce'\) left an invalid "
                                          r"graph: .*\[types\]") as e:
        PassManager("cse,testing_break_types,dce").run(small_graph())
    assert e.value.rule == "types"


def test_verify_can_be_turned_off():
    graph = small_graph()
    PassManager("testing_break_types", verify=False).run(graph)
    assert str(graph.outputs[0].type) == "f64[batch, 3]"


def test_a_failing_pass_is_named():
    @dataclass(frozen=True)
    class Crash(Pass):
        name: ClassVar[str] = "testing_crash"

        def run(self, graph: Graph) -> PassReport:
            raise ZeroDivisionError("boom")
    with pytest.raises(ZeroDivisionError) as e:
        PassManager([Crash()]).run(small_graph())
    assert "while running pass 'testing_crash' (step 1 of pipeline 'testing_crash') on graph " \
           "small" in e.value.__notes__


def test_reports_have_names_counts_and_times():
    reports = PassManager("testing_knobs(count=7),testing_sleep(ms=30),canonicalize").run(
        small_graph())
    assert [r.name for r in reports] == ["testing_knobs", "testing_sleep", "canonicalize"]
    assert reports[0].counts == {"count": 7, "ratio": 0.5}
    assert reports[1].seconds >= 0.03
    assert all(r.seconds > 0 for r in reports)
    assert str(reports[0]) == f"testing_knobs: count=7 ratio=0.5 ({reports[0].seconds:.2f} s)"
    assert str(reports[1]) == f"testing_sleep: no change ({reports[1].seconds:.2f} s)"
    assert reports[2].changed and reports[2].counts["constants_folded"] >= 1


def test_a_pass_must_return_a_report():
    @dataclass(frozen=True)
    class NoReport(Pass):
        name: ClassVar[str] = "testing_no_report"

        def run(self, graph: Graph) -> PassReport:
            return None
    with pytest.raises(PipelineError, match="pass 'testing_no_report' returned NoneType, "
                                            "not a PassReport"):
        PassManager([NoReport()]).run(small_graph())


def test_dump_ir_writes_loadable_kir_before_and_after_each_pass(tmp_path):
    graph = small_graph()
    original = copy_graph(graph)
    PassManager("simplify,constant_fold,dce", dump_ir=tmp_path / "dumps").run(graph)
    names = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert names == ["00_simplify_after.kir", "00_simplify_after.safetensors",
                     "00_simplify_before.kir", "00_simplify_before.safetensors",
                     "01_constant_fold_after.kir", "01_constant_fold_after.safetensors",
                     "01_constant_fold_before.kir", "01_constant_fold_before.safetensors",
                     "02_dce_after.kir", "02_dce_after.safetensors",
                     "02_dce_before.kir", "02_dce_before.safetensors", "pipeline.txt"]
    assert (tmp_path / "dumps" / "pipeline.txt").read_text() == "simplify,constant_fold,dce\n"
    first = load(tmp_path / "dumps" / "00_simplify_before.kir")
    last = load(tmp_path / "dumps" / "02_dce_after.kir")
    assert graphs_equal(first, original) and graphs_equal(last, graph)
    assert_same_results(first, last)
    assert not graphs_equal(first, load(tmp_path / "dumps" / "00_simplify_after.kir"))
