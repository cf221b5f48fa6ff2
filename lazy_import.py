"""`lazy_import(name)`: a module that is imported on its first attribute access
(importlib's LazyLoader). For the heavy dependencies that only some compiles use:
sympy (~0.7 s; symbolic dims) and networkx (~0.2 s; the fusion pass). A compile that
reads its optimized graph from the graph cache never touches them."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
