"""The framework side of the backends: torch autograd
and jax.grad through einlocal ops against the reference, only the needed
gradients computed, results in the input's library/device/dtype, wrong
arrays and jax out= refused, the cupy namespace checked without a GPU, and
jax lowerings traced once per statement and shapes.  One body per property,
parametrized over the registry (the ``backend`` fixture)."""
import inspect
import re

import numpy as np
import pytest

import einlocal as el
from einlocal.backends.namespaces import namespace
from einlocal import registry
from einlocal.arrays import device_of, dtype_name, library_of, shape_of
from einlocal.check import _op_parts, random_inputs

from test_backends import CASES, SESSION_SEED, _reference

LIBRARIES = ("numpy", "torch", "jax")


def _library_available(lib: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(lib) is not None


def _takes(name: str) -> tuple:
    return registry.get(name).takes


def _inputs(case, dtype="float64", seed=SESSION_SEED):
    """(op, numpy arrays by argument, params, call) for a case."""
    op, kw = CASES[case]
    names = op.inputs if isinstance(op, el.Op) else ("x", "weight", "bias")
    shapes = {k: v for k, v in kw.items() if k in names}
    params = {k: v for k, v in kw.items() if k not in names}
    arrays = random_inputs(shapes, dtype, seed)
    call = _op_parts(op, arrays, params)[0]
    return op, arrays, params, call


def _run(op, arrays, params, **kw):
    if isinstance(op, el.Op):
        return op(**arrays, **params, **kw)
    return op(arrays["x"], arrays["weight"], arrays.get("bias"), **params, **kw)


def _reference_grads(op, arrays, params, dy) -> dict:
    """argument -> float64 gradient from loops:python."""
    if isinstance(op, el.Op):
        return op.vjp(dy, **arrays, **params, backend="loops:python")
    g = op.vjp(dy, arrays["x"], arrays["weight"], arrays.get("bias"), **params, backend="loops:python")
    return {n: v for n, v in zip(("x", "weight", "bias"), g) if v is not None}


def _skip_unless_takes(name, lib):
    if lib not in _takes(name):
        pytest.skip(f"{name} takes {', '.join(_takes(name))} arrays, not {lib}")


def _skip_if_cannot(name, call, lib, device="cpu"):
    reason = registry.get(name).cannot(call.plan, library=lib, device=device, call=call)
    if reason:
        pytest.skip(reason)


NATIVE_KINDS = {"native:torch": {"conv2d", "depthwise_conv2d"},
                "native:jax": {"conv2d", "depthwise_conv2d", "locally_connected2d", "locally_connected1d"}}


@pytest.mark.parametrize("name", sorted(NATIVE_KINDS))
def test_natives_are_not_general_and_say_what_they_cannot_do(name):
    if name in registry.unavailable():
        pytest.skip(f"{name}: {registry.unavailable()[name]}")
    b = registry.get(name)
    assert not b.general and set(b.kinds) == NATIVE_KINDS[name]
    _, _, _, call = _inputs("op-pad0")
    assert "el.Op" in b.cannot(call.plan, library=b.takes[0], device="cpu", call=call)
    _, _, _, call = _inputs("lc2d-s21-p12-d21-k32")
    reason = b.cannot(call.plan, library=b.takes[0], device="cpu", call=call)
    assert (reason is None) == ("locally_connected2d" in NATIVE_KINDS[name])
    if reason:
        assert "locally connected" in reason


# -- torch autograd ----------------------------------------------------------

@pytest.mark.parametrize("grad", ["vjp", "autodiff"])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_autograd_matches_reference(backend, case, grad):
    torch = pytest.importorskip("torch")
    _skip_unless_takes(backend, "torch")
    op, arrays, params, call = _inputs(case)
    _skip_if_cannot(backend, call, "torch")
    if grad not in registry.get(backend).grad_modes("torch"):
        pytest.skip(f"{backend} has no grad={grad!r}")
    dy = np.random.default_rng(SESSION_SEED + 5).uniform(-1, 1, call.out_shape)
    leaves = {n: (None if a is None else torch.from_numpy(a.copy()).requires_grad_()) for n, a in arrays.items()}
    y = _run(op, leaves, params, backend=backend, grad=grad)
    (y * torch.from_numpy(dy)).sum().backward()
    ref = _reference_grads(op, arrays, params, dy)
    for n, g in ref.items():
        assert leaves[n].grad is not None, f"no gradient for {n}"
        np.testing.assert_allclose(leaves[n].grad.numpy(), g, rtol=1e-9, atol=1e-9, err_msg=f"d{n}")


@pytest.mark.parametrize("case", ["lc2d-s21-p12-d21-k32", "conv-g2-asym", "op-pad0"])
def test_first_layer_never_computes_dx(backend, case, monkeypatch):
    """x without requires_grad: the dx backward statement never runs."""
    torch = pytest.importorskip("torch")
    _skip_unless_takes(backend, "torch")
    op, arrays, params, call = _inputs(case)
    _skip_if_cannot(backend, call, "torch")
    b = registry.get(backend)
    x_name, w_name = [a for a, _, _ in call.operands]
    x_op, w_op = [o for _, o, _ in call.operands]
    executed, asked = [], []
    real_execute, real_vjp = b.execute, b.vjp
    monkeypatch.setattr(b, "execute", lambda plan, *a, **k: (executed.append(plan), real_execute(plan, *a, **k))[1])
    monkeypatch.setattr(b, "vjp", lambda call, dy, ops, wrt, outs: (asked.append(tuple(wrt)),
                                                                     real_vjp(call, dy, ops, wrt, outs))[1])
    tensors = {n: (None if a is None else torch.from_numpy(a.copy())) for n, a in arrays.items()}
    tensors[w_name].requires_grad_()
    y = _run(op, tensors, params, backend=backend)
    executed.clear()
    y.sum().backward()
    assert tensors[w_name].grad is not None and tensors[x_name].grad is None
    if b.own_autodiff("torch"):     # torch's own autograd of the backend's forward calls (it skips dx itself)
        assert asked == [], f"backward asked einlocal for {asked}"
        return
    assert asked == [(w_op,)], f"backward asked for {asked}"
    if b.general:
        assert call.plan.backward[x_op] not in executed, "the dx statement ran"
        assert call.plan.backward[w_op] in executed, "the dweight statement did not run"


# -- jax.grad ----------------------------------------------------------------

@pytest.mark.parametrize("grad", ["vjp", "autodiff"])
@pytest.mark.parametrize("case", list(CASES))
def test_jax_grad_matches_reference(backend, case, grad):
    jax = pytest.importorskip("jax")
    _skip_unless_takes(backend, "jax")
    op, arrays, params, call = _inputs(case)
    _skip_if_cannot(backend, call, "jax")
    if grad not in registry.get(backend).grad_modes("jax"):
        pytest.skip(f"{backend} has no grad={grad!r}")
    names = [n for n, a in arrays.items() if a is not None]
    dy = np.random.default_rng(SESSION_SEED + 5).uniform(-1, 1, call.out_shape)

    def loss(*xs):
        y = _run(op, dict(zip(names, xs)), params, backend=backend, grad=grad)
        return (y * dy).sum()
    grads = jax.grad(loss, argnums=tuple(range(len(names))))(*(jax.numpy.asarray(arrays[n]) for n in names))
    ref = _reference_grads(op, arrays, params, dy)
    for n, g in zip(names, grads):
        assert g.dtype == np.float64
        np.testing.assert_allclose(np.asarray(g), ref[n], rtol=1e-9, atol=1e-9, err_msg=f"d{n}")


# -- results keep the input's kind; wrong arrays refused -------------------

def _to(lib, a):
    return None if a is None else namespace(lib).from_numpy(a)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_stay_in_the_input_library_device_and_dtype(backend, dtype):
    lib = _takes(backend)[0]
    pytest.importorskip(lib)
    op, arrays, params, call = _inputs("conv-g2-asym", dtype)
    _skip_if_cannot(backend, call, lib)
    arr = {n: _to(lib, a) for n, a in arrays.items()}
    y = _run(op, arr, params, backend=backend)
    dy = _to(lib, np.ones(call.out_shape, dtype))
    grads = op.vjp(dy, arr["x"], arr["weight"], arr["bias"], **params, backend=backend)
    for what, got, like in [("y", y, arr["x"])] + [(f"d{n}", g, arr[n]) for n, g in zip(("x", "weight", "bias"), grads)]:
        assert (library_of(got), device_of(got), dtype_name(got)) == (lib, device_of(like), dtype), what
        assert shape_of(got) == (tuple(call.out_shape) if what == "y" else shape_of(like)), what


def test_wrong_library_is_a_backend_error(backend):
    takes = _takes(backend)
    other = next((lib for lib in LIBRARIES if lib not in takes and _library_available(lib)), None)
    if other is None:
        pytest.skip(f"no installed library that {backend} does not take")
    op, arrays, params, _ = _inputs("dw-m3-s2", "float32")
    arr = {n: _to(other, a) for n, a in arrays.items()}
    with pytest.raises(el.BackendError, match=other):
        _run(op, arr, params, backend=backend)
    dy = _to(other, np.ones((2, 6, 3, 3), np.float32))
    with pytest.raises(el.BackendError):
        op.vjp(dy, arr["x"], arr["weight"], arr["bias"], **params, backend=backend)


def test_out_with_jax_arrays_is_a_backend_error(backend):
    jnp = pytest.importorskip("jax.numpy")
    _skip_unless_takes(backend, "jax")
    op, arrays, params, call = _inputs("dw-m3-s2", "float32")
    arr = {n: jnp.asarray(a) for n, a in arrays.items()}
    for out in (jnp.zeros(call.out_shape, jnp.float32), np.zeros(call.out_shape, np.float32)):
        with pytest.raises(el.BackendError, match="jax"):
            _run(op, arr, params, backend=backend, out=out)


# -- cupy without a GPU ------------------------------------------------------

def test_namespace_call_list_is_complete():
    """Every module call NumpyLike makes is in NUMPY_CALLS (so the cupy
    check below covers them all)."""
    from einlocal.backends import lib_numpy, namespaces
    used = set(re.findall(r"self\.mod\.(\w+)", inspect.getsource(lib_numpy.NumpyLike)))
    used |= set(re.findall(r"mod\.(\w+)\.", inspect.getsource(lib_numpy.NumpyLike)))
    assert used, "found no module calls: the pattern is stale"
    assert used <= set(namespaces.NUMPY_CALLS), f"missing from NUMPY_CALLS: {sorted(used - set(namespaces.NUMPY_CALLS))}"


def test_cupy_has_every_namespace_call():
    cupy = pytest.importorskip("cupy")
    from einlocal.backends.namespaces import NUMPY_CALLS
    missing = [n for n in NUMPY_CALLS if not hasattr(cupy, n)]
    assert not missing, f"cupy lacks {missing}"
    assert callable(cupy.lib.stride_tricks.as_strided)


@pytest.mark.parametrize("strategy", registry.ARRAY_STRATEGIES)
def test_cupy_runs_the_numpy_strategy_code(strategy):
    """One strategy class for every library: the numpy backends, tested
    above, execute the same code the cupy ones would."""
    import importlib
    mod = importlib.import_module(f"einlocal.backends.{strategy}")
    assert type(mod.make("cupy")) is type(mod.make("numpy"))
    assert type(mod.make("cupy")).execute is type(mod.make("numpy")).execute


# -- jax lowerings are jitted and cached ------------------------------------

def test_jax_lowering_is_traced_once_per_statement_and_shapes(backend, monkeypatch):
    jnp = pytest.importorskip("jax.numpy")
    _skip_unless_takes(backend, "jax")
    from einlocal.backends import base, native_jax
    traces = []
    if backend.startswith("native:"):
        real = native_jax._conv
        monkeypatch.setattr(native_jax, "_conv", lambda *a: (traces.append(1), real(*a))[1])
        native_jax._forward.cache_clear()
    elif backend == "loops:numba":           # a custom call per statement, bound when traced
        from einlocal.backends import autograd_jax, numba_jax
        real = numba_jax.run
        monkeypatch.setattr(numba_jax, "run", lambda *a, **k: (traces.append(1), real(*a, **k))[1])
        autograd_jax._jitted_forward.cache_clear()
    else:
        real = base.execute
        monkeypatch.setattr(base, "execute", lambda *a, **k: (traces.append(1), real(*a, **k))[1])
        base._JIT_CACHE.clear()
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.uniform(-1, 1, s)) for s in ((1, 3, 7, 6), (6, 1, 3, 2)))
    el.depthwise_conv2d(x, w, backend=backend).block_until_ready()
    first = len(traces)
    assert first >= 1
    for _ in range(2):
        el.depthwise_conv2d(x + 1, w, backend=backend).block_until_ready()
    assert len(traces) == first, "the same shapes were traced again"
    el.depthwise_conv2d(x[:, :, :6], w, backend=backend).block_until_ready()
    assert len(traces) > first, "new shapes did not trace"
