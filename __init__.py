"""kiln: an ahead-of-time graph compiler and runtime for deep-learning models.

Public API (see the design notes): `kiln.ir`, `kiln.frontend.torch.import_model`,
`kiln.load` and — as codegen lands — `kiln.compile`. `import kiln` imports only
`kiln.errors`; `kiln.load` imports the runtime (never the compiler) when called.
"""
from .errors import KilnError

__version__ = "0.1.0"
__all__ = ["KilnError", "__version__", "compile", "load"]


def compile(model, example_inputs=None, *, target="cpu", dynamic_dims=None, passes=None,
            dump_ir=None, cache_dir=None):
    """Compile a model (nn.Module, ExportedProgram, kiln Graph, .kir path) into a callable
    `CompiledModel` (see `kiln.compiler.compile`). The compiler is imported on first use."""
    from .compiler import compile as compile_model
    return compile_model(model, example_inputs, target=target, dynamic_dims=dynamic_dims,
                         passes=passes, dump_ir=dump_ir, cache_dir=cache_dir)


def load(path):
    """Load a `.kiln` artifact; returns a callable `LoadedModel` (see kiln.runtime.artifact).
    Runs without torch, tvm or the compiler."""
    from .runtime.artifact import load as load_artifact
    return load_artifact(path)
