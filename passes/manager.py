"""The pass manager: passes registered by name, pipeline specs, and the instruments
(verification, IR dumps) that run around every pass.

A pass is a frozen dataclass whose fields are its options; its first docstring line
is its summary; `run` edits the graph in place and returns a `PassReport`:

    @register_pass
    @dataclass(frozen=True)
    class Fuse(Pass):
        \"\"\"Fuse elementwise chains and GEMM epilogues into groups.\"\"\"
        name: ClassVar[str] = "fuse"
        requires: ClassVar[tuple[str, ...]] = ("canonicalize",)
        max_group: int = 16

        def run(self, graph: Graph) -> PassReport:
            ...
            return PassReport(changed=n > 0, counts={"groups": n})

A pipeline is a spec string, one pass after another (`parse_pipeline`):

    pipeline ::= [step ("," step)*]
    step     ::= NAME ["(" [option ("," option)*] ")"]
    option   ::= NAME "=" value            (NAME: the field; '-' may stand for '_')
    value    ::= INT | FLOAT | "true" | "false" | WORD | STRING (a JSON string)

    PassManager("canonicalize,fuse(max_group=16),plan").run(graph) -> [PassReport, ...]

The manager times every pass into its report, and runs its instruments before and
after each one: `VerifyInstrument` (on by default: a broken graph raises a
`VerifyError` naming the pass) and `DumpIRInstrument` (`{i:02d}_{pass}_before.kir` /
`_after.kir` plus weights, readable by `kiln.ir.load`). Passes never print.

Imports kiln.ir and kiln.errors only.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..errors import KilnError, PipelineError, VerifyError
from ..ir import Graph, save, verify

# The pipeline `kiln.compile(passes=None)` runs: one list, in order.
DEFAULT_PIPELINE = ",".join([
    "canonicalize",
    "block_layout",
    "winograd",
    "pack_weights",
    "fuse",
    "plan",
])

OPTION_TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class PassReport:
    """What one pass did. The pass fills `changed`, `counts` and `notes`; the manager
    fills `name` and `seconds`. `str(report)` is one line:
    `fuse: groups=12 nodes_fused=40 (0.03 s)`."""
    changed: bool
    counts: dict[str, int | float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    name: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        counts = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in self.counts.items())
        what = counts or ("changed" if self.changed else "no change")
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{self.name or '?'}: {what} ({self.seconds:.2f} s){notes}"


class Pass:
    """Base class of every pass; subclasses are frozen dataclasses (see the module
    docstring) registered with `register_pass`."""
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: Graph) -> PassReport:
        raise NotImplementedError(f"pass {type(self).__name__} does not define run()")

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def options(cls) -> dict[str, tuple[type, Any]]:
        """Option name -> (type, default)."""
        hints = typing.get_type_hints(cls)
        return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}

    def spec(self) -> str:
        """This pass as a pipeline step: its name, and the options that differ from
        their defaults (`fuse(max_group=8)`)."""
        changed = [f"{k}={_format_value(getattr(self, k))}"
                   for k, (_, default) in self.options().items() if getattr(self, k) != default]
        return f"{self.name}({','.join(changed)})" if changed else self.name


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make `cls` available to pipelines under `cls.name`."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise PipelineError(f"pass class {cls.__name__} needs a ClassVar `name` of lowercase "
                            f"letters, digits and '_', got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Pass) and dataclasses.is_dataclass(cls)
            and cls.__dataclass_params__.frozen):
        raise PipelineError(f"pass {name!r} ({cls.__name__}) must be a frozen dataclass "
                            "subclassing kiln.passes.manager.Pass")
    if name in _PASSES and _PASSES[name] is not cls:
        raise PipelineError(f"pass {name!r} is registered twice ({_PASSES[name].__name__} "
                            f"and {cls.__name__})")
    for option, (kind, default) in cls.options().items():
        if kind not in OPTION_TYPES:
            raise PipelineError(f"pass {name!r} option {option!r}: options are int, float, "
                                f"bool or str, not {kind}")
        if default is dataclasses.MISSING:
            raise PipelineError(f"pass {name!r} option {option!r} needs a default")
    _PASSES[name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """Pass name -> class, for every registered pass."""
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type[Pass]:
    try:
        return _PASSES[name]
    except KeyError:
        raise PipelineError(f"unknown pass {name!r}; the passes are: "
                            f"{', '.join(sorted(_PASSES)) or 'none'}", pass_name=name) from None


# --- the pipeline spec --------------------------------------------------------------------
_TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<punct>[(),=])
                        |(?P<word>[^\s(),="]+))""", re.VERBOSE)
