"""``loops:numba``: loop nests generated from the statement and compiled with
numba, parallel on CPU; numpy arrays, CPU torch tensors, and CPU jax arrays
inside or outside ``jax.jit`` (``numba_jax``: an XLA custom call).

Which nest: a scatter (the input gradient of a stride-1 conv) runs as its
gather form (``plan.gather``: one sum per element, parallel over any output
index); a plain output whose operands read some index contiguously runs as
a register-tiled SIMD nest (``numba_tiles``), whose tiles at an operand's
edge (padding) load only the lanes inside it, run in parallel by
``numba_drive``; anything else runs as the general nest (``numba_codegen``).
Neither copies an operand (a tile may copy its slice of one, shared by the
tiles inside it, into a small panel: ``numba_tiling.PACK``).  A repeat on
numpy arrays launches what its first run chose for the same layouts
(``numba_repeat``).

Generated modules are written to ``einlocal.machine.cache_dir()/numba/<hash>.py``
(hash of the source and the numba version; the folders checked to be the
user's own, see ``einlocal.cachedir``) and imported from that path with
``cache=True``, so a second process loads the compiled kernel from numba's
file cache instead of compiling it again.  Products and sums are computed in
the arrays' own dtype (float32 accumulates in float32, as the other
backends do).
"""
from __future__ import annotations

import functools
import hashlib
import math
import sys
import time
from pathlib import Path

from .. import cachedir
from ..errors import BackendError, CacheDirError
from . import numba_fused, numba_tiles
from .base import Backend
from .numba_codegen import KERNEL_NAME, generate
from . import numba_repeat
from .numba_repeat import element_strides as _strides, forward_runner

__all__ = ["NumbaLoops", "make", "STATS"]

# process-wide counts: kernels compiled here, and kernels loaded from numba's file cache
STATS = {"compiled": 0, "loaded": 0}
_DTYPES = ("float32", "float64")


@functools.lru_cache(maxsize=1)
def _codegen_salt() -> str:
    """What a kernel's machine code depends on besides its source: the
    intrinsics' code (`numba_simd`, `numba_drive`), so numba's file cache
    never serves a kernel built by an earlier version of them."""
    from . import numba_drive, numba_simd
    text = "".join(Path(m.__file__).read_text() for m in (numba_drive, numba_simd))
    return hashlib.sha256(text.encode()).hexdigest()


def _module_path(source: str):
    import numba
    key = hashlib.sha256(f"{source}\nnumba {numba.__version__}\npython {sys.version}\n{_codegen_salt()}"
                         .encode()).hexdigest()[:24]
    return cachedir.folder("numba") / f"k_{key}.py", key


def _import_kernel(source: str):
    """The jitted function of ``source``, from a module file written
    (atomically) to the checked cache folder and imported from that path:
    numba's ``cache=True`` needs a file, and keeps its index beside it in
    ``__pycache__``."""
    path, key = _module_path(source)
    name = f"einlocal_numba_{key}"
    mod = sys.modules.get(name)
    if mod is None:
        mod = cachedir.load_module(name, cachedir.write_code(path, source))
    return getattr(mod, KERNEL_NAME)


def _c_strides(shape) -> tuple[int, ...]:
    return tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))


def _broadcast_strides(shape, to) -> tuple[int, ...]:
    """Element strides of a C-ordered array of ``shape`` broadcast to ``to``
    (0 along the axes it repeats)."""
    lead = len(to) - len(shape)
    own = _c_strides(shape)
    return (0,) * lead + tuple(0 if n == 1 and m != 1 else s for n, m, s in zip(shape, to[lead:], own))


def lowered(plan):
    """The plan this backend runs for ``plan``: a scatter's gather form where
    one exists, else the plan itself."""
    return plan.gather if plan.scatter and plan.gather is not None else plan


