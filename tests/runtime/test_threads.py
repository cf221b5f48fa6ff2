"""TVM's pool workers do not spin after a call returns: kiln's runtime sets
`TVM_THREAD_POOL_SPIN_COUNT` before TVM's pool starts, unless the user set it.
Checked in fresh processes (the pool reads the variable once, when it starts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from kiln.runtime.ffi import DEFAULT_SPIN_COUNT, SPIN_COUNT_ENV

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from kiln.runtime.executor import Executor
    from kiln.runtime.plan import Plan, Port, Signature, Step, TensorSpec
    spec = TensorSpec("f32", ("n", 4))
    plan = Plan(Signature([Port("x", "f32", ("n", 4))], [Port("y", "f32", ("n", 4))]),
                {"x": spec, "y": spec}, {}, [Step("scale2", ["x"], ["y"])])
    ex = Executor(plan, sys.argv[1], {})
    x = np.ones((1 << 16, 4), np.float32)
    for _ in range(20):                      # scale2 is a parallel loop: the pool runs
        (y,) = ex(x)
    cpu = time.process_time()
    time.sleep(0.2)
    idle_cpu = time.process_time() - cpu
    print(json.dumps({"env": os.environ.get(sys.argv[2]), "idle_cpu": idle_cpu,
                      "ok": bool((y == 2).all())}))
""")


def _run(kernels_so, env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != SPIN_COUNT_ENV}
    if env_value is not None:
        env[SPIN_COUNT_ENV] = env_value
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(kernels_so), SPIN_COUNT_ENV],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_workers_sleep_after_a_call(kernels_so):
    report = _run(kernels_so, None)
    assert report["ok"] and report["env"] == str(DEFAULT_SPIN_COUNT)
    # kiln spins ~1 ms (3000 yields) then sleeps; TVM's default (300000) burns ~50-100 ms
    assert report["idle_cpu"] < 0.02, report


def test_the_users_spin_count_wins(kernels_so):
    report = _run(kernels_so, "12345")
    assert report["ok"] and report["env"] == "12345"
