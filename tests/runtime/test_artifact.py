"""The `.kiln` artifact (kiln.runtime.artifact): save -> load -> the same outputs, and
refusal — naming the file and the problem — of corrupt, truncated, foreign and future
artifacts."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import kiln
from kiln.errors import ArtifactError
from kiln.runtime.artifact import KERNELS, MANIFEST, WEIGHTS, load, write_artifact
from kiln.runtime.executor import Executor
from kiln.runtime.plan import FORMAT_VERSION, Plan, Port, Signature, TensorSpec
from tests.runtime.kernels import WEIGHTS as CHAIN_WEIGHTS
from tests.runtime.kernels import chain_plan, chain_reference


@pytest.fixture(scope="module")
def artifact(kernels_so, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("artifact") / "chain.kiln"
    weights = {**CHAIN_WEIGHTS, "unused": np.zeros(3)}            # not stored
    return write_artifact(path, chain_plan(), weights, kernels_so, "cpu",
                          extra_manifest={"passes": "dce"})


def example(batch=3):
    rng = np.random.default_rng(batch)
    return rng.standard_normal((batch, 4), np.float32), rng.standard_normal((batch, 4), np.float32)


def test_save_load_gives_the_same_outputs(artifact, kernels_so):
    model = kiln.load(artifact)
    direct = Executor(chain_plan(), kernels_so, CHAIN_WEIGHTS)
    for batch in (2, 9):
        x, y = example(batch)
        outs = model(x, y)
        for got, same, want in zip(outs, direct(x, y), chain_reference(x, y)):
            np.testing.assert_array_equal(got, same)
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert model.plan == chain_plan() and model.target == "cpu"
    assert model.kiln_version == kiln.__version__
    assert repr(model).startswith("<kiln model chain (x: f32[batch, 4], y: f32[batch, 4])")


def test_manifest_contents(artifact, kernels_so):
    with zipfile.ZipFile(artifact) as zf:
        assert zf.namelist() == [MANIFEST, WEIGHTS, KERNELS]
        manifest = json.loads(zf.read(MANIFEST))
        assert zf.getinfo(WEIGHTS).compress_type == zipfile.ZIP_STORED
        for name in (WEIGHTS, KERNELS):
            data = zf.read(name)
            assert manifest["members"][name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                                 "bytes": len(data)}
    assert manifest["format"] == "kiln-artifact"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["plan"]["signature"]["inputs"][0] == {"name": "x", "dtype": "f32",
                                                          "shape": ["batch", 4]}
    assert manifest["extra"] == {"passes": "dce"}
    assert kiln.load(artifact).executor._constants.keys() == {"bias"}


def test_close_removes_the_extracted_files(artifact):
    model = load(artifact)
    tmpdir = model._tmpdir
    assert (tmpdir / KERNELS).is_file() and not (tmpdir / WEIGHTS).exists()
    model.close()
    assert not tmpdir.exists()


def test_bfloat16_and_int_weights_round_trip(tmp_path):
    values = {"w": TensorSpec("bf16", (3,)), "i": TensorSpec("i64", (2, 2)),
              "x": TensorSpec("f32", ("n",))}
    plan = Plan(Signature([Port("x", "f32", ("n",))], [Port("w", "bf16", (3,)),
                                                        Port("i", "i64", (2, 2))]),
                values, {"w": "w.bf16", "i": "w.int"}, [])
    w = np.array([1.5, -2.0, 65280.0], ml_dtypes.bfloat16)
    i = np.arange(4, dtype=np.int64).reshape(2, 2)
    write_artifact(tmp_path / "c.kiln", plan, {"w.bf16": w, "w.int": i}, None, "cpu")
    with zipfile.ZipFile(tmp_path / "c.kiln") as zf:
        assert zf.namelist() == [MANIFEST, WEIGHTS]          # no steps: no kernel library
    got_w, got_i = kiln.load(tmp_path / "c.kiln")(np.zeros(2, np.float32))
    assert got_w.dtype == w.dtype and got_w.tobytes() == w.tobytes()
    np.testing.assert_array_equal(got_i, i)


# --- refusals -----------------------------------------------------------------------------
def rewrite(src: Path, dst: Path, *, manifest=None, members=None, drop=()) -> Path:
    """Copy the zip `src` to `dst`, editing the manifest (a function of the dict) and
    replacing member bytes (a function of name and bytes); zip CRCs stay valid."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            data = zin.read(name)
            if name == MANIFEST and manifest:
                edited = json.loads(data)
                manifest(edited)
                data = json.dumps(edited).encode()
            elif members and name in members:
                data = members[name](data)
            zout.writestr(name, data)
    return dst


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_a_member_altered_after_writing_fails_its_checksum(artifact, tmp_path):
    bad = rewrite(artifact, tmp_path / "bad.kiln", members={KERNELS: flip_last_byte})
    with pytest.raises(ArtifactError, match=r"bad.kiln: member kernels.so fails its checksum "
                                            r"\(sha256 [0-9a-f]{16}\.\.\., manifest records"):
        load(bad)
    bad = rewrite(artifact, tmp_path / "bad_w.kiln", members={WEIGHTS: flip_last_byte})
    with pytest.raises(ArtifactError, match="member weights.safetensors fails its checksum"):
        load(bad)


