"""The check harness (``el.check``, ``einlocal check``): every backend against
the float64 reference, forward and every gradient, on fresh random inputs.

- inputs: uniform in ±[0.5, 1.5], a new seed per call (printed on failure);
- ``out=`` poisoned with NaN for every backend that takes one, so a backend
  that skips an element or accumulates into ``out`` fails;
- tolerance: |got - ref| <= (K + 2) * eps(dtype) * scale + tiny, where
  ``scale`` is the statement run on |operands| (the sum of |terms|) and K the
  number of terms per element: the rounding bound of a K-term sum, so long
  reductions and values near zero are judged fairly; float32 is computed as
  float32 while a check runs (torch's TF32 switches off on a GPU);
- the reference's own VJP is checked against a directional finite difference
  <dy, (f(p + h t) - f(p - h t)) / 2h> = <vjp(dy), t>, exact for a
  multilinear op up to rounding.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from . import registry
from .check_large import large_reference
from .errors import EinlocalError, MemoryBudgetError
from .reference import reference_outputs, terms as _terms

__all__ = ["check", "CheckReport", "CheckRow", "random_inputs", "tolerance", "reference_outputs", "compare_parts"]

_EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps,
        "float16": np.finfo(np.float16).eps, "bfloat16": 2.0 ** -7}


@dataclass
class CheckRow:
    backend: str
    status: str                      # "pass", "fail", "skipped"
    errors: dict = field(default_factory=dict)   # "y", "dx[vjp]", ... -> error / tolerance
    reason: str = ""

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)


@dataclass
class CheckReport:
    op: str
    shapes: dict
    params: dict
    dtype: str
    seed: int
    rows: list
    reference_vjp_error: float = 0.0
    reference_note: str = ""         # how the reference was computed, where not by the pure-Python loops

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.rows) and self.reference_vjp_error <= 1.0

    @property
    def failures(self) -> list:
        return [r for r in self.rows if r.status == "fail"]

    def __str__(self) -> str:
        shapes = ", ".join(f"{k}={v}" for k, v in self.shapes.items())
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        lines = [f"check {self.op}({shapes}{', ' + params if params else ''}) {self.dtype}, seed={self.seed}",
                 f"reference VJP vs finite difference: {self.reference_vjp_error:.2g} of tolerance",
                 *([self.reference_note] if self.reference_note else []),
                 f"{'backend':<20} {'status':<8} {'worst err/tol':>13}  detail"]
        for r in self.rows:
            detail = r.reason or ", ".join(f"{k} {v:.2g}" for k, v in r.errors.items())
            worst = f"{r.worst:.3g}" if r.errors else "-"
            lines.append(f"{r.backend:<20} {r.status:<8} {worst:>13}  {detail}")
        if not self.ok:
            lines.append(f"FAILED: rerun with seed={self.seed} to reproduce")
        return "\n".join(lines)


def random_inputs(shapes: dict, dtype: str, seed: int) -> dict:
    """Values uniform in ±[0.5, 1.5]: no term is near zero, signs mix."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if shape is None:
            out[name] = None
            continue
        u = rng.uniform(-1.0, 1.0, size=shape)      # one draw: its sign is the value's, |u| + 0.5 its size
        u += np.copysign(0.5, u)
        out[name] = u if dtype in ("float64", "bfloat16") else u.astype(dtype)
    return out


def tolerance(scale: np.ndarray, terms: int, dtype: str) -> np.ndarray:
    """The rounding bound of a sum of ``terms`` products of magnitude sum
    ``scale``, computed in ``dtype`` (plus a tiny floor)."""
    eps = _EPS[dtype]
    return (terms + 2) * eps * scale + np.finfo(np.float64).tiny


def _op_parts(op, arrays: dict, params: dict):
    """(call, function to run a backend forward, vjp function) for any op
    (its binding interface)."""
    from .call import forward, vjp
    if not hasattr(op, "bind_arrays"):
        raise TypeError(f"el.check takes a catalogue op or an el.Op, got {op!r}")
    call = op.bind_arrays(arrays, params)

    def fwd(arr, **kw):
        return forward(call, arr, **kw)

    def bwd(dy, arr, **kw):
        return vjp(call, dy, arr, **{k: (tuple(v) if k == "out" and v is not None else v) for k, v in kw.items()})
    return call, fwd, bwd


