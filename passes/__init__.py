"""Graph-to-graph passes and the pass manager. Imports kiln.ir only.

`manager` holds the Pass API (Pass, PassReport, register_pass, parse_pipeline,
PassManager, DEFAULT_PIPELINE); each module below registers its passes when imported,
so importing `kiln.passes` completes the registry.
"""
from . import (batchnorm, canonicalize, cse, dce, fold, fuse, layout, memory, pack,  # noqa: F401
               simplify, winograd)
from .manager import (DEFAULT_PIPELINE, Pass, PassManager, PassReport, parse_pipeline,
                      register_pass, registered_passes, run_pipeline)

__all__ = ["DEFAULT_PIPELINE", "Pass", "PassManager", "PassReport", "parse_pipeline",
           "register_pass", "registered_passes", "run_pipeline"]