def test_a_flipped_byte_in_the_file_is_caught(artifact, tmp_path):
    data = bytearray(artifact.read_bytes())
    with zipfile.ZipFile(artifact) as zf:
        info = zf.getinfo(WEIGHTS)           # stored: its bytes sit in the file as they are
    header = 30 + len(info.filename.encode()) + len(info.extra)
    data[info.header_offset + header + info.file_size // 2] ^= 0xFF
    (tmp_path / "flipped.kiln").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"flipped.kiln: member weights.safetensors is "
                                            r"corrupt: Bad CRC-32"):
        load(tmp_path / "flipped.kiln")


def test_a_truncated_artifact(artifact, tmp_path):
    data = artifact.read_bytes()
    (tmp_path / "cut.kiln").write_bytes(data[:len(data) // 2])
    with pytest.raises(ArtifactError, match=r"cut.kiln is truncated or damaged: it starts "
                                            "like a zip file"):
        load(tmp_path / "cut.kiln")


@pytest.mark.parametrize("content", [b"", b"hello, not a zip", bytes(range(256)) * 4])
def test_not_a_zip(tmp_path, content):
    (tmp_path / "x.kiln").write_bytes(content)
    with pytest.raises(ArtifactError, match=r"x.kiln is not a kiln artifact \(not a zip file\)"):
        load(tmp_path / "x.kiln")


def test_a_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"cannot read artifact .*nope.kiln: No such file"):
        kiln.load(tmp_path / "nope.kiln")


def test_a_foreign_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "f.kiln", "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("model.onnx", b"\x08\x01")
    with pytest.raises(ArtifactError, match=r"f.kiln is not a kiln artifact: a zip without "
                                            r"manifest.json \(it holds: readme.txt, model.onnx\)"):
        load(tmp_path / "f.kiln")
    with zipfile.ZipFile(tmp_path / "g.kiln", "w") as zf:
        zf.writestr(MANIFEST, json.dumps({"name": "some other tool"}))
    with pytest.raises(ArtifactError, match='g.kiln is not a kiln artifact: its manifest.json '
                                            'does not say "format": "kiln-artifact"'):
        load(tmp_path / "g.kiln")


def test_a_future_format_version(artifact, tmp_path):
    def future(m):
        m.update(format_version=FORMAT_VERSION + 1, kiln_version="9.0")
    bad = rewrite(artifact, tmp_path / "future.kiln", manifest=future)
    with pytest.raises(ArtifactError, match=rf"future.kiln was written by a newer kiln \(9.0, "
                                            rf"artifact format version {FORMAT_VERSION + 1}\); "
                                            rf"this kiln {kiln.__version__} reads format "
                                            rf"versions up to {FORMAT_VERSION}: upgrade kiln"):
        load(bad)


@pytest.mark.parametrize("edit, drop, message", [
    (None, (KERNELS,), "lacks member kernels.so"),
    (None, (WEIGHTS,), "lacks member weights.safetensors"),
    (lambda m: m["members"].pop(KERNELS), (), "records no sha256 for member kernels.so"),
    (lambda m: m.pop("plan"), (), "manifest.json lacks 'plan'"),
    (lambda m: m.update(target="cuda"), (), "is compiled for target 'cuda'; this runtime runs "
                                            "CPU artifacts"),
    (lambda m: m["plan"]["steps"][0].update(kernel="gelu"), (),
     r"cannot load .*lacks kernel\(s\) the plan calls: gelu"),
    (lambda m: m["plan"]["steps"][0].update(inputs=["nope"]), (),
     r"cannot load .*invalid plan 'chain': step 0 \(kernel 'add'\) reads %nope"),
    (lambda m: m["plan"]["values"]["bias"].update(shape=[5]), (),
     r"signature output bias: f32\[4\] disagrees with values"),
])
def test_inconsistent_artifacts(artifact, tmp_path, edit, drop, message):
    bad = rewrite(artifact, tmp_path / "bad.kiln", manifest=edit, drop=drop)
    with pytest.raises(ArtifactError, match=message) as info:
        load(bad)
    assert str(bad) in str(info.value)


def test_weights_that_do_not_fit_the_plan(artifact, tmp_path):
    from kiln.runtime.weights import save_weights
    save_weights({"fc.bias": np.zeros(4, np.float64)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    bad = rewrite(artifact, tmp_path / "w.kiln", members={WEIGHTS: lambda _: data},
                  manifest=lambda m: m["members"][WEIGHTS].update(sha256=sha))
    with pytest.raises(ArtifactError, match=r"cannot load .*w.kiln: weight 'fc.bias' for "
                                            r"constant %bias is float64\[4\]"):
        load(bad)


def test_write_refuses_missing_weights_and_library(kernels_so, tmp_path):
    with pytest.raises(ArtifactError, match=r"the weights lack \['fc.bias'\]"):
        write_artifact(tmp_path / "a.kiln", chain_plan(), {}, kernels_so, "cpu")
    with pytest.raises(ArtifactError, match="no kernel library at"):
        write_artifact(tmp_path / "a.kiln", chain_plan(), CHAIN_WEIGHTS, tmp_path / "no.so", "cpu")
    with pytest.raises(ArtifactError, match="extra_manifest is not JSON"):
        write_artifact(tmp_path / "a.kiln", chain_plan(), CHAIN_WEIGHTS, kernels_so, "cpu",
                       extra_manifest={"x": object()})
    assert not list(tmp_path.iterdir())            # nothing half-written is left behind
