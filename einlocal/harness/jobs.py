"""What the harness runs: a job (one backend or peer on one op and shape), its steps, and what a kill rules out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..table import PASSES, REGIMES

__all__ = ["Job", "Step", "Kill", "op_spec", "build_op", "split_shapes"]


def _frozen(v):
    """Lists (as JSON gives them back) as tuples, in dicts too: parameters compare and hash as given."""
    if isinstance(v, dict):
        return {k: _frozen(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v


@dataclass(frozen=True)
class Step:
    """One step of a job: a check at the reduced size (``pass_`` "reduced"), a
    warm-up call, or a timed pass in one regime and grad mode."""
    kind: str                       # "check", "warm", "time"
    pass_: str                      # "reduced", "forward", "backward", "forward+backward"
    regime: str | None = None
    grad_mode: str | None = None

    @property
    def key(self) -> tuple:
        return (self.kind, self.pass_, self.regime, self.grad_mode)

    @classmethod
    def of(cls, key) -> "Step":
        return cls(*key)

    def describe(self) -> str:
        """e.g. "time backward[vjp]"."""
        return f"{self.kind} {self.pass_}" + (f"[{self.grad_mode}]" if self.grad_mode else "")


@dataclass(frozen=True)
class Kill:
    """A step that did not finish: ``why`` is "killed" (past its deadline) or "crashed"."""
    step: Step
    why: str
    rc: int | None = None
    stderr: str = ""

    def rules_out(self, step: Step) -> bool:
        """Whether `step` cannot finish in time because this one did not: the reduced
        check rules out everything after it; forward is part of forward and
        forward+backward; backward[mode] of backward[mode] and forward+backward[mode]."""
        k = self.step
        if k.kind == "check":
            return True
        if k.pass_ == "forward":
            return step.pass_ in ("forward", "forward+backward") or step.kind == "check"
        if k.pass_ == "backward":
            return step.pass_ in ("backward", "forward+backward") and step.grad_mode == k.grad_mode
        return step.pass_ == "forward+backward" and step.grad_mode == k.grad_mode

    def to_json(self) -> dict:
        return {"step": list(self.step.key), "why": self.why, "rc": self.rc, "stderr": self.stderr}

    @classmethod
    def from_json(cls, d: dict) -> "Kill":
        return cls(Step.of(d["step"]), d["why"], d.get("rc"), d.get("stderr", ""))


@dataclass(frozen=True)
class Job:
    """One backend's (or peer's, ``backend`` "peer:<name>" with ``peer`` set) job:
    its op (`op_spec`), array shapes and parameters, and how to check and time it."""
    spec: dict
    shapes: dict
    params: dict
    backend: str
    passes: tuple = ("forward", "backward")
    regimes: tuple = ("fresh", "steady")
    grad_modes: tuple | None = None
    budget_s: float = 0.3
    cap_s: float = 20.0
    warmup: int = 1
    min_reps: int = 3
    dtype: str = "float32"
    memory: bool = True
    seed: int = 0
    check_shapes: dict | None = None        # reduced shapes: checked against the loops there first
    reference: str | None = None            # the full-size reference file (`references.reference_file`)
    workload: str | None = None
    roofline: dict | None = None
    peer: dict | None = None                # {"library", "path", "name", "op", ...} (`peerfile.load_peers`)
    note: str | None = None
    kill_margin_s: float = 15.0
    first_call_allowance_s: float = 0.0
    steady_max_s: float | None = None       # a pass slower than this a call fresh is not timed steady
    steady_grad_modes: tuple | None = None  # the grad modes timed steady (None: all)
    check_reference: str | None = None      # the reduced check's loops reference file, made once a run
    inputs_dir: str | None = None           # where the run's processes share input sets
    warm_up: bool = False                   # one untimed call per pass at the timed size before timing
    prune_over_cap: bool = False            # a warm-up past cap + margin after compiling rules its pass >cap
    arrays: str | None = None               # the library of its arrays (None: the first the backend takes)

    def __post_init__(self):
        for p in self.passes:
            if p not in PASSES:
                raise ValueError(f"benchmark: pass {p!r}, expected one of {PASSES}")
        for r in self.regimes:
            if r not in REGIMES:
                raise ValueError(f"benchmark: regime {r!r}, expected one of {REGIMES}")
        fix = object.__setattr__
        fix(self, "shapes", {k: tuple(v) for k, v in self.shapes.items() if v is not None})
        fix(self, "params", _frozen(dict(self.params)))
        for name in ("passes", "regimes", "grad_modes", "steady_grad_modes"):
            value = getattr(self, name)
            fix(self, name, None if value is None else tuple(value))
        if self.check_shapes:
            fix(self, "check_shapes", {k: tuple(v) for k, v in self.check_shapes.items() if v is not None})
        if self.peer is not None:
            fix(self, "peer", _frozen(dict(self.peer)))

    def replace(self, **changes) -> "Job":
        return dataclasses.replace(self, **changes)

    @property
    def library(self) -> str:
        """The array library whose process runs this job."""
        if self.peer:
            return self.peer["library"]
        from .. import registry
        return registry.process_of(self.backend) if self.backend in registry.NAMES else "numpy"

    @property
    def label(self) -> str:
        """The name its records carry: the backend's, with the library of its
        arrays where that is not the first it takes ("loops:numba[jax]")."""
        return self.backend if not self.arrays else f"{self.backend}[{self.arrays}]"

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, d: dict) -> "Job":
        return cls(**d)


def op_spec(op) -> dict:
    """A JSON description of `op` a child process can rebuild (`build_op`): the
    op's own ``spec()``, or a catalogue op's name."""
    from ..catalogue import CATALOGUE
    if isinstance(op, str) and op in CATALOGUE:
        return {"op": op}
    if hasattr(op, "spec") and hasattr(op, "bind_arrays"):
        return op.spec()
    raise TypeError(f"benchmark: op must be a catalogue op, its name ({', '.join(CATALOGUE)}) or an el.Op; got {op!r}")


def build_op(spec: dict):
    """The op `op_spec` describes."""
    from ..catalogue import CATALOGUE
    from ..op import Op
    if "op" in spec:
        return CATALOGUE[spec["op"]]
    return Op(spec["statement"], pad=0 if spec.get("pad") else None)


def split_shapes(spec: dict, shapes_and_params: dict) -> tuple[dict, dict]:
    """(array shapes, other parameters) from the keyword arguments."""
    names = build_op(spec).arg_names
    shapes = {k: tuple(v) for k, v in shapes_and_params.items() if k in names and v is not None}
    params = {k: v for k, v in shapes_and_params.items() if k not in names}
    return shapes, params
