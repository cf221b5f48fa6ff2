"""Exporters: a kiln `Graph` out to other formats — ONNX (`export.onnx`) and, through
the ONNX importer of torch-mlir vendored by IREE, MLIR (`export.mlir`).
They read kiln.ir only; nothing in kiln imports them but the CLI."""
