"""The differential fuzz of the catalogue ops: every CPU backend (the array
strategies on numpy, torch and jax, the natives, loops:numba on numpy arrays
and torch tensors, and auto), forward with ``out=`` prefilled with NaN,
``el.vjp`` with a random ``wrt``, torch autograd, ``jax.grad`` (also under
``jit``), float32 and float64, contiguous or not, every padding form —
against an independent float64 reference written here with numpy, one
strided slice per kernel tap.

A ``BackendError`` is allowed only where the contract allows it: a native
backend on an op its library does not have.  Any other refusal of these
valid calls is a failure.

Shapes come from a small pool (each spelled in every padding form that
means the same padding), so compiled numba kernels and XLA programs are
shared across cases.  ``--fuzz-examples N`` sets the number of cases (300
by default, a few minutes); the long profile is ``--fuzz-examples 5000``
(see docs/checking.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einlocal as el
from einlocal import registry
from einlocal.check import tolerance


@dataclass(frozen=True)
class Geometry:
    """One shape of the pool: x's shape, the kernel, stride, dilation, the
    padding as (before, after) per axis, and every way to spell it."""

    x: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    pads: tuple
    forms: tuple
    numba: bool = False     # also drawn for loops:numba (whose kernels compile per shape)


G2 = (
    Geometry((2, 4, 6, 6), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)),
             (1, np.int64(1), (1, 1), [1, 1], ((1, 1), (1, 1)), [[1, 1], (1, 1)], [1, (1, 1)], "same"), numba=True),
    Geometry((1, 2, 7, 5), (2, 3), (2, 1), (1, 2), ((0, 1), (2, 0)), (((0, 1), (2, 0)), [(0, 1), [2, 0]]),
             numba=True),
    Geometry((2, 2, 5, 5), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0)), (0, "valid", (0, 0), [0, 0], ((0, 0), (0, 0)))),
    Geometry((1, 4, 6, 6), (1, 1), (2, 2), (1, 1), ((1, 1), (1, 1)), (1, (1, 1), ((1, 1), (1, 1))), numba=True),
    Geometry((1, 2, 5, 4), (2, 2), (1, 1), (1, 1), ((0, 1), (0, 1)), ("same", ((0, 1), (0, 1)), [[0, 1], [0, 1]])),
    Geometry((0, 2, 5, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (1, "same")),
)
G1 = (
    Geometry((2, 3, 9), (3,), (2,), (1,), ((1, 1),), (1, (1,), [1], ((1, 1),), (1, 1), [np.int32(1)]), numba=True),
    Geometry((1, 2, 7), (2,), (1,), (2,), ((2, 0),), ((2, 0), ((2, 0),), [[2, 0]], [2, 0])),
    Geometry((2, 2, 6), (3,), (1,), (1,), ((1, 1),), ("same", 1, (1,))),
    Geometry((1, 2, 5), (2,), (1,), (1,), ((0, 0),), ("valid", 0, (0,), ((0, 0),))),
)
OPS = {"conv2d": G2, "depthwise_conv2d": G2, "locally_connected2d": G2, "locally_connected1d": G1}
LIBRARIES = ("numpy", "torch", "jax")
NATIVE_OPS = {"native:torch": ("conv2d", "depthwise_conv2d")}


def _out_size(size, pad, k, d, s):
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _channels(op: str, cin: int) -> tuple[int, int]:
    """(output channels, groups) of an op on ``cin`` input channels."""
    if op == "conv2d":
        return (4, 2) if cin % 2 == 0 else (3, 1)
    if op == "depthwise_conv2d":
        return 2 * cin, cin
    return 3, 1


def shapes_of(op: str, g: Geometry) -> dict:
    n, cin, *size = g.x
    cout, groups = _channels(op, cin)
    out = tuple(_out_size(size[a], g.pads[a], g.kernel[a], g.dilation[a], g.stride[a]) for a in range(len(size)))
    if op.startswith("locally"):
        return {"x": g.x, "weight": (cout, cin, *g.kernel, *out), "bias": (cout, *out), "y": (n, cout, *out)}
    return {"x": g.x, "weight": (cout, cin // groups, *g.kernel), "bias": (cout,), "y": (n, cout, *out)}


# -- the independent reference: one strided slice of padded x per tap --------------------------------


def _patches(op, g, x):
    """(tap, the slice of padded x it reads: (N, Cin, *out)) for every kernel tap."""
    xp = np.pad(x, ((0, 0), (0, 0), *g.pads))
    out = shapes_of(op, g)["y"][2:]
    for tap in np.ndindex(*g.kernel):
        idx = tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, g.dilation, g.stride, out))
        yield tap, (slice(None), slice(None), *idx), xp


def _contract(op, g, patch, w, tap):
    """The tap's contribution to y: (N, Cout, *out)."""
    n, cin = patch.shape[:2]
    cout, groups = _channels(op, cin)
    if op.startswith("locally"):
        return np.einsum("nc...,oc...->no...", patch, w[(slice(None), slice(None), *tap)])
    wt = w[(slice(None), slice(None), *tap)].reshape(groups, cout // groups, cin // groups)
    p = patch.reshape(n, groups, cin // groups, *patch.shape[2:])
    return np.einsum("ngc...,goc->ngo...", p, wt).reshape(n, cout, *patch.shape[2:])


def reference(op, g, x, w, b, dy):
    """(y, {"x": dx, "weight": dw, "bias": db}) in float64."""
    y = np.zeros(shapes_of(op, g)["y"])
    dx_pad = np.zeros(np.pad(x, ((0, 0), (0, 0), *g.pads)).shape)
    dw = np.zeros(w.shape)
    n, cin = x.shape[:2]
    cout, groups = _channels(op, cin)
    for tap, idx, xp in _patches(op, g, x):
        patch = xp[idx]
        y += _contract(op, g, patch, w, tap)
        widx = (slice(None), slice(None), *tap)
        if op.startswith("locally"):
            dx_pad[idx] += np.einsum("no...,oc...->nc...", dy, w[widx])
            dw[widx] = np.einsum("no...,nc...->oc...", dy, patch)
        else:
            wt = w[widx].reshape(groups, cout // groups, cin // groups)
            dyg = dy.reshape(n, groups, cout // groups, *dy.shape[2:])
            pg = patch.reshape(n, groups, cin // groups, *patch.shape[2:])
            dx_pad[idx] += np.einsum("ngo...,goc->ngc...", dyg, wt).reshape(patch.shape)
            spatial = math.prod(dy.shape[2:])
            dw[widx] = np.einsum("ngop,ngcp->goc", dyg.reshape(*dyg.shape[:3], spatial),
                                 pg.reshape(*pg.shape[:3], spatial)).reshape(cout, cin // groups)
    y = y + (b.reshape((1, cout) + (1,) * (y.ndim - 2)) if b.ndim == 1 else b[None])
    crop = tuple(slice(p, p + s) for (p, _), s in zip(g.pads, x.shape[2:]))
    db = dy.sum(axis=(0, *range(2, dy.ndim))) if b.ndim == 1 else dy.sum(axis=0)
    return y, {"x": dx_pad[(slice(None), slice(None), *crop)], "weight": dw, "bias": db}


def terms(op, g, shapes) -> dict:
    """At most how many products add into one element of each result."""
    n, cin = g.x[:2]
    cout, groups = _channels(op, cin)
    taps = math.prod(g.kernel)
    per_out = math.prod(shapes["y"][2:])
    return {"y": cin // groups * taps + 1, "x": cout // groups * taps,
            "weight": n if op.startswith("locally") else n * per_out,
            "bias": n if op.startswith("locally") else n * per_out}


# -- the cases -------------------------------------------------------------------------------------


def _backends(library: str) -> list[str]:
    names = [n for n in registry.available() if library in registry.get(n).takes and n != "loops:python"
             and not n.startswith("loops:triton")]
    return names + ["auto"]


@st.composite
def cases(draw):
    op = draw(st.sampled_from(sorted(OPS)))
    library = draw(st.sampled_from([lib for lib in LIBRARIES if registry.unavailable().get(f"bmm:{lib}") is None]))
    backend = draw(st.sampled_from(_backends(library)))
    pool = [g for g in OPS[op] if g.numba or backend != "loops:numba"]
    g = draw(st.sampled_from(pool))
    padding = draw(st.sampled_from(g.forms))
    stride = draw(st.sampled_from([g.stride, list(g.stride), g.stride[0] if len(set(g.stride)) == 1 else g.stride,
                                   tuple(np.int64(s) for s in g.stride)]))
    dilation = draw(st.sampled_from([g.dilation, list(g.dilation)]))
    modes = ["forward", "vjp"] + (["autograd"] if library == "torch" else []) + \
        (["jax.grad", "jax.jit(grad)"] if library == "jax" else [])
    return dict(op=op, library=library, backend=backend, geometry=g, padding=padding, stride=stride,
                dilation=dilation, dtype=draw(st.sampled_from(["float32", "float64"])),
                bias=draw(st.booleans()), mode=draw(st.sampled_from(modes)),
                wrt=draw(st.sets(st.sampled_from(["x", "weight", "bias"]))),
                grad=draw(st.sampled_from(["vjp", "autodiff"])),
                contiguous=draw(st.booleans()), prefill_out=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _noncontiguous(a: np.ndarray) -> np.ndarray:
    """The same values in a view with a gap after every element of the last axis."""
    big = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _lib(library: str, a: np.ndarray, contiguous: bool):
    """``a`` in ``library``; a strided view of a bigger buffer when not ``contiguous``."""
    if library == "numpy":
        return a if contiguous else _noncontiguous(a)
    if library == "torch":
        import torch
        t = torch.from_numpy(a.copy())
        if not contiguous:
            t = torch.from_numpy(_noncontiguous(a))
            assert not t.is_contiguous() or t.numel() <= 1
        return t
    import jax.numpy as jnp
    return jnp.asarray(a) if contiguous else jnp.asarray(a).T.T      # jax arrays have no strides to vary


def _np(a):
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().numpy()
    return np.asarray(a, np.float64)


def _allowed_refusal(case) -> bool:
    return case["op"] not in NATIVE_OPS.get(case["backend"], case["op"])


def run_case(case) -> str:
    """Run one case; returns what ran (a failure raises)."""
    op_name, g, library, backend, dtype = case["op"], case["geometry"], case["library"], case["backend"], case["dtype"]
    op = getattr(el, op_name)
    shapes = shapes_of(op_name, g)
    rng = np.random.default_rng(case["seed"])

    def draw(shape):
        u = rng.uniform(-1, 1, size=shape)
        return u + np.copysign(0.5, u)
    x64, w64, dy64 = draw(shapes["x"]), draw(shapes["weight"]), draw(shapes["y"])
    b64 = draw(shapes["bias"]) if case["bias"] else None
    ref_y, ref_g = reference(op_name, g, x64, w64, b64 if b64 is not None else np.zeros(shapes["bias"]), dy64)
    abs_y, abs_g = reference(op_name, g, np.abs(x64), np.abs(w64),
                             np.abs(b64) if b64 is not None else np.zeros(shapes["bias"]), np.abs(dy64))
    counts = terms(op_name, g, shapes)
    params = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])
    if op_name == "conv2d":
        params["groups"] = _channels(op_name, g.x[1])[1]
    cast = {k: None if a is None else a.astype(dtype) for k, a in (("x", x64), ("weight", w64), ("bias", b64),
                                                                   ("dy", dy64))}
    arrs = {k: None if a is None else _lib(library, a, case["contiguous"]) for k, a in cast.items()}
    grad = case["grad"] if case["grad"] in _grad_modes(backend, library) else "vjp"
    mode = case["mode"]

    def compare(what, got, want, scale, k):
        got = _np(got)
        assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
        err = np.abs(got - want) / tolerance(scale, k, dtype)
        assert np.all(np.isfinite(got)) and err.max(initial=0) <= 1.0, \
            f"{what}: worst error {err.max(initial=0):.3g} of tolerance"

    try:
        if mode == "forward":
            out = None
            if case["prefill_out"] and library != "jax":
                out = _lib(library, np.full(shapes["y"], np.nan, dtype), True)
            y = op(arrs["x"], arrs["weight"], arrs["bias"], backend=backend, out=out, grad=grad, **params)
            assert out is None or y is out
            assert str(y.dtype).endswith(dtype)
            compare("y", y, ref_y, abs_y, counts["y"])
        elif mode == "vjp":
            wrt = tuple(sorted(case["wrt"]))
            outs = None
            if case["prefill_out"] and library != "jax":
                outs = tuple(None if arrs[n] is None or n not in wrt else
                             _lib(library, np.full(shapes[n], np.nan, dtype), True) for n in ("x", "weight", "bias"))
            grads = el.vjp(op, arrs["dy"], arrs["x"], arrs["weight"], arrs["bias"], backend=backend, wrt=wrt,
                           out=outs, grad=grad, **params)
            for n, gr in zip(("x", "weight", "bias"), grads):
                if arrs[n] is None or n not in wrt:
                    assert gr is None, f"d{n} given though not asked for"
                else:
                    compare(f"d{n}", gr, ref_g[n], abs_g[n], counts[n])
        elif mode == "autograd":
            import torch
            leaves = {n: None if a is None else a.detach().clone().requires_grad_(n in case["wrt"])
                      for n, a in arrs.items() if n != "dy"}
            if not any(a is not None and a.requires_grad for a in leaves.values()):
                leaves["x"].requires_grad_(True)
            y = op(leaves["x"], leaves["weight"], leaves["bias"], backend=backend, grad=grad, **params)
            compare("y", y.detach(), ref_y, abs_y, counts["y"])
            y.backward(arrs["dy"])
            for n, leaf in leaves.items():
                if leaf is not None and leaf.requires_grad:
                    compare(f"d{n}", leaf.grad, ref_g[n], abs_g[n], counts[n])
        else:
            import jax
            names = [n for n in ("x", "weight", "bias") if arrs[n] is not None and (n in case["wrt"] or n == "x")]

            def loss(*xs):
                a = {**arrs, **dict(zip(names, xs))}
                return (op(a["x"], a["weight"], a["bias"], backend=backend, grad=grad, **params) * arrs["dy"]).sum()
            fn = jax.grad(loss, argnums=tuple(range(len(names))))
            if mode == "jax.jit(grad)":
                fn = jax.jit(fn)
            for n, gr in zip(names, fn(*(arrs[n] for n in names))):
                compare(f"d{n}", gr, ref_g[n], abs_g[n], counts[n])
    except el.BackendError as e:
        if _allowed_refusal(case):
            return "refused (allowed)"
        raise AssertionError(f"{backend} refused a valid call: {e}") from e
    assert not _allowed_refusal(case), f"{backend} ran {op_name}, which its library does not have"
    return "ran"


def _grad_modes(backend: str, library: str) -> tuple:
    if backend == "auto":
        return ("vjp", "autodiff") if library != "numpy" else ("vjp",)
    return registry.get(backend).grad_modes(library)


def _describe(case) -> str:
    c = dict(case)
    g = c.pop("geometry")
    return f"{c} x={g.x} kernel={g.kernel} pads={g.pads}"


def test_reference_agrees_with_loops_python():
    """The fuzz's own reference against einlocal's pure-Python one, on every geometry."""
    rng = np.random.default_rng(0)
    for op_name, pool in OPS.items():
        for g in pool:
            shapes = shapes_of(op_name, g)
            x, w, b, dy = (rng.standard_normal(shapes[k]) for k in ("x", "weight", "bias", "y"))
            params = dict(stride=g.stride, padding=g.pads, dilation=g.dilation)
            if op_name == "conv2d":
                params["groups"] = _channels(op_name, g.x[1])[1]
            op = getattr(el, op_name)
            y, grads = reference(op_name, g, x, w, b, dy)
            np.testing.assert_allclose(y, op(x, w, b, backend="loops:python", **params), atol=1e-12)
            want = el.vjp(op, dy, x, w, b, backend="loops:python", **params)
            for n, gw in zip(("x", "weight", "bias"), want):
                np.testing.assert_allclose(grads[n], gw, atol=1e-12, err_msg=f"{op_name} {g} d{n}")


def test_differential_fuzz_of_every_cpu_backend(request):
    n = request.config.getoption("--fuzz-examples")
    outcomes: dict = {}

    @settings(max_examples=n, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(case):
        try:
            result = run_case(case)
        except AssertionError as e:
            raise AssertionError(f"{_describe(case)}\n{e}") from e
        key = (case["backend"], case["mode"])
        outcomes[key] = outcomes.get(key, 0) + (result == "ran")
    run()
    ran = sum(outcomes.values())
    print(f"\nfuzz: {n} cases, {ran} ran, {len(outcomes)} (backend, mode) pairs")
    assert ran >= n // 2
