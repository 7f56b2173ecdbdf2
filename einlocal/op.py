"""``el.Op``: a custom op from one index-notation statement (docs/statements.md)."""
from __future__ import annotations

from . import fast
from .arrays import shape_of
from .call import prepare, prepare_vjp
from .derive import backward, einsum_spec, write_conflicts
from .errors import ShapeError, SpecError
from .plan import bind
from .run import Call
from .spec import RESERVED, parse

__all__ = ["Op"]


class Op:
    """An op written as one statement, e.g.

        op = el.Op("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]")
        y = op(x=x, wt=wt)                  # ranges inferred
        grads = op.vjp(dy, x=x, wt=wt)      # {"x": dx, "wt": dwt}

    ``pad=0`` makes reads outside an array zero (and drops such writes)."""

    def __init__(self, statement: str, pad=None):
        if pad not in (None, 0):
            raise SpecError(f"pad must be 0 (zeros outside the arrays) or None (an error), got {pad!r}")
        self.statement = parse(statement)
        self.pad = pad == 0
        self._fast_name = ("Op", str(self.statement), self.pad)     # a repeat's key (two such Ops run alike)
        self._input_set = frozenset(self.statement.inputs)

    @property
    def einsum(self) -> str:
        """The einsum over window views, index names mapped to letters."""
        return einsum_spec(self.statement)

    @property
    def backward(self):
        """The derived backward statements, one per input, in input order."""
        return backward(self.statement)

    @property
    def conflicts(self):
        """The write-conflict analysis of each backward statement (unbound,
        so conservative); ``bind(...).backward`` gives the exact one."""
        return tuple(write_conflicts(s) for s in self.backward)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.statement.inputs

    # -- the binding interface every op offers (see `einlocal.catalogue.CatalogueOp`) --------
    @property
    def name(self) -> str:
        return str(self.statement)

    @property
    def arg_names(self) -> tuple[str, ...]:
        return self.statement.inputs

    def split(self, args: tuple, kwargs: dict) -> tuple[dict, dict]:
        """(arrays by operand name, {"sizes": ...}) from a call's arguments."""
        if args:
            raise TypeError(f"pass an Op's arrays by name, e.g. ({', '.join(f'{n}={n}' for n in self.inputs)})")
        arrays = {n: kwargs[n] for n in self.inputs if n in kwargs}
        params = {k: v for k, v in kwargs.items() if k not in arrays}
        extra = [k for k in params if k != "sizes"]
        if extra:
            raise TypeError(f"{self.statement} has no operand or parameter {extra[0]!r} "
                            f"(operands: {', '.join(self.inputs)}; parameter: sizes)")
        return arrays, params

    def bind_arrays(self, arrays: dict, params: dict) -> Call:
        return self._call(arrays, params.get("sizes"), None)

    def spec(self) -> dict:
        return {"statement": str(self.statement), "pad": self.pad}

    def call_with(self, arrays: dict, params: dict, **kw):
        """``self(...)`` with the arrays by name (the interface every op shares)."""
        return self(**{n: a for n, a in arrays.items() if a is not None}, **params, **kw)

    def vjp_with(self, dy, arrays: dict, params: dict, **kw) -> tuple:
        """``self.vjp(dy, ...)`` as a tuple of gradients in operand order."""
        grads = self.vjp(dy, **{n: a for n, a in arrays.items() if a is not None}, **params, **kw)
        return tuple(grads[n] for n in self.inputs)

    def bind(self, /, *, sizes=None, out_shape=None, **shapes):
        """The plan for these operand shapes (no arrays needed)."""
        return bind(self.statement, tuple((k, tuple(v)) for k, v in shapes.items()),
                    tuple(sorted((sizes or {}).items())), None if out_shape is None else tuple(out_shape), self.pad)

    def _call(self, arrays: dict, sizes, out) -> Call:
        names = self.statement.inputs
        missing = [n for n in names if arrays.get(n) is None]
        extra = [n for n in arrays if n not in names]
        if extra:
            raise ShapeError(f"{self.statement} has no operand {extra[0]!r} (operands: {', '.join(names)}; "
                             f"reserved keywords: {', '.join(sorted(RESERVED))})")
        if missing:
            raise ShapeError(f"operand {missing[0]!r} of {self.statement} is missing")
        for n in names:
            if not hasattr(arrays[n], "shape"):
                raise ShapeError(f"operand {n!r} must be an array, got {type(arrays[n]).__name__}")
        shapes = {n: shape_of(arrays[n]) for n in names}
        plan = self.bind(sizes=sizes, out_shape=None if out is None else shape_of(out), **shapes)
        return Call("op", (), plan, names, tuple((n, n, shapes[n]) for n in names), plan.out_shape, None,
                    tuple(shapes.items()))

    def _keyed(self, arrays: dict):
        """The operands in input order, or None where the call names others
        (then the first call's checks say which)."""
        return tuple(arrays[n] for n in self.inputs) if arrays.keys() == self._input_set else None

    def __call__(self, /, *, backend="auto", sizes=None, out=None, grad="vjp", **arrays):
        operands = self._keyed(arrays)
        k = None if operands is None else fast.key(self._fast_name, operands, backend, grad, _sizes_param(sizes), out)
        return fast.forward(k, arrays, out, lambda: prepare(self._call(arrays, sizes, out), arrays, backend=backend,
                                                            out=out, grad=grad))

    def vjp(self, dy, /, *args, backend="auto", wrt=None, out=None, sizes=None, grad="vjp", **arrays) -> dict:
        """Gradients as a dict name -> array (None where not in ``wrt``);
        ``out`` may be a dict of preallocated gradients, overwritten."""
        if args:
            raise TypeError("el.vjp(op, dy, ...): pass an Op's arrays by name, e.g. el.vjp(op, dy, x=x, wt=wt)")
        names = self.inputs
        outs = None if out is None else tuple(out.get(n) for n in names) if isinstance(out, dict) else out
        operands = self._keyed(arrays)
        k = None if operands is None else \
            fast.vjp_key(self._fast_name, dy, operands, backend, grad, _sizes_param(sizes), wrt, outs)

        def first():
            call = self._call(arrays, sizes, None)
            if shape_of(dy) != call.out_shape and sizes is None:
                call = self._call(arrays, None, dy)
            return prepare_vjp(call, dy, arrays, backend=backend, wrt=wrt, out=outs, grad=grad)
        return dict(zip(names, fast.gradients(k, dy, arrays, outs, first)))

    def __repr__(self) -> str:
        return f"Op({str(self.statement)!r}{', pad=0' if self.pad else ''})"


def _sizes_param(sizes) -> dict:
    """``sizes`` as a key's parameters: a dict as its sorted items."""
    if sizes is None:
        return {}
    return {"sizes": tuple(sorted(sizes.items())) if isinstance(sizes, dict) else sizes}
