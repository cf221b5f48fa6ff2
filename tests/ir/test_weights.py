"""Saving and loading a graph: `.kir` text plus its `.safetensors` weights sidecar."""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from kiln.errors import KilnError, ParseError
from kiln.ir import GraphBuilder, graphs_equal, interpret, load, print_graph, save, tensor
from kiln.ir.weights import load_weights, save_weights


def weighted_graph():
    b = GraphBuilder("embed")
    ids = b.input("ids", tensor("i64", "batch", 3))
    x = b.input("x", tensor("bf16", "batch", 4))
    table = b.constant("embed.weight", np.arange(20, dtype=np.float32).reshape(5, 4))
    index = b.constant("index", np.array([[4, 0, 2]], dtype=np.int64))
    scale = b.constant("scale", np.array([0.5, -1.5, 3.0, 1e-3], dtype=ml_dtypes.bfloat16))
    scalar = b.constant("one", np.array(1.0, np.float32))
    mask = b.constant("mask", np.array([True, False, True, True]))
    e = b.gather(table, ids, axis=0)                       # [batch, 3, 4]
    s = b.mul(x, scale)
    return b.build(b.mul(e, scalar), s, index, mask)


def test_save_writes_text_and_sidecar(tmp_path):
    g = weighted_graph()
    save(g, tmp_path / "m.kir")
    assert (tmp_path / "m.kir").read_text() == print_graph(g)
    assert (tmp_path / "m.safetensors").is_file()


def test_save_load_round_trip(tmp_path):
    g = weighted_graph()
    save(g, tmp_path / "m.kir")
    back = load(tmp_path / "m.kir")
    assert graphs_equal(g, back)
    assert back.constants["scale"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.constants["index"].dtype == np.int64
    assert back.constants["one"].shape == ()                # 0-d stays 0-d
    np.testing.assert_array_equal(back.constants["scale"].astype(np.float32),
                                  np.array([0.5, -1.5, 3.0, 1e-3], ml_dtypes.bfloat16)
                                  .astype(np.float32))
    inputs = [np.array([[1, 2, 3], [0, 0, 4]], np.int64),
              np.ones((2, 4), ml_dtypes.bfloat16)]
    for a, b in zip(interpret(g, inputs), interpret(back, inputs)):
        np.testing.assert_array_equal(a, b)


def test_a_graph_without_weights_has_no_sidecar(tmp_path):
    b = GraphBuilder("plain")
    g = b.build(b.relu(b.input("x", tensor("f32", 2))))
    save(g, tmp_path / "p.kir")
    assert not (tmp_path / "p.safetensors").exists()
    assert graphs_equal(load(tmp_path / "p.kir"), g)


def test_bfloat16_is_stored_as_bits_with_its_dtype_in_the_metadata(tmp_path):
    array = np.array([1.0, -2.5, 65280.0], ml_dtypes.bfloat16)
    save_weights({"b": array, "f": np.zeros(2, np.float16)}, tmp_path / "w.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as f:
        assert json.loads(f.metadata()["kiln.dtypes"]) == {"b": "bf16"}
        assert f.get_tensor("b").dtype == np.uint16
    back = load_weights(tmp_path / "w.safetensors")
    assert back["b"].dtype == array.dtype and back["b"].tobytes() == array.tobytes()
    assert back["f"].dtype == np.float16


def test_non_contiguous_arrays_are_saved(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T        # a transposed view
    save_weights({"t": array}, tmp_path / "w.safetensors")
    np.testing.assert_array_equal(load_weights(tmp_path / "w.safetensors")["t"], array)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", b"\xff" * 64])
def test_corrupt_weights_file_names_the_file(tmp_path, content):
    g = weighted_graph()
    save(g, tmp_path / "m.kir")
    (tmp_path / "m.safetensors").write_bytes(content)
    with pytest.raises(KilnError, match=r"cannot read weights file .*m\.safetensors: ") as info:
        load(tmp_path / "m.kir")
    assert str(tmp_path / "m.safetensors") in str(info.value)


def test_truncated_weights_file(tmp_path):
    save(weighted_graph(), tmp_path / "m.kir")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(KilnError, match="cannot read weights file"):
        load(tmp_path / "m.kir")


def test_bad_dtype_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": np.zeros(2, np.uint16)}, str(path), metadata={"kiln.dtypes": '{"a": "f8"}'})
    with pytest.raises(KilnError, match="metadata gives 'a' the unknown dtype 'f8'"):
        load_weights(path)
    save_file({"a": np.zeros(2, np.uint16)}, str(path), metadata={"kiln.dtypes": "{oops"})
    with pytest.raises(KilnError, match=f"cannot read weights file {path}"):
        load_weights(path)


def test_missing_sidecar_is_a_parse_error_at_the_constant(tmp_path):
    save(weighted_graph(), tmp_path / "m.kir")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(ParseError) as info:
        load(tmp_path / "m.kir")
    err = info.value
    assert err.filename == str(tmp_path / "m.kir") and (err.line, err.column) == (2, 30)
    assert err.message.startswith("no data for constant 'embed.weight'")


def test_weights_that_do_not_match_the_text(tmp_path):
    save(weighted_graph(), tmp_path / "m.kir")
    save_weights({"embed.weight": np.zeros((5, 4), np.float64),
                  "index": np.zeros((1, 3), np.int64)}, tmp_path / "m.safetensors")
    with pytest.raises(ParseError, match="constant 'embed.weight' is declared f32\\[5, 4\\] "
                                         "but its data is f64\\[5, 4\\]"):
        load(tmp_path / "m.kir")


def test_missing_kir_file(tmp_path):
    with pytest.raises(KilnError, match=f"cannot read {tmp_path / 'nope.kir'}: No such file"):
        load(tmp_path / "nope.kir")


def test_a_binary_file_is_not_kir(tmp_path):
    (tmp_path / "w.kir").write_bytes(b"\x80\x81graph")
    with pytest.raises(KilnError, match=r"cannot read .*w\.kir: not UTF-8 text \(byte 0\)"):
        load(tmp_path / "w.kir")
