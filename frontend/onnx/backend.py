"""kiln as an ONNX backend (`onnx.backend.base.Backend`), so ONNX's own backend tests
can run through it: `KilnBackend.prepare(model, mode="interpret" | "compile")`.

"interpret" runs the imported graph through kiln's reference interpreter;
"compile" through `kiln.compile` (TVM kernels on the CPU) and the runtime.
A rep imports the model when it runs, binding the inputs that ops need as static
values (Reshape's shape, Slice's starts, ...) to the values it is given; the other
inputs stay graph inputs and are fed at run time.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .importer import import_with_names

MODES = ("interpret", "compile")


class KilnBackendRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, mode: str):
        if mode not in MODES:
            from ...errors import KilnError
            raise KilnError(f"unknown kiln backend mode {mode!r}; use one of {MODES}")
        self.model, self.mode = model, mode
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if not isinstance(inputs, dict):
            inputs = dict(zip(self.input_names, inputs))
        tensors = {name: np.asarray(value) for name, value in inputs.items()
                   if isinstance(value, (np.ndarray, np.generic)) and value.dtype != object}
        graph, names = import_with_names(self.model, tensors)   # refuses non-tensor inputs
        args = [_tensor(n, inputs.get(n)) for n in names]
        if self.mode == "interpret":
            from ...ir import interpret
            return tuple(interpret(graph, args))
        from ...compiler import compile as compile_graph
        return tuple(compile_graph(graph)(*args))


def _tensor(name: str, value: Any) -> np.ndarray:
    from ...errors import RuntimeInputError
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
        return np.asarray(value)
    raise RuntimeInputError(f"input {name!r}: kiln takes tensors (NumPy arrays), got "
                            f"{type(value).__name__}"
                            + (" of objects" if isinstance(value, np.ndarray) else ""))


class KilnBackend(Backend):
    """`prepare(model, device="CPU", mode="interpret")`."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", mode: str = "interpret",
                **kwargs: Any) -> KilnBackendRep:
        super().prepare(model, device, **kwargs)
        return KilnBackendRep(model, mode)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
supports_device = KilnBackend.supports_device
