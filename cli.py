"""The `kiln` command (entry point `kiln = "kiln.cli:main"`).

    kiln ir MODEL [-o OUT.kir] [--dynamic INPUT:AXIS=SYMBOL ...] [--no-locations]
        print a model's IR: MODEL is a .py file with a model factory, a .pt2
        ExportedProgram, or a .kir file (weights from the .safetensors beside it)
    kiln check FILE.kir
        parse and verify; print a one-line summary, or the error and exit 1
    kiln compile MODEL -o OUT.kiln [--target cpu] [--dynamic batch | INPUT:AXIS=SYMBOL ...]
                 [--passes SPEC] [--dump-ir DIR] [--report] [--cache-dir DIR|off]
        compile to a deployable artifact, showing each stage and its time; --report
        prints what each pass did
    kiln tune MODEL [--db FILE.json] [--rounds N] [--retune] [--passes SPEC]
        measure the kernel templates' candidate knobs on each contraction of MODEL
        (after the passes) and record the fastest in the tuning database (default:
        the host CPU's, checked in under kiln/codegen/tvm/tuning/)
    kiln run OUT.kiln --input NAME=FILE.npy ... [--output-dir DIR]
        run an artifact through the runtime
    kiln inspect OUT.kiln
        signature, plan, kernels, member sizes and peak memory of an artifact
    kiln export-onnx GRAPH.kir -o OUT.onnx
        export a graph whose ops all have ONNX equivalents
    kiln export-mlir GRAPH.kir -o OUT.mlir [--dialect torch|linalg]
        export through ONNX and torch-mlir's ONNX importer (torch dialect), lowered
        to linalg-on-tensors by default

Kiln errors print as one message (with file:line:col for parse errors) on stderr
and exit with status 1, without a Python traceback. torch is imported only by
commands that read a torch model, so `kiln check` works without it.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from .errors import FrontendError, KilnError
from .ir import Graph, load, print_graph, save, verify

app = typer.Typer(name="kiln", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False,
                  help="kiln: an ahead-of-time graph compiler for deep-learning models.")


@app.callback()
def _root() -> None:
    """kiln: an ahead-of-time graph compiler for deep-learning models."""


def _reports_kiln_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Print a KilnError as `error: <message>` on stderr and exit 1 (no traceback)."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except KilnError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
    return run


# --- kiln ir ---------------------------------------------------------------------------------
_DYNAMIC = re.compile(r"^(?P<input>[^:=]+):(?P<axis>-?\d+)=(?P<symbol>[A-Za-z_][A-Za-z0-9_]*)$")
TORCH_SUFFIXES = (".py", ".pt2")


_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALL_INPUTS = "*"   # key of a bare `--dynamic batch`: axis 0 of every input


def parse_dynamic(specs: list[str]) -> dict[str | int, dict[int, str]]:
    """`["x:0=batch", "x:1=seq", "1:0=batch"]` -> `{"x": {0: "batch", 1: "seq"}, 1: {0: "batch"}}`
    (an all-digit INPUT is a position); a bare `batch` means axis 0 of every input."""
    out: dict[str | int, dict[int, str]] = {}
    for spec in specs:
        if _SYMBOL.match(spec.strip()):
            out.setdefault(ALL_INPUTS, {})[0] = spec.strip()
            continue
        m = _DYNAMIC.match(spec.strip())
        if not m:
            raise typer.BadParameter(f"{spec!r} is neither SYMBOL (axis 0 of every input, e.g. "
                                     "batch) nor INPUT:AXIS=SYMBOL (e.g. x:0=batch)",
                                     param_hint="--dynamic")
        name = m["input"]
        key: str | int = int(name) if name.isdigit() else name
        out.setdefault(key, {})[int(m["axis"])] = m["symbol"]
    return out


def _load_factory(path: Path, factory: str) -> tuple[Any, Any, dict]:
    """Run `factory()` from the Python file `path`: returns (module, example_inputs,
    dynamic_dims)."""
    spec = importlib.util.spec_from_file_location(f"_kiln_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FrontendError(f"{path}: cannot import this file as Python")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))   # let the file import its neighbours
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    make = getattr(module, factory, None)
    if not callable(make):
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and not n.startswith("_") and
                       v.__module__ == module.__name__)
        raise FrontendError(f"{path}: no function {factory}() (functions here: "
                            f"{', '.join(found) or 'none'}); pick one with --factory NAME")
    result = make()
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise FrontendError(f"{path}: {factory}() must return (module, example_inputs) or "
                            f"(module, example_inputs, dynamic_dims), got "
                            f"{type(result).__name__}")
    model, inputs = result[0], result[1]
    dims = dict(result[2] or {}) if len(result) == 3 else {}
    return model, inputs, dims


def _import_torch(path: Path, factory: str, dynamic: dict) -> Graph:
    try:
        from .frontend.torch import import_model
    except ImportError as e:
        raise FrontendError(f"reading {path} needs torch and kiln.frontend.torch: {e}") from None
    if path.suffix == ".pt2":
        import torch
        log = logging.getLogger("torch.export")   # it logs a traceback before raising
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001  torch raises many kinds for a bad archive
            raise FrontendError(f"cannot load the ExportedProgram {path}: "
                                f"{type(e).__name__}: {e}") from None
        finally:
            log.setLevel(level)
        names = [s.arg.name for s in program.graph_signature.input_specs
                 if s.kind.name == "USER_INPUT"]
        return import_model(program, None, _expand_all_inputs(dynamic, range(len(names))) or None)
    model, inputs, dims = _load_factory(path, factory)
    keys = list(inputs) if isinstance(inputs, dict) else \
        range(len(inputs) if isinstance(inputs, (tuple, list)) else 1)
    for key, axes in _expand_all_inputs(dynamic, keys).items():        # --dynamic adds to (and overrides) the factory's
        dims[key] = {**dict(dims.get(key, {})), **axes}
    return import_model(model, inputs, dims or None)


def _expand_all_inputs(dynamic: dict, keys) -> dict:
    """Replace a bare `--dynamic SYMBOL` entry by axis 0 of each input in `keys`."""
    dynamic = dict(dynamic)
    every = dynamic.pop(ALL_INPUTS, None)
    if every:
        for key in keys:
            dynamic[key] = {**every, **dynamic.get(key, {})}
    return dynamic


def read_model(path: Path, *, factory: str = "make_model",
               dynamic: dict | None = None) -> Graph:
    """A kiln graph from a .kir, .onnx, .pt2 or .py file."""
    if not path.exists():
        raise KilnError(f"{path}: no such file")
    if path.suffix in TORCH_SUFFIXES:
        return _import_torch(path, factory, dynamic or {})
    if dynamic:
        raise KilnError(f"--dynamic applies to torch models (.py, .pt2), not to {path}")
    if path.suffix == ".onnx":
        from .frontend.onnx import import_model as import_onnx
        return import_onnx(path)
    if path.suffix != ".kir":
        raise KilnError(f"{path}: kiln reads .kir, .onnx, .pt2 and .py models "
                        f"(not {path.suffix or 'files without a suffix'})")
    return load(path)


# the options `kiln ir` and `kiln compile` share
ModelArg = Annotated[Path, typer.Argument(
    metavar="MODEL", show_default=False,
    help="A .py file with a model factory, a .pt2 ExportedProgram, an .onnx model, or a "
         ".kir file.")]
DynamicOpt = Annotated[list[str], typer.Option(
    "--dynamic", metavar="SYMBOL|INPUT:AXIS=SYMBOL",
    help="Make an axis symbolic (repeatable): INPUT:AXIS=SYMBOL with INPUT a name or a "
         "position (x:0=batch), or a bare SYMBOL for axis 0 of every input (batch).")]
FactoryOpt = Annotated[str, typer.Option(
    "--factory", metavar="NAME",
    help="The function of a .py MODEL that returns (module, example_inputs[, dynamic_dims]).")]


@app.command("ir")
@_reports_kiln_errors
def ir_command(
    model: ModelArg,
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="OUT.kir",
                                          help="Write OUT.kir and its weights OUT.safetensors "
                                               "instead of printing."),
    dynamic: DynamicOpt = [],
    factory: FactoryOpt = "make_model",
    no_locations: bool = typer.Option(False, "--no-locations",
                                      help="Leave out loc(...) source locations."),
) -> None:
    """Print a model's kiln IR (.kir text)."""
    graph = read_model(model, factory=factory, dynamic=parse_dynamic(dynamic))
    verify(graph)
    if output is None:
        typer.echo(print_graph(graph, locations=not no_locations), nl=False)
        return
    if output.suffix != ".kir":
        output = output.with_name(output.name + ".kir")
    output.parent.mkdir(parents=True, exist_ok=True)
    save(graph, output, locations=not no_locations)
    weights = f" and {output.with_suffix('.safetensors')}" if graph.constants else ""
    typer.echo(f"wrote {output}{weights}")


