"""The ONNX importer: symbols from dim_param, initializers by reference (external data
memory-mapped), kiln.compile and the CLI on .onnx files, and every kind of bad input."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import kiln
from kiln.cli import app
from kiln.errors import FrontendError, UnsupportedOpsError
from kiln.frontend.onnx import OPSET, import_model
from kiln.ir import interpret


def _model(nodes, inputs, outputs, initializers=(), opset=21, domains=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _mlp(batch="batch"):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="flat")]
    shape = numpy_helper.from_array(np.array([-1], np.int64), "shape")
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b, shape])


def _ort(model, *inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), inputs)})


def test_dim_param_becomes_a_symbol_and_results_match_onnxruntime():
    model = _mlp()
    graph = import_model(model)
    assert graph.inputs[0].type.shape == ("batch", 4)
    assert graph.outputs[0].type.shape == ("3*batch",)
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(interpret(graph, [x])[0], _ort(model, x)[0], rtol=1e-5)


def test_unnamed_dims_get_fresh_symbols():
    model = _mlp(batch=None)
    assert import_model(model).inputs[0].type.shape == ("x_0", 4)


def test_nodes_carry_their_onnx_names_as_sources():
    graph = import_model(_mlp())
    assert {n.source for n in graph.nodes if n.op == "relu"} == {"Relu act"}


def test_external_data_is_memory_mapped_not_copied(tmp_path):
    model = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.weights", size_threshold=0)
    graph = import_model(path)
    w = graph.constants["w"]   # a view of the file's memory map, not a copy
    assert not w.flags.owndata and isinstance(w.base, np.memmap)
    assert str(w.base.filename) == str(tmp_path / "m.weights")
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(interpret(graph, [x])[0], _ort(_mlp(), x)[0], rtol=1e-5)


def test_missing_external_data_file_is_named(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_mlp(), str(path), save_as_external_data=True, location="gone.bin",
                    size_threshold=0)
    (tmp_path / "gone.bin").unlink()
    with pytest.raises(FrontendError, match=r"initializer 'w': external data file .*gone\.bin "
                                            r"does not exist") as e:
        import_model(path)
    assert str(path) in str(e.value)


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(_mlp().SerializeToString()[:37])
    with pytest.raises(FrontendError, match=r"bad\.onnx: not a readable ONNX model"):
        import_model(path)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf at all \x00\x01")
    with pytest.raises(FrontendError, match=r"junk\.onnx: not a readable ONNX model"):
        import_model(path)


def test_newer_opset_is_refused(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], opset=OPSET + 1)
    path = tmp_path / "new.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(FrontendError, match=rf"new\.onnx: opset {OPSET + 1} .* newer than kiln "
                                            rf"supports \(up to opset {OPSET}\)"):
        import_model(path)


def test_older_opset_is_converted():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0])]   # axes: an attribute < 13
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], opset=11)
    graph = import_model(model)
    assert [n.op for n in graph.nodes if n.op != "constant"] == ["unsqueeze"]


def test_every_unsupported_op_is_listed_at_once_with_node_names(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("NonMaxSuppression", ["a", "a"], ["b"], name="nms1"),
             helper.make_node("NonMaxSuppression", ["a", "a"], ["c"], name="nms2"),
             helper.make_node("StringNormalizer", ["x"], ["d"], name="strings"),
             helper.make_node("Frobnicate", ["x"], ["e"], name="custom", domain="com.acme")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 2])],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "bcde"],
                   domains=["com.acme"])
    path = tmp_path / "many.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(UnsupportedOpsError) as e:
        import_model(path)
    assert set(e.value.ops) == {
        "NonMaxSuppression", "StringNormalizer",
        "com.acme::Frobnicate (domain 'com.acme' is not implemented by kiln)"}
    text = str(e.value)
    for name in ("'nms1'", "'nms2'", "'strings'", "'custom'", str(path)):
        assert name in text


def test_subgraph_control_flow_is_a_clear_unsupported_error():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then,
                              else_branch=then)]
    model = _model(nodes, [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(UnsupportedOpsError, match=r"If \(subgraph control flow: kiln IR has no "
                                                  r"subgraphs\)[\s\S]*'branch'"):
        import_model(model)


def test_unsupported_attribute_values_are_refused_not_misread():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], name="wrap", mode="wrap"),
             helper.make_node("Gelu", ["x"], ["z"], name="g", fancy=1)]
    pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [pads])
    with pytest.raises(UnsupportedOpsError) as e:
        import_model(model)
    assert set(e.value.ops) == {"Pad: mode 'wrap'",
                                "Gelu: attribute(s) ['fancy'] not implemented"}


def test_static_inputs_must_be_known_or_bound():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(UnsupportedOpsError, match="must be known at import time"):
        import_model(model)
    graph = import_model(model, input_values={"shape": np.array([3, -1], np.int64)})
    assert [v.name for v in graph.inputs] == ["x"]
    assert graph.outputs[0].type.shape == (3, 2)


def test_compile_accepts_an_onnx_path_and_a_model_proto(tmp_path):
    model = _mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save_model(model, str(path))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    want = _ort(model, x)[0]
    for source in (path, str(path), model):
        np.testing.assert_allclose(kiln.compile(source)(x)[0], want, rtol=1e-5, atol=1e-6)


def test_cli_reads_onnx_models(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(_mlp(), str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["ir", str(path)])
    assert result.exit_code == 0, result.output
    assert "graph m(%x: f32[batch, 4])" in result.output and "matmul(" in result.output
    out = tmp_path / "mlp.kiln"
    result = runner.invoke(app, ["compile", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(kiln.load(out)(x)[0], _ort(_mlp(), x)[0], rtol=1e-5)


def test_cli_names_a_broken_onnx_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07\x12")
    result = CliRunner().invoke(app, ["ir", str(path)])
    assert result.exit_code == 1
    assert "broken.onnx: not a readable ONNX model" in result.output
