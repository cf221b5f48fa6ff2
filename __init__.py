"""kiln: an ahead-of-time graph compiler and runtime for deep-learning models.

Public API (see the design notes): `kiln.ir`, `kiln.frontend.torch.import_model`,
and — as codegen lands — `kiln.compile` and `kiln.load`.
"""
from .errors import KilnError

__version__ = "0.1.0"
__all__ = ["KilnError", "__version__"]
