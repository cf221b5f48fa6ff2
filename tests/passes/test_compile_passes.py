"""Pipelines through `kiln.compile(..., passes=...)` and `kiln compile --passes SPEC
--dump-ir DIR --report`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import kiln
from kiln.cli import app
from kiln.errors import PipelineError
from kiln.ir import GraphBuilder, example_inputs, interpret, load, save, tensor
from kiln.passes import DEFAULT_PIPELINE, parse_pipeline

PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def model():
    """relu(x @ transpose(w) * 1 + b): canonicalize makes it relu(linear(x, w, b))."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("model")
    x = b.input("x", tensor("f32", "batch", 8))
    w = b.constant("w", rng.standard_normal((4, 8)).astype(np.float32))
    bias = b.constant("bias", rng.standard_normal(4).astype(np.float32))
    one = b.full(shape=[], value=1.0)
    y = b.add(b.mul(b.matmul(x, b.transpose(w, perm=[1, 0])), one), bias)
    return b.build(b.relu(y))


def test_compile_refuses_a_bad_pipeline_before_doing_anything():
    with pytest.raises(PipelineError, match="unknown pass 'fusion'"):
        kiln.compile(model(), passes="canonicalize,fusion")


def test_compile_runs_the_pipeline_and_reports_each_pass(tmp_path):
    graph = model()
    compiled = kiln.compile(graph, passes="cse,canonicalize", dump_ir=tmp_path)
    assert [r.name for r in compiled.report.passes] == ["cse", "canonicalize"]
    assert compiled.report.passes[1].counts["linear_bias"] == 1
    assert [n.op for n in compiled.graph.nodes] == ["constant", "constant", "linear", "relu"]
    inputs = example_inputs(graph, {"batch": 3})
    np.testing.assert_allclose(compiled(*inputs)[0], interpret(graph, inputs)[0],
                               rtol=1e-5, atol=1e-5)
    assert (tmp_path / "01_canonicalize_after.kir").exists()


def test_compile_runs_the_default_pipeline():
    compiled = kiln.compile(model())
    assert [r.name for r in compiled.report.passes] == \
        [p.name for p in parse_pipeline(DEFAULT_PIPELINE)]


def test_cli_passes_report_and_dump_ir(tmp_path: Path):
    save(model(), tmp_path / "model.kir")
    runner = CliRunner()
    result = runner.invoke(app, ["compile", str(tmp_path / "model.kir"), "-o",
                                 str(tmp_path / "model.kiln"), "--passes", "dce, canonicalize",
                                 "--dump-ir", str(tmp_path / "ir"), "--report"], env=PLAIN)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("pass ")]
    assert len(lines) == 2
    assert lines[0].startswith("pass dce: nodes_removed=0 (")
    assert lines[1].startswith("pass canonicalize: ") and "linear_bias=1" in lines[1]
    dumps = sorted(p.name for p in (tmp_path / "ir").glob("*.kir"))
    assert dumps == ["00_dce_after.kir", "00_dce_before.kir", "01_canonicalize_after.kir",
                     "01_canonicalize_before.kir"]
    assert [n.op for n in load(tmp_path / "ir" / "01_canonicalize_after.kir").nodes] == \
        ["constant", "constant", "linear", "relu"]


def test_cli_rejects_a_bad_spec(tmp_path: Path):
    save(model(), tmp_path / "model.kir")
    result = CliRunner().invoke(app, ["compile", str(tmp_path / "model.kir"), "-o",
                                      str(tmp_path / "m.kiln"), "--passes", "cse(x=1)"],
                                env=PLAIN)
    assert result.exit_code == 1
    assert "error: pass 'cse' has no option 'x'; its options are: none" in result.output
    assert not (tmp_path / "m.kiln").exists()
