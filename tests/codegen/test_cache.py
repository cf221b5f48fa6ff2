"""The kernel cache: value-name-invariant kernel keys (fused bodies included), hits and
misses of a second compile, damaged entries rebuilt, concurrent compiles into one
cache, the cache switched off, and a fully cached compile that never imports TVM."""
from __future__ import annotations

import json
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen.tvm.build import kernel_key
from kiln.codegen.tvm.cache import (CACHE_ENV, CacheEntry, CachedKernel, CacheStats,
                                    KernelCache, codegen_salt, open_cache)
from kiln.ir import interpret, parse
from kiln.runtime.plan import Workspace

REPO = Path(__file__).resolve().parents[2]

MLP = """\
graph mlp(%x: f32[batch, 8]) {
  %w1: f32[16, 8] = constant() {ref="w1"}
  %b1: f32[16] = constant() {ref="b1"}
  %w2: f32[16, 16] = constant() {ref="w2"}
  %b2: f32[16] = constant() {ref="b2"}
  %h1: f32[batch, 16] = linear(%x, %w1, %b1)
  %a1: f32[batch, 16] = tanh(%h1)
  %h2: f32[batch, 16] = linear(%a1, %w2, %b2)
  %a2: f32[batch, 16] = tanh(%h2)
  %h3: f32[batch, 16] = linear(%a2, %w2, %b2)
  %out: f32[batch, 16] = softmax(%h3) {axis=-1}
  return %out
}
"""

FUSED = string.Template("""\
graph g(%x: f32[$rows, 8], %w: f32[16, 8], %b: f32[16]) {
  %$out: f32[$rows, 16] = fused(%x, %w, %b) {kind="contraction"} graph $body(%$p: f32[$rows, 8], %$q: f32[16, 8], %$r: f32[16]) {
    %$lin: f32[$rows, 16] = linear(%$p, %$q, %$r)
    %$act: f32[$rows, 16] = $op(%$lin)
    return %$act
  }
  return %$out
}
""")


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32)
            for name, shape in (("w1", (16, 8)), ("b1", (16,)), ("w2", (16, 16)), ("b2", (16,)))}


def fused_node(op: str = "relu", rows: int = 4, **names: str):
    """The fused node of FUSED; `names` renames its values and body graph."""
    names = {"out": "y", "body": "grp", "p": "p", "q": "q", "r": "r", "lin": "lin",
             "act": "act", **names}
    return parse(FUSED.substitute(op=op, rows=rows, **names)).nodes[0]


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.kernel"))


# --- keys ------------------------------------------------------------------------------------
def test_value_names_do_not_change_a_nodes_key():
    a = parse(MLP.replace("%h1", "%first").replace("%x", "%input"), weights())
    b = parse(MLP, weights())
    assert [kernel_key(n) for n in a.nodes] == [kernel_key(n) for n in b.nodes]
    # the two identical layers (h2, h3) share a key; the first (8 -> 16) does not
    assert kernel_key(b.nodes[4]) != kernel_key(b.nodes[6]) == kernel_key(b.nodes[8])


def test_value_and_graph_names_do_not_change_a_fused_groups_key():
    renamed = fused_node(out="z", body="other", p="a", q="b", r="c", lin="t0", act="t1")
    assert kernel_key(renamed) == kernel_key(fused_node())
    assert "%i0" in kernel_key(renamed) and "%v1" in kernel_key(renamed)


@pytest.mark.parametrize("change", ["body op", "shape", "attribute"])
def test_a_changed_op_shape_or_attribute_changes_the_key(change):
    if change == "attribute":
        a = parse(MLP, weights()).nodes[-1]
        b = parse(MLP.replace("{axis=-1}", "{axis=0}"), weights()).nodes[-1]
    else:
        a = fused_node()
        b = fused_node(op="tanh") if change == "body op" else fused_node(rows=2)
    assert kernel_key(a) != kernel_key(b)


def test_target_and_salt_change_the_entry():
    entry = CacheEntry.of("relu(f32[4]) -> (f32[4])", "llvm -mcpu=a")
    assert entry.salt == codegen_salt()
    assert entry.digest != CacheEntry.of(entry.key, "llvm -mcpu=b").digest
    assert entry.digest != CacheEntry.of(entry.key, entry.target, "another salt").digest


# --- the cache -------------------------------------------------------------------------------
def test_damaged_entries_are_misses_and_are_removed(tmp_path):
    cache, entry, stats = KernelCache(tmp_path), CacheEntry.of("k", "t"), CacheStats()
    workspace = Workspace(4096, 512, 1)
    path = cache.store(entry, b"object bytes", workspace)
    assert cache.load(entry, stats) == CachedKernel(b"object bytes", workspace)
    path.write_bytes(path.read_bytes()[:-3])                       # truncated
    assert cache.load(entry, stats) is None and not path.exists()
    cache.store(entry, b"object bytes", workspace)
    header, payload = path.read_bytes().split(b"\n", 1)
    path.write_bytes(header + b"\n" + payload.replace(b"o", b"0"))  # flipped bytes
    assert cache.load(entry, stats) is None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xfe not a header")                      # foreign
    assert cache.load(entry, stats) is None
    for bad in ([4096, 512], [4096, -1, 0], [4096.0, 512, 1], None):  # no valid workspace
        cache.store(entry, b"object bytes", workspace)
        header = json.loads(path.read_bytes().split(b"\n", 1)[0])
        header["workspace"] = bad
        path.write_bytes(json.dumps(header).encode() + b"\n" + b"object bytes")
        assert cache.load(entry, stats) is None and not path.exists()
    assert (stats.hits, stats.misses, stats.rebuilt) == (1, 7, 7)
    assert not list(tmp_path.glob("*/.*.tmp"))                      # no temp files left


