"""The torch frontend: an `nn.Module` (through torch.export) or an `ExportedProgram`
becomes a kiln `Graph`.

    import_model(model, example_inputs, dynamic_dims={"input_ids": {0: "batch", 1: "seq"}})
      -> torch.export.export(strict=False), Dim.DYNAMIC on each declared axis: the
         training IR (ATen before autograd: composite ops, in-place ops)
      -> `decomposition_reasons(ep)`: empty when the importer converts the graph as it
         is (every op has a handler, nothing observes a mutation); else
         ep.run_decompositions() (seconds: it retraces the program): core ATen, but
         every composite op that has a handler in `aten.CONVERTERS` (linear, matmul,
         layer_norm, rms_norm, SDPA, conv2d, ...) is kept whole
      -> placeholders: user inputs become graph inputs, torch's s0, s1 become
         "batch", "seq"; parameters, buffers and lifted constants become
         `Graph.add_constant`s, by reference, named by their state-dict names
      -> each call_function node the output depends on -> its handler in
         `aten.CONVERTERS` (an in-place op that decomposition_reasons let through: its
         functional op's; a wrap_with_set_grad_enabled call: its body's nodes); SymInt
         arithmetic (sym_size, s0*s1) becomes dim expressions, never nodes
      -> verify, return

Every unsupported op, and every unsupported argument of a known op, is collected
and reported at once in an `UnsupportedOpsError`. Imports torch and kiln.ir only.
"""
from __future__ import annotations

import inspect
import operator
import os
import re
from typing import Any, Mapping

import ml_dtypes
import numpy as np
import sympy
import torch
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ..errors import FrontendError, KilnError, UnsupportedOpsError
from ..ir import Graph, TensorType, Value, symbolic, verify
from ..ir.symbolic import Dim as KilnDim
from .aten import CONVERTERS, SKIPPED, Emitter, Unsupported, to_kiln_dtype

DynamicDims = Mapping["str | int", Mapping[int, str]]

__all__ = ["decomposition_reasons", "import_model"]


def import_model(model: "torch.nn.Module | ExportedProgram", example_inputs: Any = None,
                 dynamic_dims: DynamicDims | None = None) -> Graph:
    """Import `model` as a kiln graph.

    `example_inputs` (a tensor, a tuple of positional inputs, or a dict of keyword
    inputs) is needed to export an `nn.Module`. `dynamic_dims` maps an input name
    (or position) to `{axis: "symbol"}`; axes that share a symbol share a size.
    """
    if isinstance(model, ExportedProgram):
        ep, name, training = model, "main", False
    elif isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise FrontendError(f"importing the nn.Module {type(model).__name__} needs "
                                "example_inputs to export it with")
        ep, dynamic_dims = _export(model, example_inputs, dynamic_dims or {})
        name = type(model).__name__
        training = any(m.training for m in model.modules() if isinstance(
            m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._NormBase)))
    else:
        raise FrontendError(f"import_model takes an nn.Module or an ExportedProgram, "
                            f"got {type(model).__name__}")
    if decomposition_reasons(ep):
        table = torch.export.default_decompositions()
        for op in CONVERTERS:   # keep the composite ops kiln has as first-class ops
            if isinstance(op, torch._ops.OpOverload) and op in table:
                del table[op]
        ep = ep.run_decompositions(table)
    what = f"torch model {name}" + (" (its dropout/batch-norm layers are in training mode: "
                                    "call model.eval() first?)" if training else "")
    graph = _Importer(ep, name, dynamic_dims or {}, what).run()
    verify(graph)
    return graph