# --- kiln check ------------------------------------------------------------------------------
def summary(graph: Graph) -> str:
    """`name: N nodes, K ops (op xN, ...); (inputs) -> (outputs)` on one line."""
    counts = Counter(n.op for n in graph.nodes)
    ops = ", ".join(f"{op} x{c}" for op, c in sorted(counts.items()))
    sig = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    outs = ", ".join(f"%{v.name}: {v.type}" for v in graph.outputs)
    return (f"{graph.name}: {len(graph.nodes)} nodes, {len(counts)} ops ({ops}); "
            f"({sig}) -> ({outs})")


@app.command("check")
@_reports_kiln_errors
def check_command(
    file: Path = typer.Argument(..., metavar="FILE.kir", show_default=False,
                                help="A .kir file; its weights are read from the .safetensors "
                                     "file beside it."),
) -> None:
    """Parse and verify a .kir file; print a one-line summary."""
    if not file.exists():
        raise KilnError(f"{file}: no such file")
    graph = load(file)
    verify(graph)
    typer.echo(f"ok {summary(graph)}")


# --- kiln compile ----------------------------------------------------------------------------
@app.command("compile")
@_reports_kiln_errors
def compile_command(
    model: ModelArg,
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT.kiln",
                                help="The artifact to write."),
    target: str = typer.Option("cpu", "--target", help="What to compile for (cpu)."),
    dynamic: DynamicOpt = [],
    factory: FactoryOpt = "make_model",
    passes: Optional[str] = typer.Option(
        None, "--passes", metavar="SPEC",
        help="The pass pipeline, e.g. 'canonicalize,fuse(max_group=16),plan' "
             "(default: kiln.passes.manager.DEFAULT_PIPELINE; '' runs none)."),
    dump_ir: Optional[Path] = typer.Option(
        None, "--dump-ir", metavar="DIR",
        help="Write the IR before and after each pass into DIR as .kir files."),
    report: bool = typer.Option(False, "--report", help="Print what each pass did."),
    cache_dir: Optional[str] = typer.Option(
        None, "--cache-dir", metavar="DIR",
        help="The kernel cache folder (default: $KILN_CACHE_DIR, else "
             "~/.cache/kiln/kernels); 'off' compiles every kernel afresh."),
) -> None:
    """Compile a model ahead of time into a .kiln artifact."""
    from rich.console import Console

    from .compiler import compile as compile_model
    from .passes.manager import parse_pipeline
    if passes is not None:
        parse_pipeline(passes)   # a bad spec fails before the (slow) import
    console = Console(stderr=True, highlight=False)
    total = time.perf_counter()
    with console.status("import") as status:
        def on_stage(name: str, seconds: float | None) -> None:
            if seconds is None:
                status.update(f"{name} ...")
            else:
                console.print(f"  [green]✓[/green] {name:<8} {seconds:7.2f} s")
        on_stage("import", None)
        start = time.perf_counter()
        graph = read_model(model, factory=factory, dynamic=parse_dynamic(dynamic))
        on_stage("import", time.perf_counter() - start)
        compiled = compile_model(graph, target=target, passes=passes, dump_ir=dump_ir,
                                 cache_dir=cache_dir, on_stage=on_stage)
        on_stage("save", None)
        start = time.perf_counter()
        output.parent.mkdir(parents=True, exist_ok=True)
        compiled.save(output)
        on_stage("save", time.perf_counter() - start)
    r = compiled.report
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) in "
                  f"{time.perf_counter() - total:.1f} s: {r.kernel_calls} kernel calls, "
                  f"{r.distinct_kernels} distinct kernels ({r.cache_hits} from the kernel "
                  f"cache)\nsignature {compiled.signature}",
                  markup=False)
    if report:
        for pass_report in r.passes:
            typer.echo(f"pass {pass_report}")
    if dump_ir is not None:
        console.print(f"IR dumps in {dump_ir}", markup=False)