def _reference_vjp_error(call, fwd, bwd, arrays: dict, dy, seed: int) -> float:
    """|<dy, directional derivative> - <vjp(dy), t>| / tolerance, by central
    differences (with one Richardson step) on the float64 reference."""
    rng = np.random.default_rng(seed + 1)
    names = [n for n in call.args if arrays.get(n) is not None]
    t = {n: rng.uniform(-1, 1, size=np.shape(arrays[n])) for n in names}
    def central(h):
        plus = {n: arrays[n] + h * t[n] for n in names}
        minus = {n: arrays[n] - h * t[n] for n in names}
        return np.sum(dy * (fwd(plus, backend="loops:python") - fwd(minus, backend="loops:python"))) / (2 * h)

    # along t the op is a polynomial of degree len(operands); Richardson's
    # step removes the h**2 term, exact up to degree 4
    h = 1e-3
    fd = (4 * central(h) - central(2 * h)) / 3
    grads = bwd(dy, arrays, backend="loops:python")
    an = sum(np.sum(g * t[n]) for n, g in zip(call.args, grads) if g is not None)
    scale = sum(np.sum(np.abs(g * t[n])) for n, g in zip(call.args, grads) if g is not None)
    tol = 1e-9 * max(scale, 1.0)   # central differences are exact for a quadratic; allow rounding
    return float(abs(fd - an) / tol)


def _compare(got, ref, scale, terms, dtype) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape}, expected {ref.shape}")
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - ref) / tolerance(scale, terms, dtype)))


