"""Non-temporal stores in whole vectors: `numba_simd.vstore_nt` stores a
vector at once where its address is a multiple of the vector's bytes, and
the streaming kernels (a memory-bound forward, the one-pass backward) start
their vectors there (`numba_step.whole_vectors`), whatever the output's
address: every offset of ``out`` against the reference."""
import re

import numpy as np
import pytest

import einlocal as el
from einlocal import fast, registry
from einlocal.backends import numba_fused, numba_tiling

pytestmark = pytest.mark.compiled

NAME = "loops:numba"
if NAME in registry.unavailable():
    pytest.skip(f"{NAME}: {registry.unavailable()[NAME]}", allow_module_level=True)

import numba  # noqa: E402

from einlocal.backends.numba_simd import LANES, line_gap, vload, vstore_nt  # noqa: E402


def _at(raw: np.ndarray, k: int, shape) -> np.ndarray:
    """A C-ordered view of ``raw`` starting ``k`` elements past a 64-byte boundary."""
    first = (-(raw.ctypes.data // raw.itemsize)) % (64 // raw.itemsize)
    return raw[first + k:first + k + int(np.prod(shape))].reshape(shape)


@numba.njit
def _copy_run(dst, src, start, stop):
    """Copy ``src[start:stop]`` to ``dst`` with `vstore_nt`, from the first
    vector boundary on (the head and tail plainly); return that boundary."""
    h = line_gap(dst, start, 16)
    for e in range(start, start + h):
        dst[e] = src[e]
    e = start + h
    while e + 16 <= stop:
        vstore_nt(dst, e, vload(src, e, 16))
        e += 16
    for k in range(e, stop):
        dst[k] = src[k]
    return h


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_line_gap_and_the_stores_at_every_offset(dtype):
    """`line_gap` counts the elements to the next multiple of the vector's
    bytes, and `vstore_nt` writes the same values at every offset, whole or
    split."""
    item = np.dtype(dtype).itemsize
    src = np.arange(400, dtype=dtype)
    for start in range(40):
        dst = np.zeros(400, dtype)
        h = _copy_run(dst, src, start, 300)
        assert 0 <= h < 16 and (dst.ctypes.data + (start + h) * item) % (16 * item) == 0, (start, h)
        np.testing.assert_array_equal(dst[start:300], src[start:300])
        assert not dst[:start].any() and not dst[300:].any()


@pytest.fixture
def fresh(monkeypatch):
    """Non-temporal stores for every streamed output, and kernels built anew."""
    backend = registry.get(NAME)
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL_BYTES", 0)
    for cache in ("_kernels", "_one_passes", "_repeats"):
        monkeypatch.setattr(backend, cache, {})
    monkeypatch.setattr(fast, "_PREPARED", {})
    return backend


# rows a multiple of the vector (48) and not (36: the last vector moved back); on AMD (non-temporal
# stores only in the one pass, its second loop reading a copy of dy: dx's planes at one offset mod 1 KiB)
@pytest.mark.parametrize("w, amd", [(48, False), (36, False), (64, True)], ids=["rows-48", "rows-36", "amd-rows-64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_streamed_outputs_at_every_offset(fresh, monkeypatch, dtype, w, amd):
    """W1's layer (1x1, a bias): the forward's y and the one pass's dx
    written through ``out=`` at each offset from a vector boundary, against
    einsum; both kernels start their stores at the boundary (``line_gap``),
    the one pass in its first loop (on AMD in a loop of its own), its
    scratch and panel placed off x's page offset."""
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", not amd)
    monkeypatch.setattr(numba_tiling, "AWAY", True)
    op, rng = el.locally_connected2d, np.random.default_rng(5)
    x, wt = rng.standard_normal((3, 2, 16, w)), rng.standard_normal((2, 2, 1, 1, 16, w))
    b = rng.standard_normal((2, 16, w))
    dy = rng.standard_normal((3, 2, 16, w))
    want_y = op(x, wt, b, backend="einsum:numpy")
    want = el.vjp(op, dy, x, wt, b, backend="einsum:numpy")
    x, wt, b, dy = (a.astype(dtype) for a in (x, wt, b, dy))
    tol = 2e-5 if dtype == "float32" else 1e-12
    raw_y, raw_dx = np.full(x.size + 64, np.nan, dtype), np.full(x.size + 64, np.nan, dtype)
    for k in range(LANES[dtype]):
        y, dx = _at(raw_y, k, want_y.shape), _at(raw_dx, k, x.shape)
        op(x, wt, b, backend=NAME, out=y)
        np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol, err_msg=f"y {k} elements past a boundary")
        got = el.vjp(op, dy, x, wt, b, backend=NAME, out=(dx, np.empty_like(wt), np.empty_like(b)))
        for g, ref, name in zip(got, want, ("dx", "dweight", "dbias")):
            np.testing.assert_allclose(g, ref, rtol=tol, atol=tol, err_msg=f"{name}, out {k} elements past a boundary")
    forward = [k.source for k, _ in fresh._kernels.values() if "vstore_nt(a_y" in k.source]
    one_pass = [hit[0].source for hit in fresh._one_passes.values() if hit is not None]
    assert bool(forward) != amd and all("line_gap(a_y" in s for s in forward), forward
    assert one_pass and all("line_gap(a_dx" in s and ("in the same loop" in s) != amd and
                            ("vload(dyb" in s) == amd for s in one_pass), one_pass
    # the merged pass's scratch and panel placed past x's line (no 4K aliasing with x's loads)
    assert all(("acc = acc_[" in s and "wp = wp_[" in s and "a_x.ctypes.data" in s) != amd for s in one_pass), one_pass
    # tiles of 64 to 128 positions: vectors between the first and the last
    assert all(int(re.search(r"(\d+) positions a tile", s)[1]) >= 4 * LANES[dtype] for s in one_pass), one_pass


# rows of 64: tiles of 128 positions, a multiple of two and four vectors; rows of 36: not always
@pytest.mark.parametrize("w", [64, 36], ids=["rows-64", "rows-36"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_vectors_of_a_line_stored_together(fresh, monkeypatch, dtype, w):
    """Where a vector is narrower than a cache line (AVX2; here a line taken
    as two and four vectors), the one pass stores a line's vectors one after
    another at its last vector, where the tile is a multiple of them: dx at
    every offset from a vector boundary against einsum, and the groups in
    the source exactly there."""
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", True)
    op, rng = el.locally_connected2d, np.random.default_rng(6)
    x, wt = rng.standard_normal((3, 2, 16, w)), rng.standard_normal((2, 2, 1, 1, 16, w))
    b, dy = rng.standard_normal((2, 16, w)), rng.standard_normal((3, 2, 16, w))
    want = el.vjp(op, dy, x, wt, b, backend="einsum:numpy")
    x, wt, b, dy = (a.astype(dtype) for a in (x, wt, b, dy))
    tol = 2e-5 if dtype == "float32" else 1e-12
    L, item = LANES[dtype], np.dtype(dtype).itemsize
    for span in (2, 4):
        monkeypatch.setattr(numba_fused, "LINE_BYTES", span * L * item)
        for cache in (fresh._kernels, fresh._one_passes, fresh._repeats, fast._PREPARED):
            cache.clear()       # every kernel built for this line
        raw = np.full(x.size + 64, np.nan, dtype)
        for k in range(L):
            dx = _at(raw, k, x.shape)
            got = el.vjp(op, dy, x, wt, b, backend=NAME, out=(dx, np.empty_like(wt), np.empty_like(b)))
            for g, ref, name in zip(got, want, ("dx", "dweight", "dbias")):
                np.testing.assert_allclose(g, ref, rtol=tol, atol=tol,
                                           err_msg=f"{name}, {span} vectors a line, out {k} elements past a boundary")
        sources = [hit[0].source for hit in fresh._one_passes.values() if hit is not None]
        tiles = [int(re.search(r"(\d+) positions a tile", s)[1]) for s in sources]
        assert sources and all((f"if e % {span * L} == {(span - 1) * L}:" in s) == (t % (span * L) == 0) ==
                               (f"a line of {span} vectors stored together" in s)
                               for s, t in zip(sources, tiles)), sources
        assert w != 64 or all(t % (span * L) == 0 for t in tiles), tiles