# --- kiln tune --------------------------------------------------------------------------------
@app.command("tune")
@_reports_kiln_errors
def tune_command(
    model: ModelArg,
    db: Optional[Path] = typer.Option(
        None, "--db", metavar="FILE.json",
        help="The tuning database to update (default: $KILN_TUNING_DB, else the host "
             "CPU's database in kiln/codegen/tvm/tuning/)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Timed rounds per candidate."),
    retune: bool = typer.Option(False, "--retune",
                                help="Measure workloads the database already has, too."),
    passes: Optional[str] = typer.Option(
        None, "--passes", metavar="SPEC",
        help="The pass pipeline the model is compiled with (default: DEFAULT_PIPELINE)."),
    dynamic: DynamicOpt = [],
    factory: FactoryOpt = "make_model",
) -> None:
    """Tune a model's contraction kernels and record the results in the tuning database."""
    from .codegen.tvm import tuning
    from .codegen.tvm.tune import tune_graph
    from .passes.manager import DEFAULT_PIPELINE, PassManager
    manager = PassManager(DEFAULT_PIPELINE if passes is None else passes)
    graph = read_model(model, factory=factory, dynamic=parse_dynamic(dynamic))
    manager.run(graph)
    cpu = tuning.host_cpu()
    path = db or tuning.default_path(cpu)
    database = tuning.TuningDatabase.load(path, cpu)
    results = tune_graph(graph, database, rounds=rounds, retune=retune, log=typer.echo)
    database.save(path)
    changed = sum(1 for t in results if t.chosen != tuning.Knobs())
    typer.echo(f"wrote {path}: {len(results)} workloads measured on {cpu}, {changed} faster "
               f"than the heuristics; {len(database.records)} in the database")


