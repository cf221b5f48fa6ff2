"""Every op in the registry is exercised against a reference by some op test.

An op test module is a `tests/ir/test_ops_*.py` file. It declares the ops it runs through
the interpreter with `@exercises(...)` from `tests/ir/op_testing.py` (which also checks, when
the test runs, that it really interpreted them), or with a module-level `TESTED_OPS` set.
Registering an op without such a test makes `test_every_registered_op_is_tested` fail.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from kiln.ir import all_ops
from tests.ir import op_testing

OP_MODULES = ("test_ops_elementwise", "test_ops_reduction", "test_ops_layout", "test_ops_linalg",
              "test_ops_creation")


def _op_test_modules() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("test_ops_*.py"))


def declared_ops() -> dict[str, set[str]]:
    """Op test module name -> the ops it declares."""
    out = {}
    for name in _op_test_modules():
        module = importlib.import_module(f"tests.ir.{name}")
        out[name] = (op_testing.COVERED.get(module.__name__, set())
                     | set(getattr(module, "TESTED_OPS", ())))
    return out


def test_op_test_modules_are_found():
    assert set(OP_MODULES) <= set(_op_test_modules())
    declared = declared_ops()
    assert all(declared[m] for m in OP_MODULES), {m: len(declared[m]) for m in OP_MODULES}


def test_every_registered_op_is_tested():
    covered = set().union(*declared_ops().values())
    missing = sorted(set(all_ops()) - covered)
    assert not missing, (
        f"{len(missing)} registered op(s) have no test: {missing}. Test each against a "
        "reference in a tests/ir/test_ops_*.py module and declare it there with "
        "@exercises(...) from tests/ir/op_testing.py (or a module-level TESTED_OPS set).")


def test_declarations_name_registered_ops():
    registered = set(all_ops())
    stale = {m: sorted(ops - registered) for m, ops in declared_ops().items() if ops - registered}
    assert not stale, f"op tests declare ops that are not registered: {stale}"


def test_exercises_fails_a_test_that_does_not_run_its_op():
    before = {k: set(v) for k, v in op_testing.COVERED.items()}
    try:
        @op_testing.exercises("add", "mul")
        def runs_only_add():
            op_testing.check_op("add", [np.ones(2, "float32")] * 2, {},
                                np.full(2, 2, "float32"))

        with pytest.raises(AssertionError, match=r"never interpreted \['mul'\]"):
            runs_only_add()

        @op_testing.exercises("add", "mul")
        def parametrized(op):
            op_testing.check_op(op, [np.ones(2, "float32")] * 2, {},
                                np.full(2, 2 if op == "add" else 1, "float32"))

        parametrized(op="mul")  # a test with an `op` argument must run that one op
        with pytest.raises(ValueError, match="no registered op"):
            op_testing.exercises("no_such_op")
    finally:
        op_testing.COVERED.clear()
        op_testing.COVERED.update(before)
