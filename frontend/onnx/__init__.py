"""The ONNX frontend: `import_model(path_or_model_proto)` -> a kiln `Graph`.

`importer` owns loading, opset conversion, shape inference, inputs, initializers and
the node loop; `ops_math`, `ops_tensor` and `ops_nn` hold the per-op converters;
`backend` runs kiln as an `onnx.backend.base.Backend`; `conformance` scores it on
ONNX's node tests. Imports onnx and kiln.ir only (the backend also the compiler).
"""
from . import ops_image, ops_index, ops_math, ops_nn, ops_tensor  # noqa: F401  (register the converters)
from .importer import OPSET, import_model, supported_op_types

__all__ = ["OPSET", "import_model", "supported_op_types"]