def compare_parts(got, ref, scale, terms, dtype) -> tuple[float, float, float]:
    """(worst error / tolerance, that element's error, its tolerance)."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape}, expected {ref.shape}")
    if not np.all(np.isfinite(got)):
        return math.inf, math.inf, 0.0
    err = np.abs(got - ref)
    tol = tolerance(scale, terms, dtype)
    k = np.unravel_index(np.argmax(err / tol), err.shape) if err.size else ()
    return (float(err[k] / tol[k]), float(err[k]), float(tol[k])) if err.size else (0.0, 0.0, 0.0)


def check(op, *, backends=None, dtype: str = "float64", seed: int | None = None, grad_modes=None,
          device: str = "cpu", reference: dict | None = None, progress=None, reference_limit=None,
          library: str | None = None,
          **shapes_and_params) -> CheckReport:
    """Check backends on one op and shape against the float64 reference.

    ``op``: a catalogue op or an ``el.Op``; array arguments are given as
    shapes by name (``x=(2, 3, 8, 8), weight=(...)``), other keywords are
    the op's parameters.  ``backends``: names (default: every available
    one); unavailable ones and those that cannot take the op are rows
    marked skipped with the reason.  Above ``reference_limit``
    multiply-adds (default ``check_large.REFERENCE_LIMIT``) the reference is
    a fast float64 lowering that passed the pure-Python one at a batch of
    one (the report says so).  ``progress``: called with a line per step.
    ``library``: the array library each backend runs on (default: the first it takes;
    a backend that does not take it is skipped).  Returns a ``CheckReport``; ``.ok``.
    """
    from .arrays import shape_of
    from .backends.namespaces import namespace
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    arg_names = op.arg_names
    shapes = {k: v for k, v in shapes_and_params.items() if k in arg_names}
    params = {k: v for k, v in shapes_and_params.items() if k not in arg_names}
    arrays = random_inputs(shapes, "float64", seed)
    call, fwd, bwd = _op_parts(op, arrays, params)
    dy = random_inputs({"dy": call.out_shape}, "float64", seed + 2)["dy"]
    note = ""
    if reference is None:
        ref = large_reference(op, call, arrays, dy, seed, shapes, params, dtype, progress, reference_limit,
                              run_check=check, terms=_terms, eps=_EPS)
        if ref is not None:
            ref, vjp_err, note = ref
        else:
            ref, vjp_err = _reference_cached(op, seed, _freeze(shapes), _freeze(params))
    else:
        ref, vjp_err = reference, 0.0
    names = list(backends) if backends is not None else [n for n in registry.NAMES if n != "loops:python"]
    unavailable = registry.unavailable()
    rows = []
    for name in names:
        if name in unavailable:
            rows.append(CheckRow(name, "skipped", reason=unavailable[name]))
            continue
        b = registry.get(name)
        lib = library or b.takes[0]
        xp = namespace(lib)
        # the backend's own checks, the dtype included: a check runs the dtype it names, or skips
        reason = b.refuses(library=lib, device=device, dtype=dtype, plan=call.plan, call=call)
        if reason:
            rows.append(CheckRow(name, "skipped", reason=reason))
            continue
        conv = {n: (None if a is None else xp.from_numpy_as(a, dtype, device)) for n, a in arrays.items()}
        dy_l = xp.from_numpy_as(dy, dtype, device)
        row = CheckRow(name, "pass")
        if progress is not None:
            progress(f"{name} ...")
        try:
            with xp.full_precision():
                poison = None if xp.functional else xp.from_numpy_as(np.full(call.out_shape, np.nan), dtype, device)
                y = fwd(conv, backend=name, out=poison)
                _expect_kind(y, conv["x"] if "x" in conv else next(iter(conv.values())), call.out_shape, name)
                if poison is not None and y is not poison:
                    raise AssertionError("out= was given but a different array was returned")
                row.errors["y"] = _compare(xp.to_numpy(y), *ref["y"], dtype)
                for mode in (grad_modes or b.grad_modes(lib)):
                    if mode not in b.grad_modes(lib):
                        continue
                    outs = None
                    if not xp.functional and mode == "vjp":
                        outs = tuple(None if conv.get(n) is None else
                                     xp.from_numpy_as(np.full(shape_of(conv[n]), np.nan), dtype, device)
                                     for n in call.args)
                    grads = bwd(dy_l, conv, backend=name, grad=mode, out=outs)
                    for n, g in zip(call.args, grads):
                        if conv.get(n) is None:
                            continue
                        row.errors[f"d{n}[{mode}]"] = _compare(xp.to_numpy(g), *ref["d" + n], dtype)
        except MemoryBudgetError as e:
            rows.append(CheckRow(name, "skipped", reason=f"memory guard: {e}"))
            continue
        except (EinlocalError, AssertionError, RuntimeError, TypeError, ValueError) as e:
            row.status, row.reason = "fail", f"{type(e).__name__}: {e}"
        if row.status == "pass" and row.worst > 1.0:
            row.status = "fail"
        rows.append(row)
    return CheckReport(getattr(op, "name", str(op)), shapes, params, dtype, seed, rows, vjp_err, note)


def _freeze(d: dict):
    try:
        frozen = tuple(sorted((k, repr(v)) for k, v in d.items()))
        hash(frozen)
        return frozen, d
    except TypeError:
        return None, d


def _reference_cached(op, seed, shapes, params):
    """The float64 reference and its VJP check, once per op, shapes, params
    and seed in a process (they are pure functions of those)."""
    key = (id(op), seed, shapes[0], params[0])
    if shapes[0] is None or params[0] is None:
        return _reference(op, seed, shapes[1], params[1])
    hit = _REFERENCES.get(key)
    if hit is None or hit[0] is not op:
        hit = (op, _reference(op, seed, shapes[1], params[1]))
        _REFERENCES[key] = hit
        while len(_REFERENCES) > 64:
            _REFERENCES.pop(next(iter(_REFERENCES)))
    return hit[1]


_REFERENCES: dict = {}


def _reference(op, seed, shapes, params):
    arrays = random_inputs(shapes, "float64", seed)
    call, fwd, bwd = _op_parts(op, arrays, params)
    dy = random_inputs({"dy": call.out_shape}, "float64", seed + 2)["dy"]
    return reference_outputs(call, arrays, dy), _reference_vjp_error(call, fwd, bwd, arrays, dy, seed)


def _expect_kind(y, like, shape, name):
    from .arrays import device_of, dtype_name, library_of, shape_of
    for what, got, want in (("library", library_of(y), library_of(like)), ("dtype", dtype_name(y), dtype_name(like)),
                            ("device", device_of(y), device_of(like)), ("shape", shape_of(y), tuple(shape))):
        if got != want:
            raise AssertionError(f"{name} returned {what} {got}, expected {want}")
