"""Workload files (TOML): a user's workloads, or the report workloads shipped
in the package, read and checked before anything runs, sweeps expanded."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import EinlocalError

__all__ = ["Workload", "WorkloadFileError", "load", "parse", "shape_text", "derive_reduced", "KEYS", "FLOAT_DTYPES"]

REDUCED_RANGE = 3             # derived reduced shapes: each output index's range cut to this
REDUCED_TERMS = 200_000       # ... and the float64 loops' work (the product of every range) at most this

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# every key a [[workload]] table may hold -> what it must be
KEYS = {
    "id": "a non-empty string, unique in the file",
    "op": "the name of a catalogue op",
    "statement": "an index-notation statement (el.Op)",
    "pad": "0 (reads outside an operand are zeros) or absent",
    "shapes": "a table of operand name -> list of ints or names",
    "params": "a table of the op's parameters (values may be names)",
    "dtype": f"one of {', '.join(FLOAT_DTYPES)}",
    "values": "a table of name -> int (the value of a name used in shapes or params)",
    "sweep": "a table of name -> non-empty list of ints (one run per value; several names: their product)",
    "quick": "a table of name -> int (the values --quick uses)",
    "reduced": "a table of operand name -> list of ints (small shapes for the check against the float64 loops)",
    "peers": "a list of peer names",
    "title": "a string",
    "report": "an int",
}


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    `op`: a catalogue op's name, or None with `statement` (and `pad`) for an
    ``el.Op``; `shapes`: operand -> shape (a catalogue op's x, weight, bias in
    the layouts of docs/ops.md; a statement's operands by name); `params`:
    the op's keyword parameters; `reduced`: shapes (same params) small enough
    for the float64 loops reference ({} where the file gives none); `quick`:
    {"shapes", "params"} that ``--quick`` times instead, or None (it times the
    workload as written); `peers`: peer names (`einlocal.peers`); `sweep_of`,
    `sweep`: the file's workload id and the swept values this one runs.
    """

    id: str
    report: int
    op: str | None
    shapes: dict
    params: dict = field(default_factory=dict)
    dtype: str = "float32"
    peers: tuple = ()
    reduced: dict = field(default_factory=dict)
    title: str = ""
    statement: str | None = None
    pad: int | None = None
    sweep_of: str | None = None
    sweep: dict | None = None
    quick: dict | None = None

    def op_fn(self):
        """The op object: a catalogue op, or the ``el.Op`` of the statement."""
        if self.statement is not None:
            from .op import Op
            return Op(self.statement, pad=self.pad)
        from .catalogue import CATALOGUE
        return CATALOGUE[self.op]

    @property
    def op_name(self) -> str:
        """The catalogue op's name, or the statement as einlocal writes it."""
        return self.op or self.op_fn().name

    def sized(self, reduced: bool = False) -> "Workload":
        """This workload at its reduced shapes (reduced=True) or as is."""
        if not reduced or not self.reduced:
            return self
        return replace(self, shapes=dict(self.reduced), title=self.title + " (reduced)", quick=None)

    def quick_sized(self) -> "Workload":
        """What ``--quick`` times: the file's `quick` values, else the workload as written."""
        if not self.quick:
            return self
        return replace(self, shapes=dict(self.quick["shapes"]), params=dict(self.quick["params"]), quick=None,
                       title=f"{self.title} (quick: {shape_text(self.quick['shapes'])})")

    def batch_divided(self, k: int) -> "Workload":
        """This workload with its batch (x axis 0) divided by ``k`` (at least 1)."""
        if k <= 1 or "x" not in self.shapes or self.shapes["x"][0] <= 1:
            return self
        x = self.shapes["x"]
        n = max(1, x[0] // k)
        return replace(self, shapes={**self.shapes, "x": (n, *x[1:])}, title=f"{self.title} (batch {n} of {x[0]})")

    @property
    def shape(self) -> str:
        return shape_text(self.shapes)

    def elements(self) -> int:
        """Elements of the first operand (the problem size)."""
        return math.prod(next(iter(self.shapes.values())))


def shape_text(shapes: dict) -> str:
    """'x(100,16,28,28) w(16,16,3,3,26,26)' from a shapes dict."""
    short = {"weight": "w", "bias": "b"}
    return " ".join(f"{short.get(k, k)}({','.join(str(d) for d in v)})" for k, v in shapes.items() if v is not None)


class WorkloadFileError(EinlocalError):
    """A workload file that cannot be used: it names the file, the workload, the key and what was expected."""


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:       # Python 3.10
        import tomli as tomllib
    return tomllib


def load(path: str | Path) -> list:
    """The workloads of a TOML file (`einlocal.workloads.Workload`s, sweeps expanded)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise WorkloadFileError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        data = _tomllib().loads(text)
    except ValueError as e:
        raise WorkloadFileError(f"{path}: not valid TOML: {e}") from None
    return parse(data, str(path))


def parse(data: dict, where: str = "<workloads>") -> list:
    tables = data.get("workload")
    if not isinstance(tables, list) or not tables:
        raise WorkloadFileError(f"{where}: expected one or more [[workload]] tables, found "
                                f"{'none' if tables is None else type(tables).__name__}")
    extra = sorted(set(data) - {"workload"})
    if extra:
        raise WorkloadFileError(f"{where}: unknown top-level key {extra[0]!r}; a workload file holds [[workload]] "
                                f"tables")
    out, seen = [], set()
    for k, table in enumerate(tables):
        wid = table.get("id") if isinstance(table, dict) else None
        label = f"{where}: workload {wid!r}" if isinstance(wid, str) and wid else f"{where}: workload #{k + 1}"
        if not isinstance(table, dict):
            raise WorkloadFileError(f"{label}: expected a table")
        if not isinstance(wid, str) or not wid.strip():
            raise WorkloadFileError(f"{label}: key 'id': expected {KEYS['id']}")
        if wid in seen:
            raise WorkloadFileError(f"{label}: key 'id': {wid!r} is used twice; expected {KEYS['id']}")
        seen.add(wid)
        out.extend(_one(table, label))
    return out


def _bad(label: str, key: str, got=None, expected: str | None = None) -> WorkloadFileError:
    shown = "" if got is None else f", got {got!r}"
    return WorkloadFileError(f"{label}: key {key!r}: expected {expected or KEYS[key]}{shown}")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _names_in(value) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple)):
        return set().union(*(_names_in(v) for v in value)) if value else set()
    return set()


def _subst(value, env: dict):
    if isinstance(value, str):
        return env[value]
    if isinstance(value, list):
        return tuple(_subst(v, env) for v in value)
    return value


def _one(t: dict, label: str) -> list:
    from .catalogue import CATALOGUE
    unknown = sorted(set(t) - set(KEYS))
    if unknown:
        raise WorkloadFileError(f"{label}: unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    if ("op" in t) == ("statement" in t):
        raise WorkloadFileError(f"{label}: give exactly one of 'op' (a catalogue op: {', '.join(CATALOGUE)}) "
                                f"and 'statement' (an el.Op statement)")
    if "op" in t and t["op"] not in CATALOGUE:
        raise _bad(label, "op", t["op"], f"one of {', '.join(CATALOGUE)}")
    if "statement" in t and not isinstance(t["statement"], str):
        raise _bad(label, "statement", t["statement"])
    if "pad" in t and ("statement" not in t or t["pad"] != 0):
        raise _bad(label, "pad", t["pad"], "0 with a 'statement' (catalogue ops take padding= in params)")
    op = CATALOGUE[t["op"]] if "op" in t else _statement_op(t, label)
    shapes = t.get("shapes")
    if not isinstance(shapes, dict) or not shapes:
        raise _bad(label, "shapes", shapes)
    for name, dims in shapes.items():
        if name not in op.arg_names:
            raise _bad(label, "shapes", name, f"operand names of {op.name}: {', '.join(op.arg_names)}")
        if not isinstance(dims, list) or not all(_int(d) or isinstance(d, str) for d in dims):
            raise _bad(label, "shapes", {name: dims}, "a list of ints or names for each operand")
    params = t.get("params", {})
    if not isinstance(params, dict):
        raise _bad(label, "params", params)
    dtype = t.get("dtype", "float32")
    if dtype not in FLOAT_DTYPES:
        raise _bad(label, "dtype", dtype)
    values, sweep, quick = (_int_table(t, key, label) for key in ("values", "sweep", "quick"))
    names = _names_in(list(shapes.values())) | set().union(*(_names_in(v) for v in params.values() if
                                                             isinstance(v, list)))
    names |= {v for v in params.values() if isinstance(v, str) and v in set(values) | set(sweep)}
    both = sorted(set(values) & set(sweep))
    if both:
        raise _bad(label, "sweep", both[0], "a name that is not also given in 'values'")
    missing = sorted(names - set(values) - set(sweep))
    if missing:
        raise WorkloadFileError(f"{label}: key 'shapes': name {missing[0]!r} has no value; expected it in 'values' "
                                f"or 'sweep'")
    for key, table in (("values", values), ("sweep", sweep), ("quick", quick)):
        unused = sorted(set(table) - names)
        if unused:
            raise _bad(label, key, unused[0], "a name used in 'shapes' or 'params'")
    reduced = t.get("reduced")
    if reduced is not None and (not isinstance(reduced, dict) or set(reduced) != set(shapes) or not all(
            isinstance(v, list) and all(_int(d) for d in v) for v in reduced.values())):
        raise _bad(label, "reduced", reduced, f"a list of ints for each operand ({', '.join(shapes)})")
    peers = t.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise _bad(label, "peers", peers)
    spec = {"op": t.get("op"), "statement": t.get("statement"), "pad": t.get("pad"), "dtype": dtype,
            "peers": tuple(peers), "title": str(t.get("title", "")), "report": int(t.get("report", 0)),
            "reduced": {k: tuple(v) for k, v in (reduced or {}).items()}}
    out = []
    for combo in itertools.product(*(sweep[n] for n in sweep)) if sweep else [()]:
        point = dict(zip(sweep, combo))
        env = {**values, **point}
        wid = t["id"] if not point else f"{t['id']}[{','.join(f'{k}={v}' for k, v in point.items())}]"
        full = _resolve(op, shapes, params, env, label)
        fast = _resolve(op, shapes, params, {**env, **quick}, f"{label} (quick)") if quick else None
        if reduced:
            _bind(op, {k: tuple(v) for k, v in reduced.items()}, full[1], f"{label}: key 'reduced'")
            small = spec["reduced"]
        else:                      # einlocal's own small shapes, so every workload is checked
            small = derive_reduced(op, full[0], full[1]) or {}
        out.append(Workload(wid, spec["report"], spec["op"], full[0], full[1], dtype, spec["peers"],
                            small, spec["title"], statement=spec["statement"], pad=spec["pad"],
                            sweep_of=t["id"] if point else None, sweep=point or None,
                            quick=None if fast is None else {"shapes": fast[0], "params": fast[1]}))
    return out


def _statement_op(t: dict, label: str):
    from .op import Op
    try:
        return Op(t["statement"], pad=t.get("pad"))
    except EinlocalError as e:
        raise WorkloadFileError(f"{label}: key 'statement': {e}") from None


def _int_table(t: dict, key: str, label: str) -> dict:
    table = t.get(key, {})
    if not isinstance(table, dict):
        raise _bad(label, key, table)
    for name, v in table.items():
        ok = (isinstance(v, list) and v and all(_int(e) and e > 0 for e in v)) if key == "sweep" else \
            (_int(v) and v > 0)
        if not ok:
            raise _bad(label, key, {name: v})
    return dict(table)


def _resolve(op, shapes: dict, params: dict, env: dict, label: str) -> tuple[dict, dict]:
    concrete = {k: _subst(v, env) for k, v in shapes.items()}
    kw = {k: (_subst(v, env) if isinstance(v, list) or (isinstance(v, str) and v in env) else v)
          for k, v in params.items()}
    _bind(op, concrete, kw, f"{label}: key 'shapes'")
    return concrete, kw


def _bind(op, shapes: dict, params: dict, label: str) -> None:
    """Bind the op to these shapes now, so a file that cannot run fails before anything runs."""
    from .arrays import Shaped
    try:
        op.bind_arrays({k: Shaped(v) for k, v in shapes.items()}, dict(params))
    except (EinlocalError, TypeError) as e:
        raise WorkloadFileError(f"{label}: {e}") from None


def derive_reduced(op, shapes: dict, params: dict) -> dict | None:
    """Small shapes for the check against the float64 loops, where a workload
    gives none: each output index of the bound statement cut to a range of
    `REDUCED_RANGE` (an operand axis read at ``a*t + ...`` loses ``|a|`` per step
    cut, so the padding at both ends stays as it was), mapped back to the
    public arguments (whose axes group the statement's).  None where the
    result does not bind with the same parameters, or stays too big."""
    from .arrays import Shaped
    from .errors import EinlocalError
    try:
        call = op.bind_arrays({k: Shaped(v) for k, v in shapes.items()}, dict(params))
    except (EinlocalError, TypeError):
        return None
    plan = call.plan
    out_names = list(plan.stmt.out.names)
    # cut all output indices; where that does not bind (an index a parameter fixes: groups), keep one at a time
    for keep in [None, *out_names]:
        cut = {n: min(plan.range[n], REDUCED_RANGE) for n in out_names if n != keep}
        reduced = _cut_shapes(call, cut)
        if reduced is None:
            continue
        try:
            small = op.bind_arrays({k: Shaped(v) for k, v in reduced.items()}, dict(params))
        except (EinlocalError, TypeError):
            continue
        if math.prod(small.plan.range.values()) <= REDUCED_TERMS:
            return reduced
    return None


def _cut_shapes(call, cut: dict) -> dict | None:
    stmt_shapes = {}
    for access in call.plan.stmt.operands:
        dims = []
        for ax, size in zip(access.axes, call.plan.shape[access.name]):
            if ax.alone is not None:
                dims.append(cut.get(ax.alone, size))
            else:
                dims.append(size - sum(abs(a) * (call.plan.range[n] - cut[n]) for n, a in ax.terms if n in cut))
        if min(dims) < 1:
            return None
        stmt_shapes[access.name] = dims
    public = dict(call.arg_shapes)
    out = {}
    for arg, name, stmt_shape in call.operands:
        groups = _groups(public[arg], stmt_shape)
        if groups is None:
            return None
        new = stmt_shapes[name]
        out[arg] = tuple(math.prod(new[a:b]) for a, b in groups)
    if call.bias is not None and call.bias[0] in public:       # the bias follows the output's channels and sizes
        out[call.bias[0]] = tuple(public[call.bias[0]])
        return _bias_shape(call, out, cut)
    return out


def _bias_shape(call, out: dict, cut: dict) -> dict | None:
    """A bias shaped like the cut output where it broadcasts against it (its size-1 axes stay 1)."""
    name, bshape = call.bias
    out_names = call.plan.stmt.out.names
    new_out = [cut.get(n, call.plan.range[n]) for n in out_names]
    full = [s if s == 1 else new_out[k] for k, s in enumerate(bshape)]
    groups = _groups(dict(call.arg_shapes)[name], bshape)
    if groups is None:
        return None
    out[name] = tuple(math.prod(full[a:b]) for a, b in groups)
    return out


def _groups(public: tuple, stmt: tuple) -> list[tuple[int, int]] | None:
    """How the statement's axes group into the public argument's: each public axis is the
    product of a run of statement axes (size-1 statement axes join a neighbour)."""
    groups, k = [], 0
    for size in public:
        start, prod = k, 1
        while k < len(stmt) and (prod < size or (prod == size and k < len(stmt) and stmt[k] == 1 and
                                                 len(groups) == len(public) - 1)):
            prod *= stmt[k]
            k += 1
        if prod != size:
            return None
        groups.append((start, k))
    if k != len(stmt):
        extra = stmt[k:]
        if any(d != 1 for d in extra) or not groups:
            return None
        groups[-1] = (groups[-1][0], len(stmt))
    return groups