# --- export ---------------------------------------------------------------------------------
def _export(model: torch.nn.Module, example_inputs: Any, dynamic_dims: DynamicDims
            ) -> tuple[ExportedProgram, DynamicDims]:
    """Export with `Dim.DYNAMIC` on each declared axis (torch raises if the code needs
    it static; kiln gives axes that share a symbol one name); returns the program and
    `dynamic_dims` keyed by input name."""
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) \
            else (example_inputs,)
        kwargs = {}
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        raise FrontendError(f"example_inputs do not fit {type(model).__name__}.forward: {e}") \
            from None
    # one name per input: a parameter's name; *args give `args_0`, `args_1`, ... (as in
    # torch's placeholders); inputs caught by **kwargs cannot be dynamic (torch.export)
    names: list[str] = []
    for param in inspect.signature(model.forward).parameters.values():
        if param.name not in bound.arguments or param.kind is param.VAR_KEYWORD:
            continue
        count = len(bound.arguments[param.name]) if param.kind is param.VAR_POSITIONAL else 0
        names += [f"{param.name}_{i}" for i in range(count)] or [param.name]
    specs: dict[str, Any] = {}
    by_name: dict[str, Mapping[int, str]] = {}
    for key, axes in dynamic_dims.items():
        arg = names[key] if isinstance(key, int) and 0 <= key < len(names) else key
        if arg not in names:
            raise FrontendError(f"dynamic_dims names input {key!r}, but "
                                f"{type(model).__name__}.forward was given inputs {names}"
                                " (inputs caught by **kwargs cannot be dynamic)")
        for symbol in axes.values():
            if not isinstance(symbol, str) or not symbolic.SYMBOL_NAME.match(symbol):
                raise FrontendError(f"dynamic_dims[{key!r}]: {symbol!r} is not a symbol name")
        by_name[arg] = axes
        specs[arg] = {axis: Dim.DYNAMIC for axis in axes}
    dynamic_shapes: dict[str, Any] | None = None
    if specs:
        dynamic_shapes = {}
        for param, value in bound.arguments.items():
            dynamic_shapes[param] = None
            if isinstance(value, tuple) and f"{param}_0" in names:
                dynamic_shapes[param] = tuple(specs.get(f"{param}_{i}") for i in range(len(value)))
            elif param in names:
                dynamic_shapes[param] = specs.get(param)
    try:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=False)
    except Exception as e:
        raise FrontendError(f"torch.export failed for {type(model).__name__}"
                            f"{f' with dynamic_dims {dict(dynamic_dims)}' if specs else ''}: "
                            f"{type(e).__name__}: {e}") from e
    return ep, by_name


# --- whether to decompose ------------------------------------------------------------------
_SET_GRAD_ENABLED = torch.ops.higher_order.wrap_with_set_grad_enabled
_SCALARS = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)
# composite ops whose result is always a new tensor (a composite op's schema does not say
# whether it returns its input: dropout in eval mode does)
_NEW_TENSOR_COMPOSITES = frozenset(getattr(torch.ops.aten, n).default for n in (
    "linear", "conv1d", "conv2d", "conv3d", "batch_norm", "layer_norm"))


def decomposition_reasons(ep: ExportedProgram) -> list[str]:
    """Why `ep` must go through `run_decompositions` before the importer reads it, one
    reason per op or mutation (empty: the importer converts the graph as it is). It
    must when an op has no handler in `aten.CONVERTERS` (and is no size arithmetic, no
    torch check in `SKIPPED`), or when a mutation could be seen: a mutation in the
    graph signature, or an in-place op other than one that only updates a new tensor
    nobody else reads (`x = conv(...); x += y`), which is converted as its functional op.
    `wrap_with_set_grad_enabled` bodies are checked as part of the graph."""
    reasons = [f"{spec.kind.name} {spec.target or spec.arg}"
               for spec in ep.graph_signature.output_specs if spec.kind != OutputKind.USER_OUTPUT]
    reasons += [f"input kind {spec.kind.name}" for spec in ep.graph_signature.input_specs
                if spec.kind not in (InputKind.USER_INPUT, InputKind.PARAMETER,
                                     InputKind.BUFFER, InputKind.CONSTANT_TENSOR)]
    return reasons + _graph_reasons(ep.graph)


def _graph_reasons(graph: torch.fx.Graph) -> list[str]:
    reasons: list[str] = []
    for node in graph.nodes:
        target = node.target
        if node.op in ("placeholder", "output") or target in SKIPPED or target in CONVERTERS:
            continue
        if node.op == "get_attr":
            if not all(u.target is _SET_GRAD_ENABLED for u in node.users):
                reasons.append(f"get_attr {target}")
        elif node.op != "call_function":
            reasons.append(f"{node.op} {target}")
        elif target is _SET_GRAD_ENABLED:
            body = _body(node).graph
            outputs = next(n for n in body.nodes if n.op == "output").args[0]
            reasons += _graph_reasons(body) + [
                f"{_op_name(target)} returning a non-tensor" for o in outputs if not _is_tensor(o)]
        elif isinstance(node.meta.get("val"), _SCALARS):
            continue   # size arithmetic
        elif (functional := _in_place(target)) is not None:
            if functional not in CONVERTERS or not _updates_a_new_tensor(node):
                reasons.append(f"{_op_name(target)} (in place)")
        else:
            reasons.append(_op_name(target))
    return reasons


