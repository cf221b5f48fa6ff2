"""kiln's exception classes: every error kiln raises on purpose is one of these.

Each names the thing at fault (op, input, file, line) and what was expected.
Nothing in kiln raises a bare RuntimeError/ValueError for bad user input.
"""
from __future__ import annotations


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""


class ParseError(KilnError):
    """Malformed `.kir` text. Carries the place: file, line and column (1-based)."""

    def __init__(self, message: str, *, line: int, column: int, source_line: str = "",
                 filename: str = "<kir>"):
        self.message, self.line, self.column = message, line, column
        self.filename, self.source_line = filename, source_line
        caret = f"\n  {source_line}\n  {' ' * (column - 1)}^" if source_line else ""
        super().__init__(f"{filename}:{line}:{column}: {message}{caret}")


class VerifyError(KilnError):
    """A graph breaks a well-formedness rule. Names the node and the rule."""

    def __init__(self, message: str, *, node: str | None = None, rule: str = ""):
        self.node, self.rule = node, rule
        super().__init__(message)


class TypeInferenceError(KilnError):
    """An op got inputs or attributes its shape/dtype rule rejects."""


class UnsupportedOpsError(KilnError):
    """A model uses ops kiln cannot import or lower. Lists *every* such op at once.

    `ops` maps an op name to the list of places (source lines) where it occurs.
    """

    def __init__(self, what: str, ops: dict[str, list[str]]):
        self.ops = ops
        lines = [f"{what}: {len(ops)} unsupported op(s):"]
        for name, places in sorted(ops.items()):
            lines.append(f"  {name}  (x{len(places)})")
            for place in places[:5]:
                lines.append(f"      at {place}")
            if len(places) > 5:
                lines.append(f"      ... and {len(places) - 5} more")
        super().__init__("\n".join(lines))


class InterpretError(KilnError):
    """A node failed while the reference interpreter ran it; quotes the node's `.kir` line."""


class FrontendError(KilnError):
    """A model could not be imported for a reason other than unsupported ops."""


class DimExpressionError(KilnError):
    """A dim expression the runtime cannot evaluate: text outside the dim grammar, an
    unbound symbol, a division by zero or a non-integer result. Names the expression."""


class ArtifactError(KilnError):
    """A `.kiln` artifact, its plan or its kernel library is unreadable, corrupt, foreign,
    from a newer format, or inconsistent. Names the file (and the member or plan field)."""


class RuntimeInputError(KilnError):
    """An input handed to a compiled model does not match its signature (count, name,
    dtype, shape, device, or a symbolic dim bound differently elsewhere). Names the input."""


class KernelError(KilnError):
    """A compiled kernel failed while the runtime ran it. Names the kernel, the step and
    the source it was compiled from."""


class CodegenError(KilnError):
    """A node could not be turned into a kernel; names the node and the reason."""


class PipelineError(KilnError):
    """A pass pipeline is malformed or misused: a syntax error in its spec, an unknown
    pass or option, a badly typed option value, a missing required pass. Names the
    pass (`pass_name`) and option, and lists the valid ones."""

    def __init__(self, message: str, *, pass_name: str | None = None, option: str | None = None):
        self.pass_name, self.option = pass_name, option
        super().__init__(message)


class ExportError(KilnError):
    """A graph could not be exported (to ONNX or MLIR) for a reason other than
    unsupported ops: a missing tool, or a tool that rejected the model. Names the step."""
