"""The executor (kiln.runtime.executor) on a tiny hand-compiled TVM library: one plan
at several sizes, input checking with errors that name the input, zero-copy inputs,
per-binding memory reuse, and failures of kernels, libraries and weights."""
from __future__ import annotations

import ctypes
import dataclasses
import weakref

import ml_dtypes
import numpy as np
import pytest
import torch

from kiln.errors import ArtifactError, KernelError, RuntimeInputError
from kiln.passes.memory import plan_memory
from kiln.runtime.buffers import aligned_copy, is_aligned
from kiln.runtime.executor import Executor
from kiln.runtime.plan import Plan, Port, Signature, Step, TensorSpec
from tests.runtime.kernels import BIAS, WEIGHTS, chain_plan, chain_reference, f32


@pytest.fixture(scope="module")
def ex(kernels_so):
    return Executor(chain_plan(), kernels_so, WEIGHTS)


def inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 4), np.float32),
            rng.standard_normal((batch, 4), np.float32))


def assert_outputs(outs, expected):
    assert len(outs) == len(expected)
    for got, want in zip(outs, expected):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_one_plan_runs_at_several_batch_sizes(ex, batch):
    x, y = inputs(batch, seed=batch)
    outs = ex(x, y)
    assert outs[0].shape == (2 * batch, 4)            # the dim expression 2*batch
    assert_outputs(outs, chain_reference(x, y))


def test_inputs_by_name_and_mixed(ex):
    x, y = inputs(2)
    assert_outputs(ex(x=x, y=y), chain_reference(x, y))
    assert_outputs(ex(x, y=y), chain_reference(x, y))


def test_memory_is_allocated_once_per_binding(kernels_so):
    ex = Executor(chain_plan(), kernels_so, WEIGHTS, max_cached_bindings=2)
    x, y = inputs(5)
    first = ex(x, y)
    memory = ex._memory({"batch": 5})
    second = ex(x, y)
    assert ex._memory({"batch": 5}) is memory                 # the same slots and wrappers
    assert len(memory.slots) == ex.plan.num_slots == 2
    assert second[0] is not first[0] and not np.shares_memory(second[0], first[0])
    assert_outputs(second, chain_reference(x, y))
    for batch in (6, 7):                                      # evicts batch=5 (LRU of 2)
        ex(*inputs(batch))
    assert list(ex._cache) == [(6,), (7,)]
    assert_outputs(ex(x, y), chain_reference(x, y))


def test_outputs_that_are_inputs_or_constants_are_copies(ex):
    x, y = inputs(2)
    outs = ex(x, y)
    assert not np.shares_memory(outs[2], x) and np.array_equal(outs[2], x)
    outs[3][:] = 0                                    # the returned constant is the caller's
    assert_outputs(ex(x, y), chain_reference(x, y))
    np.testing.assert_array_equal(ex(x, y)[3], BIAS)


def test_outputs_are_aligned_and_independent_of_the_inputs(ex):
    x, y = inputs(4)
    outs = ex(x, y)
    assert all(is_aligned(o) for o in outs[:2])
    x[:] = 1000
    assert_outputs(outs, chain_reference(*inputs(4)))


