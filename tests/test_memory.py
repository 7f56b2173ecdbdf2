"""einlocal.memory peaks (real for numpy and RSS, fake devices for GPUs) and einlocal.machine."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from einlocal import machine
from einlocal.memory import (
    METHODS,
    Peak,
    choose_method,
    peak_cupy,
    peak_jax,
    peak_rss_subprocess,
    peak_torch_cuda,
    peak_tracemalloc,
)

MB = 10**6


def test_tracemalloc_peak_of_an_8_mb_array():
    peak = peak_tracemalloc(lambda: np.ones(MB, dtype=np.float64))
    assert peak.method == "tracemalloc"
    assert 8 * MB <= peak.bytes < 16 * MB


def test_tracemalloc_ignores_what_was_live_before():
    live = np.ones(4 * MB)  # 32 MB already allocated
    peak = peak_tracemalloc(lambda: np.ones(1000))
    assert peak.bytes < MB and live.size


def test_rss_subprocess_measures_above_the_setup_baseline():
    setup = "import numpy as np; big = np.ones(12 * 10**6)"  # ~96 MB, not counted
    call = "x = np.ones(5 * 10**6); x += 1"  # 40 MB touched
    peak = peak_rss_subprocess(setup, call, timeout_s=60)
    assert peak.method == "peak RSS (subprocess)"
    assert 35 * MB <= peak.bytes < 80 * MB


def test_rss_subprocess_reports_a_failing_child():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        peak_rss_subprocess("", "1 / 0", timeout_s=60)


def test_torch_cuda_peak_from_fake_allocator(monkeypatch):
    calls = []
    state = {"allocated": 100, "max": 500}

    def fn():
        calls.append("fn")
        state["max"] = 100 + 4096

    cuda = types.SimpleNamespace(
        synchronize=lambda d=None: calls.append("sync"),
        reset_peak_memory_stats=lambda d=None: (calls.append("reset"), state.update(max=100)),
        memory_allocated=lambda d=None: state["allocated"],
        max_memory_allocated=lambda d=None: state["max"],
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    peak = peak_torch_cuda(fn, "cuda:0")
    assert peak == Peak(4096, "cuda max_memory_allocated")
    assert calls == ["sync", "reset", "fn", "sync"]


def test_cupy_peak_from_fake_pool(monkeypatch):
    pool = types.SimpleNamespace(total=3000, used=1000)
    fake_pool = types.SimpleNamespace(
        free_all_blocks=lambda: setattr(pool, "total", pool.used),
        used_bytes=lambda: pool.used,
        total_bytes=lambda: pool.total,
    )
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cupy = types.SimpleNamespace(get_default_memory_pool=lambda: fake_pool,
                                 cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    monkeypatch.setitem(sys.modules, "cupy", cupy)

    def fn():  # allocate 5000 bytes, free them: the pool keeps the blocks
        pool.total += 5000

    assert peak_cupy(fn) == Peak(5000, "cupy pool")


def test_jax_peak_from_fake_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(block_until_ready=lambda r: r))
    stats = {"bytes_in_use": 1000, "peak_bytes_in_use": 2000}
    device = types.SimpleNamespace(memory_stats=lambda: dict(stats))

    def fn():
        stats["peak_bytes_in_use"] = 1000 + 777

    assert peak_jax(fn, device) == Peak(777, "jax memory_stats")
    cpu = types.SimpleNamespace(memory_stats=lambda: None)
    with pytest.raises(RuntimeError, match="memory_stats"):
        peak_jax(fn, cpu)


@pytest.mark.parametrize("engine, device, method", [
    ("numpy", "cpu", "tracemalloc"),
    ("torch", "cpu", "peak RSS (subprocess)"),
    ("numba", "cpu", "peak RSS (subprocess)"),
    ("torch", "cuda:0", "cuda max_memory_allocated"),
    ("cupy", "cuda", "cupy pool"),
    ("jax", "cuda", "jax memory_stats"),
])
def test_choose_method(engine, device, method):
    assert choose_method(engine, device) == method and method in METHODS


def test_choose_method_rejects_unknown_pairs():
    with pytest.raises(ValueError, match="valid: numpy/cpu"):
        choose_method("cupy", "cpu")


# -- machine ----------------------------------------------------------------------


def test_roofline_time_and_fraction():
    # 2 GFLOP at 100 GFLOP/s = 20 ms; 1 GB at 10 GB/s = 100 ms: memory bound
    kw = dict(bandwidth=10e9, rate=100e9)
    assert machine.roofline_time(2e9, 1e9, **kw) == pytest.approx(0.1)
    assert machine.roofline_fraction(0.4, 2e9, 1e9, **kw) == pytest.approx(0.25)
    assert machine.roofline_time(2e10, 1e6, **kw) == pytest.approx(0.2)


def test_an_op_whose_bytes_fit_in_the_cache_has_the_caches_bandwidth_for_roof():
    kw = dict(bandwidth=10e9, rate=100e9, cache_bandwidth=40e9, cache_bytes=32 * 2**20)
    assert machine.roofline_time(0.0, 16 * 2**20, **kw) == pytest.approx(16 * 2**20 / 40e9)
    assert machine.roofline_time(0.0, 64 * 2**20, **kw) == pytest.approx(64 * 2**20 / 10e9)
    assert machine.roofline_fraction(0.01, 0.0, 64 * 2**20, **{**kw, "cache_bandwidth": None}) == \
        pytest.approx(64 * 2**20 / 10e9 / 0.01)


def test_roof_measures_dram_and_cache_copies_and_says_how_it_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "llc_bytes", lambda: 4 * 2**20)
    monkeypatch.setattr(machine, "copy_bandwidth", lambda nbytes=256 * 2**20, **kw: 1e9 * (1 + (nbytes < 2**24)))
    monkeypatch.setattr(machine, "matmul_rate", lambda **kw: 5e10)
    r = machine.roof()
    assert r == {"bandwidth": 1e9, "rate": 5e10, "cache_bandwidth": 2e9, "cache_bytes": 4 * 2**20}
    text = machine.roof_text(r)
    assert "1.0 GB/s (DRAM)" in text and "2.0 GB/s (last-level cache)" in text and "4 MiB" in text
    assert "(last-level cache)" not in machine.roof_text({**r, "cache_bandwidth": None})


def test_measurements_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path))
    assert machine.cache_dir() == tmp_path
    first = machine.copy_bandwidth(2**20, repeats=2)
    assert first > 0 and machine.copy_bandwidth(2**20, repeats=2) == first
    rate = machine.matmul_rate(64, repeats=2)
    data = json.loads((tmp_path / "machine.json").read_text())
    (entry,) = data.values()
    assert entry == {"copy_bandwidth:1048576": first, "matmul_rate:64": rate}
    assert machine.copy_bandwidth(2**20, repeats=2, refresh=True) > 0


def test_machine_info_imports_no_framework():
    code = ("import sys, json; from einlocal.machine import machine_info; i = machine_info();"
            "print(json.dumps([i['versions']['numpy'], i['cores'],"
            " sorted(m for m in ('torch', 'jax', 'cupy', 'numba', 'triton') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    numpy_version, cores, loaded = json.loads(out.stdout)
    assert numpy_version == np.__version__ and cores >= 1 and loaded == []


def test_the_cpu_is_named_with_its_family_model_and_vector_unit(tmp_path):
    from einlocal.machine import _cpu_model
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "flags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert _cpu_model(str(info)) == "AMD EPYC (family 25 model 1, AVX2)"
    info.write_text("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: avx2 avx512f\n")
    assert _cpu_model(str(info)) == "AMD EPYC (family 25 model 17, AVX-512)"
    assert _cpu_model(str(tmp_path / "missing"))        # no /proc: the platform's name


def test_cache_sizes_are_read_by_level_and_type(tmp_path):
    """Each cache level's size from sysfs: the data (or unified) cache, not
    the instruction cache of the same level; None where sysfs does not say."""
    from einlocal.machine import cache_bytes
    for k, (level, kind, size) in enumerate([(1, "Instruction", "32K"), (1, "Data", "48K"), (2, "Unified", "2048K"),
                                             (3, "Unified", "480M")]):
        (tmp_path / f"index{k}").mkdir()
        for name, text in (("level", f"{level}\n"), ("type", f"{kind}\n"), ("size", f"{size}\n")):
            (tmp_path / f"index{k}" / name).write_text(text)
    assert [cache_bytes(n, str(tmp_path)) for n in (1, 2, 3, 4)] == [48 * 2**10, 2 * 2**20, 480 * 2**20, None]
    assert cache_bytes(2, str(tmp_path / "missing")) is None