# --- kiln run ---------------------------------------------------------------------------------
@app.command("run")
@_reports_kiln_errors
def run_command(
    artifact: Path = typer.Argument(..., metavar="OUT.kiln", show_default=False,
                                    help="A compiled .kiln artifact."),
    inputs: list[str] = typer.Option([], "--input", "-i", metavar="NAME=FILE.npy",
                                     help="An input as a .npy file (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", metavar="DIR",
                                              help="Write each output to DIR/NAME.npy."),
) -> None:
    """Run a .kiln artifact on .npy inputs through the runtime."""
    import numpy as np

    from .runtime.artifact import load as load_artifact
    feeds: dict[str, Any] = {}
    for spec in inputs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise typer.BadParameter(f"{spec!r} is not NAME=FILE.npy", param_hint="--input")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise KilnError(f"input {name}: cannot read {file}: {e}") from None
    loaded = load_artifact(artifact)
    start = time.perf_counter()
    outputs = loaded(**feeds)
    ms = 1e3 * (time.perf_counter() - start)
    for port, array in zip(loaded.signature.outputs, outputs):
        line = f"{port.name}: {array.dtype}{list(array.shape)}"
        if array.size and array.dtype.kind in "fiu":
            line += f" min {array.min():.6g} max {array.max():.6g} mean {array.mean():.6g}"
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            np.save(output_dir / f"{port.name}.npy", array)
            line += f" -> {output_dir / (port.name + '.npy')}"
        typer.echo(line)
    typer.echo(f"ran in {ms:.2f} ms (first call: includes buffer allocation)")


