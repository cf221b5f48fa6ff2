"""The `.kiln` artifact: one zip file holding a compiled model, and its loader.

    manifest.json         what the artifact is and how to run it (below)
    weights.safetensors   the constants (`kiln.runtime.weights`: bfloat16 as raw bits
                          plus metadata); stored uncompressed
    kernels.so            the kernel library (TVM, llvm CPU); absent when the plan has
                          no steps (a model that only returns inputs and constants)

manifest.json:

    {"format": "kiln-artifact", "format_version": 1, "kiln_version": "0.1.0",
     "target": "llvm -mcpu=znver3",
     "plan": {... Plan.to_json(): signature with symbolic dims, values, constants,
              steps, memory ...},
     "members": {"weights.safetensors": {"sha256": "<hex>", "bytes": 1234},
                 "kernels.so": {"sha256": "<hex>", "bytes": 5678}},
     "extra": {... whatever the compiler adds: passes, source model, ...}}

`load` refuses, with an `ArtifactError` naming the file and the problem: a file that
is not a zip or is truncated, a zip without a kiln manifest (a foreign zip), a
manifest from a newer format version, a missing member, a member whose bytes fail
the zip CRC or the recorded SHA-256, and a plan or weights that do not fit together.
The kernel library is extracted to a private temporary directory, removed by
`LoadedModel.close()` or when the model is garbage-collected.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..errors import ArtifactError, KilnError
from .executor import Executor
from .plan import FORMAT_VERSION, Plan, Signature
from .weights import load_weights, save_weights

FORMAT_NAME = "kiln-artifact"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
KERNELS = "kernels.so"
CPU_TARGET_KINDS = ("cpu", "llvm")
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(path: str | Path, plan: Plan, weights: Mapping[str, np.ndarray],
                   kernels_so_path: str | Path | None, target: str,
                   extra_manifest: Mapping[str, Any] | None = None) -> Path:
    """Write the `.kiln` zip at `path` (atomically: a temporary file, then a rename).

    `weights` must hold every key the plan's constants name; other keys are not stored.
    `kernels_so_path` may be None only for a plan without steps. `extra_manifest`
    (JSON-serializable) is stored under the manifest's "extra".
    """
    path = Path(path)
    kernels = Path(kernels_so_path) if plan.steps else None
    plan.validate()
    needed = sorted(set(plan.constants.values()))
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ArtifactError(f"cannot write {path}: the weights lack {missing}, which the "
                            "plan's constants name")
    if kernels is not None and (kernels_so_path is None or not kernels.is_file()):
        raise ArtifactError(f"cannot write {path}: no kernel library at {kernels_so_path}")
    if not isinstance(target, str) or not target:
        raise ArtifactError(f"cannot write {path}: target must be a non-empty string")
    with tempfile.TemporaryDirectory(prefix="kiln-write-") as tmp:
        weights_path = Path(tmp) / WEIGHTS
        save_weights({k: weights[k] for k in needed}, weights_path)
        files = {WEIGHTS: weights_path, **({KERNELS: kernels} if kernels else {})}
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "kiln_version": __version__, "target": target, "plan": plan.to_json(),
            "members": {name: {"sha256": _sha256_file(p), "bytes": p.stat().st_size}
                        for name, p in files.items()},
            "extra": dict(extra_manifest or {}),
        }
        try:
            text = json.dumps(manifest, indent=1)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"cannot write {path}: extra_manifest is not JSON: {e}") from None
        partial = path.with_name(path.name + ".partial")
        try:
            with zipfile.ZipFile(partial, "w") as zf:
                zf.writestr(MANIFEST, text, compress_type=zipfile.ZIP_DEFLATED)
                zf.write(weights_path, WEIGHTS, compress_type=zipfile.ZIP_STORED)
                if kernels is not None:
                    zf.write(kernels, KERNELS, compress_type=zipfile.ZIP_DEFLATED)
            os.replace(partial, path)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise ArtifactError(f"cannot write {path}: {e}") from None
    return path


class LoadedModel:
    """A loaded `.kiln` artifact: call it like the compiled model.

        m = kiln.load("model.kiln")
        outs = m(x, y)        # list of NumPy arrays, in graph-output order
    """

    def __init__(self, path: Path, manifest: dict[str, Any], executor: Executor, tmpdir: Path):
        self.path, self.manifest, self.executor = path, manifest, executor
        self._tmpdir = tmpdir
        self._cleanup = weakref.finalize(self, shutil.rmtree, tmpdir, True)

    @property
    def plan(self) -> Plan:
        return self.executor.plan

    @property
    def signature(self) -> Signature:
        return self.executor.plan.signature

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def kiln_version(self) -> str:
        return self.manifest["kiln_version"]

    def __call__(self, *inputs: Any, **named: Any) -> list[np.ndarray]:
        return self.executor(*inputs, **named)

    def close(self) -> None:
        """Remove the extracted files (the loaded kernels stay usable while mapped)."""
        self._cleanup()

    def __repr__(self) -> str:
        return f"<kiln model {self.plan.name} {self.signature} from {self.path}>"


def load(path: str | Path) -> LoadedModel:
    """Open, check and load a `.kiln` artifact (see the module docstring for the checks)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            raise ArtifactError(f"{path} is truncated or damaged: it starts like a zip file "
                                "but its directory cannot be read") from None
        raise ArtifactError(f"{path} is not a kiln artifact (not a zip file)") from None
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {path}: {e.strerror or e}") from None
    tmpdir = Path(tempfile.mkdtemp(prefix="kiln-"))
    try:
        with zf:
            manifest = _read_manifest(path, zf)
            try:
                plan = Plan.from_json(manifest["plan"])
            except ArtifactError as e:
                raise ArtifactError(f"cannot load {path}: {e}") from None
            members = (WEIGHTS, KERNELS) if plan.steps else (WEIGHTS,)
            for name in members:
                _check_member(path, zf, manifest, name)
            for name in members:
                _extract(path, zf, name, manifest["members"][name], tmpdir / name)
        try:
            weights = load_weights(tmpdir / WEIGHTS, aligned=True)
            (tmpdir / WEIGHTS).unlink()
            executor = Executor(plan, tmpdir / KERNELS if plan.steps else None, weights)
        except KilnError as e:
            raise ArtifactError(f"cannot load {path}: {e}") from None
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return LoadedModel(path, manifest, executor, tmpdir)