_INT = re.compile(r"[-+]?\d+")


@dataclass(frozen=True)
class _Token:
    kind: str     # "string", "punct", "word" or "end"
    text: str
    column: int   # 1-based


class _SpecParser:
    """One method per grammar rule of the module docstring."""

    def __init__(self, spec: str):
        self.spec = spec
        self.tokens = self._tokenize(spec)
        self.i = 0

    def _tokenize(self, spec: str) -> list[_Token]:
        out, pos = [], 0
        while spec[pos:].strip():
            m = _TOKEN.match(spec, pos)
            if not m:
                raise PipelineError(f"pipeline {spec!r}: unterminated string at column "
                                    f"{pos + 1 + len(spec[pos:]) - len(spec[pos:].lstrip())}")
            out.append(_Token(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) + 1))
            pos = m.end()
        return out + [_Token("end", "", len(spec) + 1)]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += min(1, len(self.tokens) - 1 - self.i)
        return tok

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def error(self, tok: _Token, expected: str) -> PipelineError:
        got = "the end" if tok.kind == "end" else repr(tok.text)
        return PipelineError(f"pipeline {self.spec!r}: expected {expected} at column "
                             f"{tok.column}, got {got}")

    def expect(self, text: str, expected: str) -> _Token:
        tok = self.next()
        if tok.kind != "punct" or tok.text != text:
            raise self.error(tok, expected)
        return tok

    def parse_pipeline(self) -> list[Pass]:
        """pipeline ::= [step ("," step)*]"""
        if self.peek().kind == "end":
            return []
        steps = [self.parse_step()]
        while self.peek().kind != "end":
            self.expect(",", "',' between passes")
            steps.append(self.parse_step())
        return steps

    def parse_step(self) -> Pass:
        """step ::= NAME ["(" [option ("," option)*] ")"]"""
        tok = self.next()
        if tok.kind != "word":
            raise self.error(tok, "a pass name")
        cls = get_pass(tok.text)
        options: dict[str, Any] = {}
        if self.peek().text == "(" and self.peek().kind == "punct":
            self.next()
            if self.peek().text != ")":
                self.parse_option(cls, options)
                while self.peek().text == "," and self.peek().kind == "punct":
                    self.next()
                    self.parse_option(cls, options)
            self.expect(")", f"',' or ')' in the options of {cls.name}")
        return cls(**options)

    def parse_option(self, cls: type[Pass], options: dict[str, Any]) -> None:
        """option ::= NAME "=" value"""
        key = self.next()
        if key.kind != "word":
            raise self.error(key, f"an option of {cls.name}")
        self.expect("=", f"'=' after {key.text}")
        value = self.next()
        if value.kind not in ("word", "string"):
            raise self.error(value, f"a value for {key.text}")
        option = key.text.replace("-", "_")
        if option in options:
            raise PipelineError(f"pipeline {self.spec!r}: option {key.text!r} of pass "
                                f"{cls.name!r} is given twice", pass_name=cls.name, option=key.text)
        options[option] = _convert(cls, key.text, value)


def parse_pipeline(spec: str) -> list[Pass]:
    """The passes of a spec such as `"canonicalize,fuse(max_group=16),plan"`, as
    instances (an empty spec is an empty pipeline). Raises `PipelineError` for a syntax
    error, an unknown pass, an unknown option or a value of the wrong type, naming it
    and listing what is valid."""
    return _SpecParser(spec).parse_pipeline()


def _convert(cls: type[Pass], key: str, token: _Token) -> Any:
    """The token's value as the option's type, or a PipelineError naming both."""
    options = cls.options()
    option = key.replace("-", "_")
    if option not in options:
        valid = ", ".join(f"{k}: {t.__name__} = {_format_value(d)}"
                          for k, (t, d) in options.items()) or "none"
        raise PipelineError(f"pass {cls.name!r} has no option {key!r}; its options are: {valid}",
                            pass_name=cls.name, option=key)
    kind, _ = options[option]
    if kind is str:
        return json.loads(token.text) if token.kind == "string" else token.text
    text = token.text
    if token.kind == "word":
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is int and _INT.fullmatch(text):
            return int(text)
        if kind is float:
            try:
                return float(text)
            except ValueError:
                pass
    raise PipelineError(f"pass {cls.name!r} option {key!r} takes a {kind.__name__}, got {text}",
                        pass_name=cls.name, option=key)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[^\s(),=\"]+", value) else json.dumps(value)
    return repr(value)


def format_pipeline(passes: Sequence[Pass]) -> str:
    """The spec string of `passes` (parses back to equal passes)."""
    return ",".join(p.spec() for p in passes)