def _in_place(target: Any) -> Any:
    """The functional op of an in-place op (`aten.add_.Tensor` -> `aten.add.Tensor`),
    else None."""
    if not isinstance(target, torch._ops.OpOverload) or not target._schema.arguments:
        return None
    name = target._schema.name.split("::")[-1]
    first = target._schema.arguments[0].alias_info
    if not name.endswith("_") or first is None or not first.is_write:
        return None
    packet = getattr(getattr(torch.ops, target.namespace), name[:-1], None)
    return getattr(packet, target._overloadname, None)


def _updates_a_new_tensor(node: torch.fx.Node) -> bool:
    """Whether in-place `node` updates a tensor made by an op that returns new memory,
    read by nothing but `node`, with operands of its dtype (so the functional op
    computes in the same dtype): then the functional op gives the same values."""
    target = node.args[0]
    if not isinstance(target, torch.fx.Node) or target.op != "call_function" or \
            len(target.users) != 1 or not _is_tensor(target):
        return False
    op = target.target
    new = op in _NEW_TENSOR_COMPOSITES or (
        isinstance(op, torch._ops.OpOverload) and _in_place(op) is None and
        not op.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd) and
        all(r.alias_info is None for r in op._schema.returns))
    dtype = target.meta["val"].dtype
    return new and all(a.meta["val"].dtype == dtype for a in node.all_input_nodes
                       if _is_tensor(a))


def _body(node: torch.fx.Node) -> torch.fx.GraphModule:
    """The body graph module of a higher-order op call such as wrap_with_set_grad_enabled."""
    return getattr(node.graph.owning_module, node.args[1].target)


# --- symbols --------------------------------------------------------------------------------
_SYMPY_FUNCS = {"FloorDiv": lambda a, b: sympy.floor(a / b), "CleanDiv": lambda a, b: a / b,
                "IntTrueDiv": lambda a, b: a / b, "CeilToInt": sympy.ceiling,
                "FloorToInt": sympy.floor, "Mod": sympy.Mod, "PythonMod": sympy.Mod,
                "Max": sympy.Max, "Min": sympy.Min}


class _Dims:
    """torch's shape-env symbols as kiln dims: `s77*s70` -> `"batch*seq"`."""

    def __init__(self) -> None:
        self.names: dict[sympy.Symbol, str] = {}   # torch symbol -> kiln symbol
        self._cache: dict[sympy.Expr, KilnDim] = {}

    def __call__(self, size: Any) -> KilnDim:
        if isinstance(size, bool):
            raise Unsupported(f"bool {size} where a size is expected")
        if isinstance(size, (int, np.integer)):
            return int(size)
        if not isinstance(size, torch.SymInt):
            raise Unsupported(f"{size!r} where an int size is expected")
        constant = size.node.maybe_as_int()
        if constant is not None:
            return constant
        expr = size.node.expr
        env = size.node.shape_env
        if env is not None:
            expr = env.replace(expr)
        if expr not in self._cache:
            if any(s not in self.names for s in expr.free_symbols):
                raise Unsupported(f"data-dependent size {expr}")
            self._cache[expr] = symbolic.from_expr(self._convert(expr))
        return self._cache[expr]

    def _convert(self, e: sympy.Expr) -> sympy.Expr:
        if e.is_Integer or e.is_Rational:
            return e
        if e.is_Symbol:
            return sympy.Symbol(self.names[e], integer=True, positive=True)
        args = [self._convert(a) for a in e.args]
        if isinstance(e, (sympy.Add, sympy.Mul, sympy.Pow)):
            return e.func(*args)
        if type(e).__name__ in _SYMPY_FUNCS:
            return _SYMPY_FUNCS[type(e).__name__](*args)
        raise Unsupported(f"symbolic size {e} ({type(e).__name__})")


# --- source locations -----------------------------------------------------------------------
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n?( +\S.*)?')
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _frames(node: torch.fx.Node) -> list[tuple[str, str, str, str]]:
    trace = node.meta.get("stack_trace") or ""
    return [(m.group(1), m.group(2), m.group(3), (m.group(4) or "").strip())
            for m in _FRAME.finditer(trace)]


def _user_frame(node: torch.fx.Node) -> tuple[str, str, str, str] | None:
    """The innermost frame torch recorded outside torch itself (else the innermost)."""
    frames = _frames(node)
    outside = [f for f in frames if not (f[0].startswith(_TORCH_DIR) or f[0].startswith("torch/")
                                         or f[0].startswith("<eval_with_key"))]
    return (outside or frames or [None])[-1]


def source_of(node: torch.fx.Node) -> str | None:
    """`file.py:LINE in fn` for a node, or None when torch recorded no stack."""
    frame = _user_frame(node)
    return None if frame is None else f"{os.path.basename(frame[0])}:{frame[1]} in {frame[2]}"