def _read_manifest(path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    names = zf.namelist()
    if MANIFEST not in names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ArtifactError(f"{path} is not a kiln artifact: a zip without {MANIFEST} "
                            f"(it holds: {shown or 'nothing'})")
    try:
        manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ArtifactError(f"{path}: member {MANIFEST} is corrupt: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not a kiln artifact: {MANIFEST} is not JSON "
                            f"({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path} is not a kiln artifact: its {MANIFEST} does not say "
                            f'"format": "{FORMAT_NAME}"')
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path}: {MANIFEST} has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by a newer kiln "
                            f"({manifest.get('kiln_version', '?')}, artifact format version "
                            f"{version}); this kiln {__version__} reads format versions up to "
                            f"{FORMAT_VERSION}: upgrade kiln")
    for key in ("kiln_version", "target", "plan", "members"):
        if key not in manifest:
            raise ArtifactError(f"{path}: {MANIFEST} lacks {key!r}")
    target = manifest["target"]
    if not isinstance(target, str) or target.split(" ", 1)[0] not in CPU_TARGET_KINDS:
        raise ArtifactError(f"{path} is compiled for target {target!r}; this runtime runs "
                            f"CPU artifacts (target kind {' or '.join(CPU_TARGET_KINDS)})")
    return manifest


def _check_member(path: Path, zf: zipfile.ZipFile, manifest: dict[str, Any], name: str) -> None:
    if name not in zf.namelist():
        raise ArtifactError(f"{path} lacks member {name}")
    members = manifest["members"]
    entry = members.get(name) if isinstance(members, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
        raise ArtifactError(f"{path}: {MANIFEST} records no sha256 for member {name}")


def _extract(path: Path, zf: zipfile.ZipFile, name: str, entry: dict[str, Any],
             dest: Path) -> None:
    """Copy member `name` to `dest`, checking the zip CRC and the recorded SHA-256."""
    digest = hashlib.sha256()
    try:
        with zf.open(name) as src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ArtifactError(f"{path}: member {name} is corrupt: {e}") from None
    if digest.hexdigest() != entry["sha256"]:
        raise ArtifactError(f"{path}: member {name} fails its checksum (sha256 "
                            f"{digest.hexdigest()[:16]}..., manifest records "
                            f"{entry['sha256'][:16]}...): the file is corrupt or was altered")