class NumbaLoops(Backend):
    strategy = "loops"
    engine = "numba"
    takes = ("numpy", "torch", "jax")
    also_on = ("jax",)        # compared and checked inside jax programs too (numba_jax)
    module_path = staticmethod(_module_path)   # a generated module's file and key (numba_jax's entries too)
    requires = ("numba",)
    compile_s = 10.0          # a backward's two kernels, ~4 s each on 2 cores
    dtypes = _DTYPES

    def preload(self) -> None:
        """numba's compiler and CPU target start on the first compile (~0.3 s)."""
        import numba
        numba.njit(lambda x: x + 1)(1)

    def __init__(self, tiled: bool = True):
        self.tiled = tiled                # False: always the general nest (tests compare both)
        self._kernels: dict = {}          # (plan, dtype, strides, ..., tiled) -> (Kernel, dispatcher)
        self._fusable: dict = {}          # a weight gradient's layout -> whether it also sums the bias's
        self._one_passes: dict = {}       # (plan, dtype, strides, bias strides) -> (Kernel, dispatcher) or None
        self._pointwise: dict = {}        # plan -> whether a one-pass backward may apply (numba_fused.pointwise)
        self.compile_seconds: dict = {}   # (plan, signature) -> seconds of compiling or loading
        self._ready: set = set()          # (plan, the arrays' type parts) compiled for
        self.cache_hits: dict = {}        # (plan, signature) -> loaded from the file cache
        self._repeats: dict = {}          # numpy arrays' layouts in a statement's run -> what it launched

    def cannot(self, plan, *, library: str, device: str, call=None) -> str | None:
        reason = super().cannot(plan, library=library, device=device, call=call)
        if reason:
            return reason
        return self.cannot_device(device)

    def cannot_device(self, device: str) -> str | None:
        if device not in ("cpu", "traced"):   # "traced": a jax tracer, its program lowered for the CPU
            return f"{self.name} runs on the CPU; the arrays are on {device}"
        return None

    def grad_modes(self, library: str) -> tuple[str, ...]:
        return ("vjp",)       # torch cannot differentiate through a compiled loop nest

    def workspace(self, plan) -> tuple[int, str]:
        return 0, "none (loops read and write in place; padding is clipped loop ranges or masked lanes)"

    def allocations(self, plan) -> list:
        return []

    def kernel(self, plan, out_strides=None, dtype: str = "float64"):
        """The generated ``Kernel`` (``.source``) that runs ``plan`` on
        C-ordered operands of ``dtype`` and an output with ``out_strides``
        (default C order)."""
        plan = lowered(plan)
        strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
        return self._compiled(plan, dtype, strides, out_strides or _c_strides(plan.out_shape))[0]

    def source(self, plan, out_strides=None, dtype: str = "float64") -> str:
        """The generated source for ``plan``, printable."""
        return self.kernel(plan, out_strides, dtype).source

    def _compiled(self, plan, dtype, strides: dict, out_strides, init_strides=None, sum_of=None):
        """(Kernel, dispatcher) for ``plan`` on arrays with these element
        strides; ``init_strides``: the sums start from one more array's values;
        ``sum_of``: (operand, strides) also summed into one more array
        (`numba_tiles.sum_slots`)."""
        key = (plan, dtype, tuple(sorted(strides.items())), tuple(out_strides), init_strides, sum_of, self.tiled)
        hit = self._kernels.get(key)
        if hit is None:
            t = numba_tiles.tiling(plan, dtype, strides, out_strides) if self.tiled else None
            if t is not None:
                k = numba_tiles.generate(plan, t, strides, out_strides, dtype, init_strides, sum_of)
            else:
                c_order = tuple(out_strides) == _c_strides(plan.out_shape)
                k = generate(plan, None if c_order else out_strides, init=init_strides is not None)
            try:
                fn = _import_kernel(k.source)
            except CacheDirError:
                raise
            except Exception as e:   # a syntax error in generated code, a failed import
                raise BackendError(f"loops:numba could not build the kernel for {plan}: {type(e).__name__}: {e}\n"
                                   f"--- generated source ---\n{k.source}") from e
            hit = self._kernels[key] = (k, fn)
        return hit

    def execute(self, plan, operands: dict, out=None):
        """Run one bound statement on numpy arrays or CPU torch tensors;
        ``out`` (same library) is overwritten and returned."""
        return self._run(plan, operands, out, None)

    def forward(self, call, operands: dict, out=None, bias=None):
        """The forward statement with its sums started from the bias (one
        pass over the output, not two)."""
        return self._run(call.plan, operands, out, bias)

    def vjp(self, call, dy, operands: dict, wrt, outs: dict):
        """Both operands' gradients of a pointwise layer in one pass over
        ``dy`` (`numba_fused`); else each gradient statement on its own."""
        one = self._one_pass(call, dy, operands, wrt, outs)
        return one[0] if one is not None else super().vjp(call, dy, operands, wrt, outs)

    def vjp_and_bias(self, call, dy, operands: dict, wrt, outs: dict, bias_shape, bias_out=None):
        """Every gradient of a pointwise layer in one pass over ``dy``
        (`numba_fused`); else the gradient whose kernel loads all of ``dy``
        (a locally connected layer's weight gradient, summed over the
        batch) also sums it into the bias's gradient: ``dy`` is read once
        for both, not twice.  The bias's sums go straight into
        ``bias_out`` where it is C-ordered and of ``dy``'s dtype."""
        import numpy as np
        if not self.tiled or type(dy).__module__.startswith(("jax", "jaxlib")):
            return None
        dy_np = _numpy(dy, "dy")
        db_out = _in_place(bias_out, bias_shape, dy_np.dtype)
        one = self._one_pass(call, dy, operands, wrt, outs, bias_shape, db_out)
        if one is not None:
            return one[0], (bias_out if db_out is not None and one[1] is not None else one[1])
        if dy_np.dtype.name not in _DTYPES:
            return None
        for name in wrt:
            plan = lowered(call.plan.backward[name])
            first = plan.stmt.operands[0].name
            ops = {first: dy, **{a.name: operands[a.name] for a in plan.stmt.operands[1:]}}
            arrays = {n: _numpy(a, n) for n, a in ops.items()}
            if any(a.shape != plan.shape[n] for n, a in arrays.items()):
                continue
            out = outs.get(name)
            out_strides = _strides(_numpy(out, "out")) if out is not None else None
            key = (call, name, dy_np.dtype.name, tuple(_strides(a) for a in arrays.values()), out_strides)
            fusable = self._fusable.get(key)
            if fusable is None:     # decided once per call and layout (the tiling's search is not free)
                sum_strides = _broadcast_strides(bias_shape, plan.shape[first])
                t = numba_tiles.tiling(plan, dy_np.dtype.name, {n: _strides(a) for n, a in arrays.items()},
                                       out_strides or _c_strides(plan.out_shape))
                fusable = self._fusable[key] = t is not None and \
                    numba_tiles.sum_slots(plan, t, first, sum_strides) is not None
            if not fusable:
                continue
            db = db_out if db_out is not None else np.empty(bias_shape, dy_np.dtype)
            grads = {name: self._run(plan, ops, out, None, (first, np.broadcast_to(db, plan.shape[first])))}
            for other in wrt:
                if other != name:
                    grads.update(self.vjp(call, dy, operands, (other,), outs))
            if db_out is not None:
                return grads, bias_out
            if type(dy).__module__.startswith("torch"):
                import torch
                db = torch.from_numpy(db)
            return grads, db
        return None

    def one_pass(self, plan, dtype: str, strides: dict, bias_strides=None):
        """(Kernel, dispatcher) of ``plan``'s backward in one pass
        (`numba_fused`) for operands, ``dy`` (key ``numba_fused.OUT``) and
        gradients with these element strides, and a bias's gradient with
        ``bias_strides`` (indexed like ``dy``; None: no bias); None where it
        does not apply."""
        key = (plan, dtype, tuple(sorted(strides.items())), bias_strides)
        if key not in self._one_passes:
            dy = strides[numba_fused.OUT]
            r = numba_fused.roles(plan, dtype, strides, dy) if self.tiled else None
            if r is not None and (bias_strides is None or numba_fused.bias_fits(plan, r, bias_strides, dy)):
                k = numba_fused.generate(plan, r, strides, strides, dtype, bias_strides)
                try:
                    fn = _import_kernel(k.source)
                except CacheDirError:
                    raise
                except Exception as e:
                    raise BackendError(f"loops:numba could not build the one-pass backward of {plan}: "
                                       f"{type(e).__name__}: {e}\n--- generated source ---\n{k.source}") from e
                self._one_passes[key] = (k, fn)
            else:
                self._one_passes[key] = None
        return self._one_passes[key]

    def one_pass_source(self, call, dtype: str = "float64") -> str | None:
        """The source of ``call``'s backward in one pass over C-ordered
        arrays (with the bias's gradient where it has a bias), printable;
        None where its gradients run apart."""
        plan = call.plan
        strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
        strides[numba_fused.OUT] = _c_strides(plan.out_shape)
        bias = None if call.bias is None else _broadcast_strides(call.bias[1], plan.out_shape)
        hit = self.one_pass(plan, dtype, strides, bias)
        return None if hit is None else hit[0].source

    def _one_pass(self, call, dy, operands: dict, wrt, outs: dict, bias_shape=None, db_out=None):
        """(gradients by operand, the bias's gradient or None) from
        `one_pass`'s kernel, where both operands' gradients are asked for
        and it applies to these arrays; else None.  ``db_out``: a numpy
        array (C-ordered, ``bias_shape``) the bias's sums go into."""
        plan = call.plan
        names = tuple(a.name for a in plan.stmt.operands)
        if not self.tiled or set(wrt) != set(names) or type(dy).__module__.startswith(("jax", "jaxlib")):
            return None
        fits = self._pointwise.get(plan)
        if fits is None:
            fits = self._pointwise[plan] = numba_fused.pointwise(plan)
        if not fits:
            return None
        if not type(dy).__module__.startswith("torch"):
            return self._one_pass_numpy(plan, names, dy, operands, outs, bias_shape, db_out)
        got = self._one_pass_numpy(plan, names, _numpy(dy, "dy"),     # CPU tensors: as numpy views of them
                                   {n: _numpy(a, n) for n, a in operands.items()},
                                   {n: _numpy(o, "out") for n, o in outs.items() if o is not None}, bias_shape,
                                   db_out)
        if got is None:
            return None
        import torch
        grads, db = got
        return ({n: outs[n] if outs.get(n) is not None else torch.from_numpy(g) for n, g in grads.items()},
                None if db is None else torch.from_numpy(db))

    def _one_pass_numpy(self, plan, names, dy, operands: dict, outs: dict, bias_shape, db_out=None):
        """`_one_pass` on numpy arrays."""
        repeat = numba_repeat.one_pass_key(plan, dy, operands, outs, names, bias_shape)
        if repeat is not None and repeat in self._repeats:
            return numba_repeat.launch_one_pass(self, self._repeats[repeat], dy, operands, outs, bias_shape,
                                                db_out=db_out)
        arrays = {n: operands[n] for n in names}
        if dy.dtype.name not in _DTYPES or dy.shape != plan.out_shape or \
                any(a.dtype != dy.dtype or a.shape != plan.shape[n] for n, a in arrays.items()):
            return None
        strides = {n: _strides(a) for n, a in arrays.items()}
        if any(_strides(outs[n]) != strides[n] for n in names if outs.get(n) is not None):
            return None                 # gradients laid out like their operands
        strides[numba_fused.OUT] = _strides(dy)
        hit = self.one_pass(plan, dy.dtype.name, strides,
                            None if bias_shape is None else _broadcast_strides(bias_shape, plan.out_shape))
        hit = None if hit is None else (plan, names, *hit)
        if repeat is not None:
            self._repeats[repeat] = hit
        return numba_repeat.launch_one_pass(self, hit, dy, operands, outs, bias_shape, first=True, db_out=db_out)

    def _run(self, plan, operands: dict, out, init, sums=None):
        first = next(iter(operands.values()))
        module = type(first).__module__
        if module.startswith("torch"):      # CPU tensors run as numpy views of them (no copy)
            import torch
            y = self._run(plan, {n: _numpy(a, n) for n, a in operands.items()},
                          None if out is None else _numpy(out, "out"), None if init is None else _numpy(init, "bias"),
                          sums)
            return out if out is not None else torch.from_numpy(y)
        repeat = numba_repeat.statement_key(plan, operands, out, init, sums, self.tiled)
        if repeat is not None:
            hit = self._repeats.get(repeat)
            if hit is not None:
                return numba_repeat.launch(self, hit, operands, out, init, sums)
        if module.startswith(("jax", "jaxlib")):
            from . import numba_jax
            return numba_jax.run(self, lowered(plan), operands, init)
        plan = lowered(plan)
        arrays = {a.name: _numpy(operands[a.name], a.name) for a in plan.stmt.operands}
        dtype = next(iter(arrays.values())).dtype
        if dtype.name not in _DTYPES:
            raise BackendError(f"loops:numba computes in float32 or float64; operand {plan.stmt.operands[0].name!r} "
                               f"has dtype {dtype.name}")
        for a in plan.stmt.operands:    # the kernels bake shapes in and check no bound
            if arrays[a.name].shape != plan.shape[a.name]:
                raise BackendError(f"loops:numba: operand {a.name!r} has shape {arrays[a.name].shape}, but the "
                                   f"kernel is generated for {plan.shape[a.name]} ({plan})\n"
                                   f"--- generated source ---\n{self.source(plan, dtype=dtype.name)}")
        if out is not None and out.shape != plan.out_shape:
            raise BackendError(f"loops:numba: out has shape {out.shape}, the result {plan.out_shape}")
        k, fn = self._compiled(plan, dtype.name, {n: _strides(a) for n, a in arrays.items()},
                               _c_strides(plan.out_shape) if out is None else _strides(out),
                               None if init is None else _broadcast_strides(init.shape, plan.out_shape),
                               None if sums is None else (sums[0], _strides(sums[1])))
        hit = (plan, tuple(a.name for a in plan.stmt.operands), k, fn)
        if repeat is not None:
            self._repeats[repeat] = hit
        return numba_repeat.launch(self, hit, arrays, out, init, sums, first=True)

    def _launch(self, plan, k, fn, args, what: str = ""):
        """Compile ``fn`` for ``args`` if need be and run it (`_call`)."""
        self._ensure_compiled(plan, k, fn, args)
        self._call(plan, k, fn, args, what)

    @staticmethod
    def _call(plan, k, fn, args, what: str = ""):
        """Run ``fn`` (compiled for ``args``); a failure names ``what`` ran
        (of ``plan``) and carries the generated source."""
        try:
            fn(*args)
        except Exception as e:
            raise BackendError(f"loops:numba failed running {what}{plan}: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{k.source}") from e

    def runner(self, call, library: str):
        """Repeats on numpy arrays: `numba_repeat.forward_runner`."""
        if library != "numpy" or call.empty:
            return None
        return forward_runner(self, call)

    def out_runner(self, call, library: str):
        return self.runner(call, library)

    def _ensure_compiled(self, plan, k, fn, args):
        """Compile (or load from the file cache) for these argument types,
        timing it apart from the run.  A repeat is known by what numba's
        array types are made of (dtype, dimensions, layout, writability,
        alignment), read from the arrays' flags: ``numba.typeof`` of four
        arrays took 24 µs a call, the flags 1.2 µs."""
        seen = (plan, *((a.dtype.num, a.ndim, a.flags.c_contiguous, a.flags.f_contiguous, a.flags.writeable,
                         a.flags.aligned) for a in args))
        if seen in self._ready:
            return
        import numba
        sig = tuple(numba.typeof(a) for a in args)
        rec = (plan, sig)
        if rec in self.compile_seconds:
            self._ready.add(seen)
            return
        hits_before = sum(fn.stats.cache_hits.values())
        t0 = time.perf_counter()
        try:
            fn.compile(sig)
        except Exception as e:
            raise BackendError(f"loops:numba failed compiling {plan} for {sig}: {type(e).__name__}: {e}\n"
                               f"--- generated source ---\n{k.source}") from e
        self.compile_seconds[rec] = time.perf_counter() - t0
        loaded = sum(fn.stats.cache_hits.values()) > hits_before
        self.cache_hits[rec] = loaded
        self._ready.add(seen)
        STATS["loaded" if loaded else "compiled"] += 1


def _in_place(out, shape, dtype):
    """A numpy view of ``out`` (numpy or CPU torch) that a kernel can write
    a C-ordered array of ``shape`` and ``dtype`` into, or None."""
    if out is None or (type(out).__module__.startswith("torch") and out.device.type != "cpu"):
        return None
    a = _numpy(out, "out")
    ok = tuple(a.shape) == tuple(shape) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    return a if ok else None


def _numpy(a, what: str):
    """A numpy view of a numpy array or CPU torch tensor (no copy)."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        if a.device.type != "cpu":
            raise BackendError(f"loops:numba takes CPU torch tensors; {what!r} is on {a.device}")
        return a.detach().numpy()
    return a


def make(engine: str = "numba"):
    return NumbaLoops()