def _data(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_a_dropped_result_s_memory_is_reused_a_kept_one_never(kernels_so):
    ex = Executor(chain_plan(), kernels_so, WEIGHTS)
    x, y = inputs(3)
    first = ex(x, y)[0]
    storage = weakref.ref(first.base)          # (a weak reference: it must not hold it)
    del first
    second = ex(x, y)[0]                       # nothing holds first's memory: reused
    assert storage() is not None and second.base is storage()
    kept = second.copy()
    third = ex(*inputs(3, seed=2))[0]          # `second` is held: fresh memory
    assert not np.shares_memory(second, third)
    np.testing.assert_array_equal(second, kept)
    assert_outputs([second], chain_reference(x, y)[:1])


@pytest.mark.parametrize("hold", [lambda a: a[1:], lambda a: a.reshape(-1),
                                  lambda a: torch.from_numpy(a), lambda a: memoryview(a)],
                         ids=["slice", "reshape", "torch", "memoryview"])
def test_memory_a_view_still_reads_is_not_reused(kernels_so, hold):
    ex = Executor(chain_plan(), kernels_so, WEIGHTS)
    x, y = inputs(3)
    result = ex(x, y)[0]
    address = _data(result)
    view = hold(result)
    read = (lambda: view.numpy()) if isinstance(view, torch.Tensor) else (lambda: np.asarray(view))
    expected = read().copy()
    del result
    x2, y2 = inputs(3, seed=1)
    again = ex(x2, y2)[0]
    assert _data(again) != address
    np.testing.assert_array_equal(read(), expected)
    assert_outputs([again], chain_reference(x2, y2)[:1])


# --- zero copy --------------------------------------------------------------------------
def test_aligned_numpy_inputs_are_not_copied(ex):
    x, y = (aligned_copy(a) for a in inputs(3))
    prepared = ex.prepare(x, y)
    assert prepared.tensors[0].data_ptr() == x.ctypes.data and prepared.arrays == [None, None]


def test_unaligned_or_strided_numpy_inputs_are_copied(ex):
    x, y = inputs(3)
    buffer = np.zeros(3 * 4 + 1, np.float32)
    shifted = buffer[1:].reshape(3, 4)                # 4 bytes off any 64-byte boundary
    shifted[:] = x
    strided = np.asfortranarray(y)
    prepared = ex.prepare(shifted, strided)
    assert all(a is not None and is_aligned(a) for a in prepared.arrays)
    assert prepared.tensors[0].data_ptr() != shifted.ctypes.data
    assert_outputs(ex(shifted, strided), chain_reference(x, y))


def test_read_only_numpy_input(ex):
    x, y = (aligned_copy(a) for a in inputs(2))
    x.flags.writeable = False
    assert_outputs(ex(x, y), chain_reference(x, y))


def test_torch_inputs_are_zero_copy_when_aligned(ex):
    x, y = (aligned_copy(a) for a in inputs(3))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    prepared = ex.prepare(tx, ty)
    assert prepared.tensors[0].data_ptr() == tx.data_ptr() == x.ctypes.data
    assert prepared.arrays == [None, None]
    assert_outputs(ex(tx, ty), chain_reference(x, y))


def test_unaligned_and_transposed_torch_inputs_are_copied(ex):
    x, y = inputs(3)
    tx = torch.zeros(13)[1:].reshape(3, 4)            # 4 bytes past an aligned start
    tx.copy_(torch.from_numpy(x))
    ty = torch.from_numpy(np.ascontiguousarray(y.T)).T  # not contiguous
    prepared = ex.prepare(tx, ty)
    assert prepared.tensors[0].data_ptr() != tx.data_ptr()
    assert all(a is not None for a in prepared.arrays)
    assert_outputs(ex(tx, ty), chain_reference(x, y))


def bf16_plan() -> Plan:
    spec = TensorSpec("bf16", ("n",))
    return Plan(Signature([Port("h", "bf16", ("n",))], [Port("f", "f32", ("n",))]),
                {"h": spec, "f": f32("n")}, {}, [Step("bf16_to_f32", ["h"], ["f"])])


def test_bfloat16_inputs_from_numpy_and_torch(kernels_so):
    ex = Executor(bf16_plan(), kernels_so, {})
    values = np.array([1.5, -2.0, 3.25, 1e-3, 65280.0], np.float32)
    h = values.astype(ml_dtypes.bfloat16)
    expected = h.astype(np.float32)
    np.testing.assert_array_equal(ex(h)[0], expected)
    np.testing.assert_array_equal(ex(torch.from_numpy(values).to(torch.bfloat16))[0], expected)
    shifted = torch.zeros(6, dtype=torch.bfloat16)[1:]   # unaligned: copied through NumPy
    shifted.copy_(torch.from_numpy(values))
    np.testing.assert_array_equal(ex(shifted)[0], expected)


# --- input errors -----------------------------------------------------------------------
class OnAnotherDevice:
    """A DLPack producer whose tensor claims to live on a CUDA device (no GPU needed: the
    executor must refuse it before any kernel could touch it)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __dlpack__(self, max_version=None, **_):
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        # DLTensor = {data*, device {i32 type, i32 id}, ...}: the device type is 8 bytes in;
        # the legacy capsule starts with the DLTensor, the versioned one has 32 bytes first
        if max_version is None:
            capsule, name, offset = self.array.__dlpack__(), b"dltensor", 8
        else:
            capsule, name, offset = self.array.__dlpack__(max_version=(1, 0)), \
                b"dltensor_versioned", 40
        ctypes.c_int32.from_address(get(capsule, name) + offset).value = 2   # kDLCUDA
        return capsule

    def __dlpack_device__(self):
        return (2, 0)


@pytest.mark.parametrize("make, message", [
    (lambda x, y: ((x, y[:, :3]), {}),
     r"input 'y' axis 1 is 3, expected 4 \(y: f32\[batch, 4\]\)"),
    (lambda x, y: ((x[None], y), {}),
     r"input 'x' has shape \[1, 3, 4\] \(rank 3\), expected f32\[batch, 4\] \(rank 2\)"),
    (lambda x, y: ((x, y.astype(np.float64)), {}),
     r"input 'y' has dtype float64, expected f32 \(float32\); kiln does not cast inputs"),
    (lambda x, y: ((x, torch.from_numpy(y).double()), {}),
     r"input 'y' has dtype float64, expected f32 \(float32\)"),
    (lambda x, y: ((x,), {}), r"missing input\(s\) 'y' \(expected y: f32\[batch, 4\]\)"),
    (lambda x, y: ((), {}), r"missing input\(s\) 'x', 'y'"),
    (lambda x, y: ((x, y, y), {}), r"got 3 positional inputs, but 'chain' takes 2: x: f32"),
    (lambda x, y: ((x, y), {"z": y}), r"unknown input 'z'; 'chain' takes: x: f32\[batch, 4\], y"),
    (lambda x, y: ((x, y), {"x": x}), "input 'x' is given both by position and by name"),
    (lambda x, y: ((x, y[:2]), {}),
     r"input 'y' axis 0: symbol 'batch' is 2 here but 3 from input 'x' axis 0"),
    (lambda x, y: ((x[:0], y[:0]), {}),
     r"input 'x' axis 0: symbol 'batch' is 0; symbolic dims are sizes of at least 1"),
    (lambda x, y: ((x.tolist(), y), {}),
     r"input 'x' is a list; pass a NumPy array or a tensor with __dlpack__"),
    (lambda x, y: ((x, torch.empty(3, 4, device="meta")), {}),
     r"input 'y': cannot read it through DLPack: Cannot pack tensors on meta$"),
    (lambda x, y: ((x, OnAnotherDevice(y)), {}),
     r"input 'y' is on cuda:0; this model runs on the CPU \(move the tensor with .cpu\(\)\)"),
])
def test_input_errors_name_the_input(ex, make, message):
    args, named = make(*inputs(3))
    with pytest.raises(RuntimeInputError, match=message):
        ex(*args, **named)


def test_expression_dims_of_inputs_are_checked(kernels_so):
    # concat's inputs as graph inputs: a: [n, 4] and b: [n, 4]; output [2*n, 4]; then a
    # second input c: f32[2*n, 4] bound only through the expression
    values = {"a": f32("n", 4), "b": f32("n", 4), "c": f32("2*n", 4), "o": f32("2*n", 4)}
    plan = Plan(Signature([Port(k, "f32", values[k].shape) for k in "abc"],
                          [Port("o", "f32", ("2*n", 4))]),
                values, {}, [Step("concat", ["a", "b"], ["o"])])
    ex = Executor(plan, kernels_so, {})
    a, b = inputs(3)
    with pytest.raises(RuntimeInputError,
                       match=r"input 'c' axis 0 is 5, expected 2\*n = 6 "
                             r"\(n=3 from input 'a' axis 0\)"):
        ex(a, b, np.zeros((5, 4), np.float32))
    np.testing.assert_array_equal(ex(a, b, np.zeros((6, 4), np.float32))[0],
                                  np.concatenate([a, b]))


# --- kernels, libraries, weights --------------------------------------------------------
def test_a_failing_kernel_names_itself_and_its_source(kernels_so):
    plan = chain_plan(memory=False)
    # the plan claims relu makes f32[batch, 5]; the kernel checks its buffers and refuses
    values = {**plan.values, "t2": f32("batch", 5), "t3": f32("batch", 5)}
    steps = [s for s in plan.steps[:3]] + [Step("scale2", ["t2"], ["t3"], "%t3 = mul(%t2, 2.0)")]
    out_ports = (Port("t3", "f32", ("batch", 5)),)
    plan = Plan(dataclasses.replace(plan.signature, outputs=out_ports),
                {k: v for k, v in values.items() if k != "out"}, plan.constants, steps,
                {"t0": 0, "t1": 1, "t2": 0}, name="broken")
    ex = Executor(plan, kernels_so, WEIGHTS)
    with pytest.raises(KernelError, match=r"kernel 'relu' \(step 2 of plan 'broken'\) failed: "
                                          r"(.|\n)*compiled from: %t2 = relu\(%t1\)"):
        ex(*inputs(2))


def test_a_kernel_missing_from_the_library(kernels_so):
    plan = chain_plan()
    steps = (dataclasses.replace(plan.steps[0], kernel="gelu"), *plan.steps[1:])
    with pytest.raises(ArtifactError, match=r"kernel library .*kernels.so lacks kernel\(s\) "
                                            "the plan calls: gelu"):
        Executor(dataclasses.replace(plan, steps=steps), kernels_so, WEIGHTS)


def test_not_a_kernel_library(tmp_path):
    (tmp_path / "junk.so").write_bytes(b"\x7fELF not really")
    with pytest.raises(ArtifactError, match=r"cannot load kernel library .*junk.so"):
        Executor(chain_plan(), tmp_path / "junk.so", WEIGHTS)


@pytest.mark.parametrize("weights, message", [
    ({}, r"the weights hold no 'fc.bias' for constant %bias"),
    ({"fc.bias": np.zeros(4, np.float64)},
     r"weight 'fc.bias' for constant %bias is float64\[4\], the plan expects f32\[4\]"),
    ({"fc.bias": np.zeros(5, np.float32)}, r"is float32\[5\], the plan expects f32\[4\]"),
])
def test_weights_that_do_not_fit_the_plan(kernels_so, weights, message):
    with pytest.raises(ArtifactError, match=message):
        Executor(chain_plan(), kernels_so, weights)


def test_unaligned_weights_are_copied_aligned_ones_are_not(kernels_so):
    shifted = np.zeros(5, np.float32)[1:]
    shifted[:] = BIAS
    ex = Executor(chain_plan(), kernels_so, {"fc.bias": shifted})
    assert is_aligned(ex._constants["bias"]) and ex._constants["bias"] is not shifted
    aligned = aligned_copy(BIAS)
    assert Executor(chain_plan(), kernels_so, {"fc.bias": aligned})._constants["bias"] is aligned
    x, y = inputs(2)
    assert_outputs(ex(x, y), chain_reference(x, y))


def test_a_plan_without_steps_needs_no_library():
    plan = Plan(Signature([Port("x", "f32", ("n",))], [Port("x", "f32", ("n",)),
                                                        Port("c", "i64", (2,))]),
                {"x": f32("n"), "c": TensorSpec("i64", (2,))}, {"c": "count"}, [])
    ex = Executor(plan, None, {"count": np.array([7, 8])})
    x = np.arange(3, dtype=np.float32)
    out_x, out_c = ex(x)
    np.testing.assert_array_equal(out_x, x)
    assert not np.shares_memory(out_x, x) and out_c.tolist() == [7, 8]


def test_a_value_returned_twice_comes_back_as_two_arrays(kernels_so):
    plan = chain_plan(memory=False)
    out = plan.signature.outputs[0]
    plan = plan_memory(dataclasses.replace(
        plan, signature=dataclasses.replace(plan.signature, outputs=(out, out))))
    first, second = Executor(plan, kernels_so, WEIGHTS)(*inputs(2))
    assert np.array_equal(first, second) and not np.shares_memory(first, second)
