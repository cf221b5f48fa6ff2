"""Frontends: turn outside models (torch.export, ONNX) into kiln IR. They import
kiln.ir and nothing after it (no passes, no codegen)."""