# --- kiln inspect -----------------------------------------------------------------------------
@app.command("inspect")
@_reports_kiln_errors
def inspect_command(
    artifact: Path = typer.Argument(..., metavar="OUT.kiln", show_default=False,
                                    help="A compiled .kiln artifact."),
    bind: list[str] = typer.Option([], "--bind", metavar="SYMBOL=N",
                                   help="Symbol values for the memory figures (default 1)."),
) -> None:
    """Show an artifact's signature, plan, kernels, sizes and peak memory."""
    from .passes.memory import memory_report
    from .runtime.artifact import load as load_artifact
    from .runtime.plan import Workspace
    loaded = load_artifact(artifact)
    plan, manifest = loaded.plan, loaded.manifest
    bindings = {s: 1 for s in plan.bindable_symbols()}
    for spec in bind:
        name, _, value = spec.partition("=")
        if not value.isdigit():
            raise typer.BadParameter(f"{spec!r} is not SYMBOL=N", param_hint="--bind")
        bindings[name] = int(value)
    typer.echo(f"artifact   {artifact} (kiln {loaded.kiln_version}, format "
               f"{manifest['format_version']}, target {loaded.target})")
    typer.echo(f"signature  {plan.signature}")
    for name, entry in manifest["members"].items():
        typer.echo(f"member     {name:<20} {entry['bytes']:>12,} bytes  sha256 "
                   f"{entry['sha256'][:16]}…")
    kernels = Counter(step.kernel for step in plan.steps)
    workspace = {step.kernel: step.workspace for step in plan.steps}
    typer.echo(f"plan       {len(plan.steps)} steps, {len(kernels)} distinct kernels, "
               f"{len(plan.constants)} constants, {plan.num_slots} memory slots")
    for kernel, count in sorted(kernels.items(), key=lambda kv: (-kv[1], kv[0])):
        scratch = workspace[kernel]
        typer.echo(f"  kernel   {kernel:<48} x{count}"
                   + (f"  workspace {scratch}" if scratch != Workspace() else ""))
    typer.echo(f"memory     {memory_report(plan, bindings)}")
    if "report" in manifest.get("extra", {}):
        typer.echo(f"compile    {manifest['extra']['report']}")


# --- kiln export-onnx / export-mlir ----------------------------------------------------------
GraphArg = Annotated[Path, typer.Argument(
    metavar="GRAPH", show_default=False,
    help="A .kir graph (weights from the .safetensors beside it), or any MODEL kiln ir reads.")]


@app.command("export-onnx")
@_reports_kiln_errors
def export_onnx_command(
    graph_file: GraphArg,
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT.onnx",
                                help="The ONNX model to write."),
) -> None:
    """Export a kiln graph to ONNX (every op must have an ONNX equivalent)."""
    from .export.onnx import save_onnx
    graph = read_model(graph_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = save_onnx(graph, output)
    typer.echo(f"wrote {output}: {len(model.graph.node)} ONNX nodes, opset "
               f"{model.opset_import[0].version}")


@app.command("export-mlir")
@_reports_kiln_errors
def export_mlir_command(
    graph_file: GraphArg,
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT.mlir",
                                help="The MLIR module to write."),
    dialect: str = typer.Option("linalg", "--dialect",
                                help="torch (torch-mlir's ONNX import) or linalg "
                                     "(lowered to linalg-on-tensors)."),
) -> None:
    """Export a kiln graph to MLIR through ONNX and torch-mlir's ONNX importer."""
    from .export.mlir import export_mlir
    graph = read_model(graph_file)
    text = export_mlir(graph, dialect=dialect)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    typer.echo(f"wrote {output} ({dialect} dialect, {len(text.splitlines())} lines)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
