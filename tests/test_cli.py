"""The `kiln` command: `kiln ir`, `kiln check`, `kiln compile`, `kiln run` and
`kiln inspect`, with --help everywhere."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kiln.cli import app, parse_dynamic
from kiln.ir import GraphBuilder, graphs_equal, load, save, tensor

runner = CliRunner()

GOOD = """\
graph mlp(%x: f32[batch, 4]) {
  %fc.weight: f32[3, 4] = constant() {ref="fc.weight"}
  %linear: f32[batch, 3] = linear(%x, %fc.weight) loc("model.py:3 in forward")
  %relu: f32[batch, 3] = relu(%linear)
  return %relu
}
"""


# rich formats help and usage errors: a wide, colourless terminal keeps words whole
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def kiln(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=PLAIN)


@pytest.fixture
def good_kir(tmp_path: Path) -> Path:
    b = GraphBuilder("mlp")
    x = b.input("x", tensor("f32", "batch", 4))
    w = b.constant("fc.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    graph = b.build(b.relu(b.linear(x, w, source="model.py:3 in forward")))
    save(graph, tmp_path / "mlp.kir")
    assert (tmp_path / "mlp.kir").read_text() == GOOD
    return tmp_path / "mlp.kir"


# --- help --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    ([], ["ir", "check", "compile", "run", "inspect"]),
    (["compile"], ["MODEL", "--output", "--target", "--dynamic", "--factory"]),
    (["run"], ["OUT.kiln", "--input", "--output-dir"]),
    (["inspect"], ["OUT.kiln", "--bind"]),
    (["ir"], ["MODEL", "--output", "--dynamic", "INPUT:AXIS=SYMBOL", "--factory",
              "--no-locations"]),
    (["check"], ["FILE.kir"]),
])
def test_help(args, expected):
    result = kiln(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: kiln" in result.output
    for word in expected:
        assert word in result.output


def test_no_command_shows_help():
    result = kiln()
    assert "Usage: kiln" in result.output and "check" in result.output


# --- kiln check --------------------------------------------------------------------------------
def test_check_good_file(good_kir):
    result = kiln("check", good_kir)
    assert result.exit_code == 0, result.output
    assert result.stdout == ("ok mlp: 3 nodes, 3 ops (constant x1, linear x1, relu x1); "
                             "(%x: f32[batch, 4]) -> (%relu: f32[batch, 3])\n")


def test_check_bad_file_reports_line_and_column(tmp_path):
    bad = tmp_path / "bad.kir"
    bad.write_text("graph g(%x: f32[4]) {\n  %y: f32[4] = relux(%x)\n  return %y\n}\n")
    result = kiln("check", bad)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (f"error: {bad}:2:16: unknown op 'relux'\n"
                             "    %y: f32[4] = relux(%x)\n"
                             "                 ^\n")


def test_check_type_mismatch(tmp_path):
    bad = tmp_path / "types.kir"
    bad.write_text("graph g(%x: f32[4]) {\n  %y: f32[5] = relu(%x)\n  return %y\n}\n")
    result = kiln("check", bad)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {bad}:2:3: declared result type(s) [f32[5]] "
                                    "differ from what 'relu' infers: [f32[4]]\n")


def test_check_missing_weights(good_kir):
    good_kir.with_suffix(".safetensors").unlink()
    result = kiln("check", good_kir)
    assert result.exit_code == 1
    assert f"{good_kir}:2:27: no data for constant 'fc.weight'" in result.stderr


def test_check_corrupt_weights(good_kir):
    good_kir.with_suffix(".safetensors").write_bytes(b"\x00" * 10)
    result = kiln("check", good_kir)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot read weights file {good_kir.with_suffix('.safetensors')}: ")


def test_check_missing_file(tmp_path):
    result = kiln("check", tmp_path / "nope.kir")
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'nope.kir'}: no such file\n"


def test_kiln_errors_print_no_traceback_and_check_needs_no_torch(good_kir, tmp_path):
    """The installed command, in a process where `import torch` fails."""
    bad = tmp_path / "bad.kir"
    bad.write_text("graph g(%x: f32[4]) {\n  return %y\n}\n")
    script = textwrap.dedent("""\
        import sys
        sys.modules["torch"] = None          # any `import torch` now raises ImportError
        sys.argv = ["kiln"] + sys.argv[1:]
        from kiln.cli import main
        main()
    """)
    ok = subprocess.run([sys.executable, "-c", script, "check", str(good_kir)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok mlp: 3 nodes")
    failed = subprocess.run([sys.executable, "-c", script, "check", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"error: {bad}:2:10: %y is used before it is defined\n")
    assert "Traceback" not in failed.stderr


# --- kiln ir on .kir -----------------------------------------------------------------------------
def test_ir_prints_a_kir_file(good_kir):
    result = kiln("ir", good_kir)
    assert result.exit_code == 0, result.output
    assert result.stdout == GOOD


def test_ir_without_locations(good_kir):
    result = kiln("ir", good_kir, "--no-locations")
    assert result.exit_code == 0, result.output
    assert result.stdout == GOOD.replace(' loc("model.py:3 in forward")', "")


def test_ir_writes_kir_and_weights(good_kir, tmp_path):
    out = tmp_path / "out" / "copy.kir"
    result = kiln("ir", good_kir, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out} and {out.with_suffix('.safetensors')}\n"
    assert out.read_text() == GOOD
    assert graphs_equal(load(out), load(good_kir))
    assert kiln("check", out).exit_code == 0


def test_ir_adds_the_kir_suffix(good_kir, tmp_path):
    result = kiln("ir", good_kir, "--output", tmp_path / "plain")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plain.kir").read_text() == GOOD
    assert (tmp_path / "plain.safetensors").is_file()


def test_ir_refuses_dynamic_for_kir(good_kir):
    result = kiln("ir", good_kir, "--dynamic", "x:0=n")
    assert result.exit_code == 1
    assert result.stderr == (f"error: --dynamic applies to torch models (.py, .pt2), "
                             f"not to {good_kir}\n")


def test_ir_unknown_suffix(tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"")
    result = kiln("ir", model)
    assert result.exit_code == 1
    assert "(not .tflite)" in result.stderr


def test_ir_empty_onnx_file(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    result = kiln("ir", model)
    assert result.exit_code == 1
    assert "model.onnx: not a readable ONNX model" in result.stderr


def test_bad_dynamic_spec(good_kir):
    result = kiln("ir", good_kir, "--dynamic", "x0=batch")
    assert result.exit_code == 2        # a usage error, reported by typer
    assert "'x0=batch' is neither SYMBOL" in result.output


def test_parse_dynamic():
    assert parse_dynamic(["x:0=batch", "x:1=seq", "1:0=batch", "ids:-1=n"]) == {
        "x": {0: "batch", 1: "seq"}, 1: {0: "batch"}, "ids": {-1: "n"}}
    assert parse_dynamic([]) == {}
    assert parse_dynamic(["batch"]) == {"*": {0: "batch"}}   # axis 0 of every input


# --- kiln ir on torch models (needs kiln.frontend.torch) -----------------------------------------
MODEL_PY = '''\
import torch


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_model():
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(3, 4),), {"x": {0: "batch"}}


def make_static():
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(3, 4),)


def make_wrong():
    return TinyMLP()
'''


@pytest.fixture
def model_py(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(MODEL_PY)
    return path


def _signature(kir_text: str) -> str:
    return kir_text.splitlines()[0]


def test_ir_on_a_factory_file(model_py):
    result = kiln("ir", model_py)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert _signature(text) == "graph TinyMLP(%x: f32[batch, 4]) {"
    assert text.rstrip().endswith("return %linear_1\n}")
    assert 'constant() {ref="fc1.weight"}' in text
    assert 'relu(%linear) loc("tiny.py:11 in forward")' in text


def test_ir_factory_option_and_dynamic(model_py):
    static = kiln("ir", model_py, "--factory", "make_static", "--no-locations")
    assert static.exit_code == 0, static.output
    assert _signature(static.stdout) == "graph TinyMLP(%x: f32[3, 4]) {"
    assert "loc(" not in static.stdout
    dynamic = kiln("ir", model_py, "--factory", "make_static", "--dynamic", "x:0=n")
    assert dynamic.exit_code == 0, dynamic.output
    assert _signature(dynamic.stdout) == "graph TinyMLP(%x: f32[n, 4]) {"


def test_ir_on_a_factory_file_writes_a_checkable_kir(model_py, tmp_path):
    out = tmp_path / "tiny.kir"
    result = kiln("ir", model_py, "-o", out)
    assert result.exit_code == 0, result.output
    graph = load(out)
    assert set(graph.constants) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    check = kiln("check", out)
    assert check.exit_code == 0, check.output
    assert check.stdout.startswith("ok TinyMLP: 7 nodes, 3 ops (constant x4, linear x2, relu x1)")


def test_ir_factory_errors(model_py):
    missing = kiln("ir", model_py, "--factory", "make_nothing")
    assert missing.exit_code == 1
    assert missing.stderr == (f"error: {model_py}: no function make_nothing() (functions here: "
                              "make_model, make_static, make_wrong); pick one with --factory "
                              "NAME\n")
    wrong = kiln("ir", model_py, "--factory", "make_wrong")
    assert wrong.exit_code == 1
    assert wrong.stderr == (f"error: {model_py}: make_wrong() must return (module, "
                            "example_inputs) or (module, example_inputs, dynamic_dims), got "
                            "TinyMLP\n")


def test_ir_on_a_pt2_file(model_py, tmp_path):
    import torch
    namespace: dict = {}
    exec(compile(model_py.read_text(), str(model_py), "exec"), namespace)
    module, inputs, _ = namespace["make_model"]()
    program = torch.export.export(module, inputs,
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    pt2 = tmp_path / "tiny.pt2"
    torch.export.save(program, str(pt2))

    result = kiln("ir", pt2, "--dynamic", "x:0=batch", "--no-locations")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(%x: f32[batch, 4]) {")
    assert [ln.split(" = ")[1].split("(")[0] for ln in lines[1:-2]] == \
        ["constant"] * 4 + ["linear", "relu", "linear"]

    out = tmp_path / "from_pt2.kir"
    assert kiln("ir", pt2, "-o", out).exit_code == 0
    np.testing.assert_array_equal(load(out).constants["fc2.bias"],
                                  module.fc2.bias.detach().numpy())


def test_ir_on_a_corrupt_pt2_file(tmp_path):
    pt2 = tmp_path / "broken.pt2"
    pt2.write_bytes(b"not a zip archive")
    result = kiln("ir", pt2)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot load the ExportedProgram {pt2}: ")


# --- kiln compile / run / inspect ----------------------------------------------------------------
def test_compile_run_inspect(model_py, tmp_path):
    out = tmp_path / "tiny.kiln"
    result = kiln("compile", model_py, "-o", out, "--factory", "make_static", "--dynamic", "batch")
    assert result.exit_code == 0, result.output
    for stage in ("import", "passes", "codegen", "plan", "save"):
        assert stage in result.output
    assert "x: f32[batch, 4]" in result.output and out.exists()

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = kiln("run", out, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "o")
    assert result.exit_code == 0, result.output
    produced = sorted((tmp_path / "o").glob("*.npy"))
    assert len(produced) == 1 and np.load(produced[0]).shape == (5, 2)
    import kiln as kiln_pkg
    np.testing.assert_array_equal(np.load(produced[0]), kiln_pkg.load(out)(x)[0])

    result = kiln("inspect", out, "--bind", "batch=8")
    assert result.exit_code == 0, result.output
    for word in ("signature", "x: f32[batch, 4]", "kernels.so", "weights.safetensors",
                 "steps", "kernel", "memory plan", "kernel workspace", "'batch': 8"):
        assert word in result.output, word


def test_run_reports_a_missing_input(model_py, tmp_path):
    out = tmp_path / "tiny.kiln"
    assert kiln("compile", model_py, "-o", out).exit_code == 0
    result = kiln("run", out)
    assert result.exit_code == 1
    assert "missing input" in result.output and "'x'" in result.output


def test_compile_refuses_an_unknown_target(model_py, tmp_path):
    result = kiln("compile", model_py, "-o", tmp_path / "t.kiln", "--target", "tpu")
    assert result.exit_code == 1 and "unknown target 'tpu'" in result.output
