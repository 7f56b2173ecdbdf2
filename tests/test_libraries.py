"""Array libraries: one class each, found by name or by array; a library
registered in one place (the fake one in conftest.py) gets every array strategy."""
import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.arrays import device_of, library_of
from einlocal.backends.namespaces import LIBRARIES, namespace

import fake_library


def test_unknown_library_is_a_backend_error_listing_the_names():
    with pytest.raises(el.BackendError, match="unknown array library 'nope'; valid names: numpy, torch, jax, cupy"):
        namespace("nope")


def test_the_fake_library_is_registered_with_every_array_strategy():
    assert fake_library.NAME in LIBRARIES
    fake = sorted(n for n in el.backends() if n.endswith(":" + fake_library.NAME))
    assert fake == sorted(f"{s}:{fake_library.NAME}" for s in registry.ARRAY_STRATEGIES)
    assert fake_library.NAME in registry.ENGINES


def test_arrays_are_told_apart_from_numpy_s():
    a = namespace(fake_library.NAME).from_numpy(np.ones((2, 3)))
    assert library_of(a) == fake_library.NAME and library_of(np.ones(2)) == "numpy"
    assert device_of(a) == "cpu"


def test_backends_for_a_fake_array_are_the_fake_library_s_and_they_run():
    xp = namespace(fake_library.NAME)
    x = xp.from_numpy(np.random.rand(2, 4, 6, 6))
    w = xp.from_numpy(np.random.rand(8, 1, 3, 3))
    names = el.backends(el.depthwise_conv2d, like={"x": x, "weight": w}, padding=1)
    assert names and all(n.endswith(":" + fake_library.NAME) for n in names)
    want = el.depthwise_conv2d(np.asarray(x).view(np.ndarray), np.asarray(w).view(np.ndarray), padding=1,
                               backend="bmm:numpy")
    for name in names:
        y = el.depthwise_conv2d(x, w, padding=1, backend=name)
        assert library_of(y) == fake_library.NAME, name
        np.testing.assert_allclose(xp.to_numpy(y), want, rtol=1e-12, err_msg=name)


def test_a_numpy_backend_refuses_the_fake_arrays():
    xp = namespace(fake_library.NAME)
    x, w = xp.from_numpy(np.ones((1, 2, 4, 4))), xp.from_numpy(np.ones((2, 1, 3, 3)))
    with pytest.raises(el.BackendError, match="takes numpy arrays, not fakenp"):
        el.depthwise_conv2d(x, w, backend="bmm:numpy")


def test_recognising_an_array_never_touches_a_library_being_imported(monkeypatch):
    """Another thread importing torch leaves a module without `Tensor` in
    sys.modules for a while: recognising a numpy array must not look there."""
    import sys
    import types

    from einlocal.backends import namespaces
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    monkeypatch.setattr(namespaces, "_BY_TYPE", {})
    assert library_of(np.ones(2)) == "numpy"
    assert library_of(namespace(fake_library.NAME).from_numpy(np.ones(2))) == fake_library.NAME
