"""A `.kiln` artifact runs in a process that never imports the compiler: not torch, not
tvm, not kiln.ir / frontend / passes / codegen, not sympy. Checked in fresh subprocesses,
once with torch and tvm made unimportable and once with them importable but unwanted."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kiln.runtime.artifact import write_artifact
from tests.runtime.kernels import WEIGHTS, chain_plan, chain_reference

COMPILER_MODULES = ["torch", "tvm", "sympy", "kiln.ir", "kiln.frontend", "kiln.passes",
                    "kiln.codegen", "kiln.compiler"]

SCRIPT = textwrap.dedent("""
    import json, sys
    if sys.argv[2] == "blocked":
        sys.modules["torch"] = None      # `import torch` now raises ImportError
        sys.modules["tvm"] = None
    import numpy as np
    import kiln
    model = kiln.load(sys.argv[1])
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    y = np.full((3, 4), 0.25, np.float32)
    outs = model(x, y)
    loaded = sorted(m for m in {compiler!r}
                    if sys.modules.get(m) is not None
                    or any(k.startswith(m + ".") for k in sys.modules))
    print(json.dumps({{"outs": [o.tolist() for o in outs], "loaded": loaded}}))
""").format(compiler=COMPILER_MODULES)


@pytest.fixture(scope="module")
def artifact(kernels_so, tmp_path_factory):
    path = tmp_path_factory.mktemp("isolation") / "chain.kiln"
    return write_artifact(path, chain_plan(), WEIGHTS, kernels_so, "cpu")


@pytest.mark.parametrize("mode", ["blocked", "available"])
def test_an_artifact_runs_without_the_compiler(artifact, tmp_path, mode):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(artifact), mode],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["loaded"] == []
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    y = np.full((3, 4), 0.25, np.float32)
    for got, want in zip(report["outs"], chain_reference(x, y)):
        np.testing.assert_allclose(np.array(got, np.float32), want, rtol=1e-6)


def test_importing_kiln_and_the_runtime_data_modules_stays_light():
    script = textwrap.dedent("""
        import json, sys
        import kiln
        light = sorted(m for m in sys.modules if m.startswith("kiln"))
        import kiln.ir, kiln.passes.memory, kiln.runtime.plan
        print(json.dumps({"light": light, "ffi": "tvm_ffi" in sys.modules}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"light": ["kiln", "kiln.errors"], "ffi": False}