def test_open_cache_follows_option_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert open_cache().root == tmp_path / "env"
    assert open_cache(tmp_path / "opt").root == tmp_path / "opt"
    assert open_cache(False) is None and open_cache("off") is None
    monkeypatch.setenv(CACHE_ENV, "off")
    assert open_cache() is None
    monkeypatch.delenv(CACHE_ENV)
    assert open_cache().root == Path("~/.cache/kiln/kernels").expanduser()


# --- compiles --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp():
    graph = parse(MLP, weights())
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    return graph, x, interpret(graph, [x])[0]


def test_second_compile_is_a_full_hit_with_identical_outputs(tmp_path, mlp):
    graph, x, expected = mlp
    first = kiln.compile(graph, passes="", cache_dir=tmp_path)
    kernels = first.report.distinct_kernels
    assert (first.report.cache_hits, first.report.cache_misses) == (0, kernels)
    assert len(entries(tmp_path)) == kernels
    second = kiln.compile(graph, passes="", cache_dir=tmp_path)
    assert (second.report.cache_hits, second.report.cache_misses) == (kernels, 0)
    assert "kernel cache: 4 hits, 0 misses" in str(second.report)
    np.testing.assert_allclose(first(x)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second(x)[0], first(x)[0])
    # each kernel's workspace comes back from the cache as it was measured
    assert [s.workspace for s in second.plan.steps] == [s.workspace for s in first.plan.steps]


def test_a_damaged_entry_is_rebuilt(tmp_path, mlp):
    graph, x, expected = mlp
    kiln.compile(graph, passes="", cache_dir=tmp_path)
    damaged = entries(tmp_path)[0]
    damaged.write_bytes(damaged.read_bytes()[:200])
    again = kiln.compile(graph, passes="", cache_dir=tmp_path)
    assert again.report.cache_misses == 1
    assert again.report.cache_hits == again.report.distinct_kernels - 1
    np.testing.assert_allclose(again(x)[0], expected, rtol=1e-5, atol=1e-6)
    header = json.loads(damaged.read_bytes().split(b"\n", 1)[0])     # written whole again
    assert header["size"] == len(damaged.read_bytes().split(b"\n", 1)[1])


def test_cache_off_compiles_everything_and_writes_nothing(tmp_path, monkeypatch, mlp):
    graph, x, expected = mlp
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    for option in (False, "off"):
        compiled = kiln.compile(graph, passes="", cache_dir=option)
        assert compiled.report.cache_hits == 0
        assert compiled.report.cache_misses == compiled.report.distinct_kernels
        np.testing.assert_allclose(compiled(x)[0], expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv(CACHE_ENV, "off")
    assert kiln.compile(graph, passes="").report.cache_hits == 0
    assert not (tmp_path / "env").exists()


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import kiln
    from kiln.ir import parse
    from tests.codegen.test_cache import MLP, weights
    compiled = kiln.compile(parse(MLP, weights()), passes="", cache_dir=sys.argv[1])
    x = np.ones((2, 8), np.float32)
    np.save(sys.argv[2], compiled(x)[0])
    print(compiled.report.cache_hits, compiled.report.cache_misses, "tvm" in sys.modules)
""")


def _compile_in_subprocess(cache: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(cache), str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_compiles_share_one_cache(tmp_path):
    procs = [_compile_in_subprocess(tmp_path / "cache", tmp_path / f"{i}.npy") for i in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    a, b = (np.load(tmp_path / f"{i}.npy") for i in (0, 1))
    np.testing.assert_array_equal(a, b)
    assert len(entries(tmp_path / "cache")) == 4
    assert not list((tmp_path / "cache").glob("*/.*.tmp"))


def test_a_fully_cached_compile_does_not_import_tvm(tmp_path):
    for i, expected in enumerate(("0 4 True", "4 0 False")):
        proc = _compile_in_subprocess(tmp_path / "cache", tmp_path / f"{i}.npy")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out.split() == expected.split()


def test_kiln_compile_takes_a_cache_dir(tmp_path):
    from typer.testing import CliRunner

    from kiln.cli import app
    from kiln.ir import save
    save(parse(MLP, weights()), tmp_path / "mlp.kir")
    runner, cache = CliRunner(), tmp_path / "cache"
    for option, cached in ((str(cache), "0 from"), (str(cache), "4 from"), ("off", "0 from")):
        args = ["compile", str(tmp_path / "mlp.kir"), "-o", str(tmp_path / "mlp.kiln"),
                "--passes", "", "--cache-dir", option]
        result = runner.invoke(app, args, env={"NO_COLOR": "1", "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"4 distinct kernels ({cached} the kernel cache)" in result.output
    assert len(entries(cache)) == 4
