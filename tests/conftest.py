"""Test configuration: every backend test is one body parametrized from the
registry (adding a backend adds it everywhere), with readable ids, a
``--backends`` filter, and a skip with the reason for what is unavailable."""
import os

# The device the backend tests put their arrays on: "cpu" (default), or
# "cuda" on a machine with a GPU (EINLOCAL_TEST_DEVICE=cuda), where Triton
# kernels are compiled rather than interpreted.
DEVICE = os.environ.get("EINLOCAL_TEST_DEVICE", "cpu")

# Before any framework or kernel module is imported:
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")      # Triton kernels run on CPU tensors
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")  # two CPU devices
os.environ.setdefault("JAX_ENABLE_X64", "1")              # float64 references for jax too
os.environ.setdefault("EINLOCAL_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "einlocal"))

import pytest  # noqa: E402

import einlocal as el  # noqa: E402
from einlocal import registry  # noqa: E402
from einlocal.backends.namespaces import register_library  # noqa: E402

import fake_library  # noqa: E402

# The one place the fake array library is registered: from here it is in the
# registry, so in every registry-parametrized test.
register_library(fake_library.NAME, fake_library.FakeNumpy)


def pytest_addoption(parser):
    parser.addoption("--backends", default="", help="comma-separated backend names (or prefixes) to test")
    parser.addoption("--hypothesis-examples", type=int, default=300,
                     help="examples for the differential test over random statements")
    parser.addoption("--fuzz-examples", type=int, default=300,
                     help="cases of the differential fuzz of every CPU backend (tests/test_fuzz.py); "
                          "the long profile is 5000")


def _selected(config):
    wanted = [w for w in config.getoption("--backends").split(",") if w]
    names = [n for n in registry.NAMES if n != "loops:python"]
    if wanted:
        names = [n for n in names if any(n == w or n.startswith(w) for w in wanted)]
    return names


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _selected(metafunc.config), ids=str, indirect=True)


@pytest.fixture
def backend(request):
    """A backend name; skipped, with the reason, where it cannot run here."""
    name = request.param
    reason = registry.unavailable().get(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    return name


def gpu_reason() -> str | None:
    """Why the backend tests cannot run on DEVICE here, or None."""
    if DEVICE == "cpu":
        return None
    if DEVICE != "cuda":
        return f"EINLOCAL_TEST_DEVICE={DEVICE!r}: the backend tests run on 'cpu' or 'cuda'"
    try:
        import torch
    except ImportError:
        return "EINLOCAL_TEST_DEVICE=cuda needs torch to find the GPU; torch is not installed"
    if not torch.cuda.is_available():
        return "EINLOCAL_TEST_DEVICE=cuda but torch.cuda.is_available() is False"
    return None


@pytest.fixture
def device():
    """The device of the backend tests' arrays (EINLOCAL_TEST_DEVICE); on
    "cuda", skipped with the reason where there is no GPU."""
    reason = gpu_reason()
    if reason:
        pytest.skip(reason)
    return DEVICE


# The dtypes the backend tests check: on a GPU the half types too.
DTYPES = ["float64", "float32"] + (["float16", "bfloat16"] if DEVICE == "cuda" else [])


@pytest.fixture(autouse=True)
def _fresh_budget():
    el.set_memory_budget(None)
    yield
    el.set_memory_budget(None)
