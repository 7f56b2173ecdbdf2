"""einlocal.compile_watch: a thread's compiles seen from its sampled stack."""
import sys
import time

import pytest

from einlocal.compile_watch import CompileWatch, compiling


def _frames_in(*paths_and_names):
    """The innermost frame of nested calls, one per (file path, function name), outermost first."""
    inner = "def _leaf():\n    return sys._getframe()\n"
    namespace = {"sys": sys}
    exec(compile(inner, "/site-packages/somewhere/leaf.py", "exec"), namespace)
    call = namespace["_leaf"]
    for path, name in reversed(paths_and_names):
        ns = {"inner": call}
        exec(compile(f"def {name}():\n    return inner()\n", path, "exec"), ns)
        call = ns[name]
    return call()


def test_the_innermost_compile_or_run_frame_decides():
    trace = ("/site-packages/jax/_src/interpreters/partial_eval.py", "trace_to_jaxpr")
    execute = ("/site-packages/jax/_src/interpreters/pxla.py", "__call__")
    lower = ("/site-packages/jax/_src/interpreters/mlir.py", "lower_jaxpr")
    assert compiling(_frames_in(trace))
    assert not compiling(_frames_in(trace, execute))      # an eager vjp running a program inside its trace
    assert compiling(_frames_in(execute, lower))
    assert compiling(_frames_in(("/site-packages/numba/core/compiler.py", "compile_extra")))
    assert not compiling(_frames_in(("/work/project/model.py", "forward")))
    assert not compiling(None)


def _watched(fn):
    changes = []
    watch = CompileWatch(changes.append, period_s=0.001)
    watch.arm()
    try:
        fn()
    finally:
        seconds = watch.disarm()
    return changes, seconds


def test_sleeping_is_not_compiling():
    changes, seconds = _watched(lambda: time.sleep(0.05))
    assert changes == [] and seconds == 0.0


def test_a_numba_compile_is_seen_and_a_compiled_call_is_not():
    numba = pytest.importorskip("numba", reason="numba is not installed")
    import numpy as np
    salt = time.time_ns()    # a function numba has never compiled or cached

    def compile_it():
        fn = numba.njit(eval(f"lambda a: (a * {salt % 997}).sum()"))
        fn(np.ones(3))
        return fn
    kept = []
    changes, seconds = _watched(lambda: kept.append(compile_it()))
    assert changes[0] is True and changes[-1] is False and seconds > 0.01
    changes, seconds = _watched(lambda: [kept[0](np.ones(100_000)) for _ in range(200)])
    assert changes == [] and seconds == 0.0


def test_an_xla_compile_is_seen_and_running_its_program_is_not():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    import jax.numpy as jnp
    salt = float(time.time_ns() % 1009)
    f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * salt, axis=0) @ jnp.cos(x).T)
    x = jnp.ones((300, 300))
    changes, seconds = _watched(lambda: f(x).block_until_ready())
    assert changes[0] is True and changes[-1] is False and seconds > 0.005
    changes, seconds = _watched(lambda: [f(x).block_until_ready() for _ in range(20)])
    assert changes == [] and seconds == 0.0