def _place(node: torch.fx.Node) -> str:
    """A node's place for the unsupported-ops list: the location and its code line."""
    frame = _user_frame(node)
    if frame is None:
        return f"<no source recorded> (fx node {node.name})"
    return f"{frame[0]}:{frame[1]} in {frame[2]}" + (f": {frame[3]}" if frame[3] else "")


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", str(target))


# --- the import -----------------------------------------------------------------------------
def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing `t`'s memory (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.device.type != "cpu":
        raise FrontendError(f"tensor on {t.device}: kiln imports CPU tensors; move the model "
                            "to the CPU first")
    to_kiln_dtype(t.dtype)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _is_tensor(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and isinstance(node.meta.get("val"), torch.Tensor)


class _Importer:
    def __init__(self, ep: ExportedProgram, name: str, dynamic_dims: DynamicDims, what: str):
        self.ep, self.dynamic_dims, self.what = ep, dynamic_dims, what
        self.graph = Graph(name)
        self.dims = _Dims()
        self.values: dict[torch.fx.Node, Any] = {}
        self.poisoned: set[torch.fx.Node] = set()
        self.unsupported: dict[str, list[str]] = {}
        self.live = _live(ep.graph)

    def run(self) -> Graph:
        placeholders = [n for n in self.ep.graph.nodes if n.op == "placeholder"]
        specs = {s.arg.name: s for s in self.ep.graph_signature.input_specs
                 if hasattr(s.arg, "name")}
        user = [n for n in placeholders if specs[n.name].kind == InputKind.USER_INPUT]
        self._name_symbols(user)
        for node in placeholders:
            self._placeholder(node, specs[node.name])
        for node in self.ep.graph.nodes:
            if node.op == "call_function" and node in self.live:
                self._call(node)
            elif node.op == "output":
                self._outputs(node)
        if self.unsupported:
            raise UnsupportedOpsError(self.what, self.unsupported)
        return self.graph

    def _name_symbols(self, user: list[torch.fx.Node]) -> None:
        """Map torch's symbols to the dynamic_dims names (the rest keep torch's names)."""
        by_position = {i: n for i, n in enumerate(user)}
        for key, axes in self.dynamic_dims.items():
            node = by_position.get(key) if isinstance(key, int) else \
                next((n for n in user if n.name == key), None)
            if node is None or not _is_tensor(node):
                raise FrontendError(f"dynamic_dims names input {key!r}, but the program's "
                                    f"tensor inputs are {[n.name for n in user if _is_tensor(n)]}")
            shape = node.meta["val"].shape
            for axis, symbol in axes.items():
                size = shape[axis] if -len(shape) <= axis < len(shape) else None
                if not isinstance(size, torch.SymInt) or not size.node.expr.is_Symbol:
                    raise FrontendError(f"input {node.name} axis {axis} was declared dynamic "
                                        f"({symbol!r}), but torch made it {size}: the model's "
                                        "code needs that size to be static")
                self.dims.names.setdefault(size.node.expr, symbol)
        for node in user:
            if _is_tensor(node):
                for size in node.meta["val"].shape:
                    if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                        self.dims.names.setdefault(size.node.expr, str(size.node.expr))

    def _type(self, meta: torch.Tensor) -> TensorType:
        return TensorType(tuple(self.dims(d) for d in meta.shape), to_kiln_dtype(meta.dtype))

    def _placeholder(self, node: torch.fx.Node, spec: Any) -> None:
        if spec.kind == InputKind.TOKEN or (node not in self.live and
                                            spec.kind != InputKind.USER_INPUT):
            return   # an effect token, or an unused weight (BatchNorm's num_batches_tracked)
        if spec.kind == InputKind.USER_INPUT:
            if _is_tensor(node):
                try:
                    self.values[node] = self.graph.add_input(node.name,
                                                             self._type(node.meta["val"]))
                except Unsupported as e:
                    self._record(f"input {node.name} ({e})", node)
            return
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = self.ep.state_dict.get(spec.target)
            if tensor is None:
                tensor = self.ep.constants[spec.target]
            try:
                array = numpy_view(tensor)
            except Unsupported as e:
                self._record(f"constant {spec.target} ({e})", node)
                return
            self.values[node] = self.graph.add_constant(spec.target, array)
            return
        self._record(f"input kind {spec.kind.name} ({node.name})", node)

    def _record(self, key: str, node: torch.fx.Node) -> None:
        self.unsupported.setdefault(key, []).append(_place(node))
        self.poisoned.add(node)

    def _call(self, node: torch.fx.Node) -> None:
        target, meta = node.target, node.meta.get("val")
        if target in SKIPPED:
            return
        if target is _SET_GRAD_ENABLED:
            self._inline(node)
            return
        poisoned = any(n in self.poisoned for n in node.all_input_nodes)
        if target not in CONVERTERS and _in_place(target) in CONVERTERS:
            # decomposition_reasons let it through: it updates a tensor nobody else reads
            target = _in_place(target)
        if target not in CONVERTERS:
            if isinstance(meta, _SCALARS):
                try:   # size arithmetic: resolved where it is used, unless data-dependent
                    if isinstance(meta, torch.SymInt) and not poisoned:
                        self.dims(meta)
                    return
                except Unsupported:
                    pass
            if target is torch.ops.higher_order.with_effects:   # an op with side effects
                target = node.args[1]
            self._record(_op_name(target), node)
            return
        if poisoned:
            self.poisoned.add(node)
            return
        emitter = Emitter(self.graph, node, self.values, self.dims, source_of(node))
        try:
            args, kwargs = _bind(node)
            result = CONVERTERS[target](emitter, *args, **kwargs)
            self._check(node, result)
        except Unsupported as e:
            name = _op_name(node.args[0].target) if target is operator.getitem else \
                _op_name(target)
            self._record(f"{name} ({e})", node)
            return
        except KilnError as e:
            raise FrontendError(f"importing fx node {node.format_node()} "
                                f"(from {source_of(node)}): {e}") from e
        self.values[node] = result

    def _inline(self, node: torch.fx.Node) -> None:
        """wrap_with_set_grad_enabled(enabled, body, *operands): the grad mode changes no
        value at inference, so the body's nodes are imported in its place; the call's
        value is the tuple of the body's outputs."""
        body = _body(node).graph
        operands, live = iter(node.args[2:]), _live(body)
        for inner in body.nodes:
            if inner.op == "placeholder":
                operand = next(operands)
                if operand in self.poisoned:
                    self.poisoned.add(inner)
                elif operand in self.values:
                    self.values[inner] = self.values[operand]
            elif inner.op == "call_function" and inner in live:
                self._call(inner)
            elif inner.op == "output":
                outputs = inner.args[0]
                if any(o in self.poisoned or o not in self.values for o in outputs):
                    self.poisoned.add(node)
                else:
                    self.values[node] = tuple(self.values[o] for o in outputs)

    def _check(self, node: torch.fx.Node, result: Any) -> None:
        """Each kiln value must have the type torch recorded: else the handler is wrong."""
        meta = node.meta.get("val")
        pairs = zip(result, meta) if isinstance(result, tuple) else [(result, meta)]
        for value, m in pairs:
            if not isinstance(value, Value):
                continue
            expected = self._type(m)
            same = value.type.dtype == expected.dtype and value.type.rank == expected.rank and \
                all(a == b or symbolic.equal(a, b) for a, b in zip(value.type.shape,
                                                                   expected.shape))
            if not same:
                raise FrontendError(f"importing fx node {node.format_node()}: kiln made "
                                    f"{value.type} but torch has {expected}")

    def _outputs(self, node: torch.fx.Node) -> None:
        outputs = []
        for spec, arg in zip(self.ep.graph_signature.output_specs, node.args[0]):
            if spec.kind == OutputKind.TOKEN:
                continue
            if spec.kind != OutputKind.USER_OUTPUT:
                kind = spec.kind.name.lower().replace("_mutation", "").replace("_", " ")
                self._record(f"in-place update of {kind} {spec.target}",
                             arg if isinstance(arg, torch.fx.Node) else node)
            elif not _is_tensor(arg):
                raise FrontendError(f"output {spec.arg} is not a tensor ({arg!r}); kiln "
                                    "graphs return tensors")
            elif arg not in self.poisoned and arg in self.values:
                outputs.append(self.values[arg])
        self.graph.set_outputs(outputs)


def _live(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The nodes the graph's output depends on (torch's training IR keeps dead code,
    such as the unused masks of transformers' attention; decomposing drops it)."""
    live: set[torch.fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def _bind(node: torch.fx.Node) -> tuple[list, dict]:
    """The node's arguments in its schema's order, defaults filled in: positional
    arguments as a list, keyword-only ones as a dict."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return list(node.args), dict(node.kwargs)
    args, kwargs = [], {}
    for i, a in enumerate(target._schema.arguments):
        if not a.kwarg_only and i < len(node.args):
            value = node.args[i]
        elif a.name in node.kwargs:
            value = node.kwargs[a.name]
        else:
            value = a.default_value if a.has_default_value() else None
        if a.kwarg_only:
            kwargs[a.name] = value
        else:
            args.append(value)
    return args, kwargs
