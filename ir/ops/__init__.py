"""The op catalog: importing this package registers every kiln op.

One module per family; each op is declared once, with `registry.register`.
"""
from . import creation, elementwise, fused, layout, linalg, reduction  # noqa: F401