# --- instruments ------------------------------------------------------------------------------
class PassInstrument:
    """Hooks around every pass; timing, verification and dumps are instruments, not
    pass code. `index` is the pass's position in the pipeline (0-based)."""

    def run_before_pass(self, index: int, pass_: Pass, graph: Graph) -> None:
        pass

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, report: PassReport) -> None:
        pass


@dataclass
class VerifyInstrument(PassInstrument):
    """Verify the graph after each pass; a broken graph raises a `VerifyError` that
    names the pass (and, with dumps on, where its input was written)."""
    pipeline: str = ""

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, report: PassReport) -> None:
        try:
            verify(graph)
        except VerifyError as e:
            raise VerifyError(f"pass {pass_.name!r} (step {index + 1} of pipeline "
                              f"{self.pipeline!r}) left an invalid graph: {e}",
                              node=e.node, rule=e.rule) from e


@dataclass
class DumpIRInstrument(PassInstrument):
    """Write the graph before and after each pass into `folder` as
    `{i:02d}_{pass}_before.kir` / `_after.kir` (weights beside each, as `ir.save`
    does), plus `pipeline.txt`: the input of `kiln.ir.load` and a reproducer."""
    folder: Path
    pipeline: str = ""
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "pipeline.txt").write_text(self.pipeline + "\n", encoding="utf-8")
        except OSError as e:
            raise KilnError(f"cannot write IR dumps into {self.folder}: {e.strerror}") from None

    def _dump(self, index: int, pass_: Pass, graph: Graph, when: str) -> None:
        path = self.folder / f"{index:02d}_{pass_.name}_{when}.kir"
        save(graph, path)
        self.written.append(path)

    def run_before_pass(self, index: int, pass_: Pass, graph: Graph) -> None:
        self._dump(index, pass_, graph, "before")

    def run_after_pass(self, index: int, pass_: Pass, graph: Graph, report: PassReport) -> None:
        self._dump(index, pass_, graph, "after")


# --- the manager --------------------------------------------------------------------------
class PassManager:
    """Runs a pipeline over a graph, in place: `PassManager(spec).run(graph)` returns
    one `PassReport` per pass, each with its time."""

    def __init__(self, pipeline: str | Sequence[Pass], *, verify: bool = True,
                 dump_ir: Path | str | None = None,
                 instruments: Sequence[PassInstrument] = ()):
        self.passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise PipelineError(f"a pipeline holds Pass instances, not {p!r}")
        self.pipeline = format_pipeline(self.passes)
        _check_requires(self.passes, self.pipeline)
        self.instruments: list[PassInstrument] = []
        if verify:
            self.instruments.append(VerifyInstrument(self.pipeline))
        if dump_ir is not None:
            self.instruments.append(DumpIRInstrument(Path(dump_ir), self.pipeline))
        self.instruments.extend(instruments)

    def run(self, graph: Graph) -> list[PassReport]:
        reports = []
        for index, pass_ in enumerate(self.passes):
            for instrument in self.instruments:
                instrument.run_before_pass(index, pass_, graph)
            start = time.perf_counter()
            try:
                report = pass_.run(graph)
            except Exception as e:
                e.add_note(f"while running pass {pass_.spec()!r} (step {index + 1} of pipeline "
                           f"{self.pipeline!r}) on graph {graph.name}")
                raise
            seconds = time.perf_counter() - start
            if not isinstance(report, PassReport):
                raise PipelineError(f"pass {pass_.name!r} returned {type(report).__name__}, "
                                    "not a PassReport", pass_name=pass_.name)
            report = dataclasses.replace(report, name=pass_.name, seconds=seconds)
            for instrument in self.instruments:
                instrument.run_after_pass(index, pass_, graph, report)
            reports.append(report)
        return reports

    def __repr__(self) -> str:
        return f"PassManager({self.pipeline!r})"


def _check_requires(passes: Sequence[Pass], pipeline: str) -> None:
    seen: set[str] = set()
    for p in passes:
        missing = [r for r in p.requires if r not in seen]
        if missing:
            raise PipelineError(f"pipeline {pipeline!r}: pass {p.name!r} requires "
                                f"{', '.join(map(repr, missing))} to run before it",
                                pass_name=p.name)
        seen.add(p.name)


def run_pipeline(graph: Graph, pipeline: str | Sequence[Pass] = DEFAULT_PIPELINE,
                 **options: Any) -> list[PassReport]:
    """`PassManager(pipeline, **options).run(graph)`."""
    return PassManager(pipeline, **options).run(graph)
