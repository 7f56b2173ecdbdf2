"""loops:numba's tiled kernels ask for the next register block's output lines,
owned, while a block's sums run (``numba_step.write_ahead``).  A prefetch
changes no result, so the kernels are run here as plain Python, the
``numba_simd`` calls spelt in numpy, and what they prefetch is checked
against what the next block stores; their outputs against the compiled
kernel's."""
import re
from types import SimpleNamespace

import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.backends.loops_numba import _c_strides, lowered

pytestmark = pytest.mark.compiled

NAME = "loops:numba"
if NAME in registry.unavailable():
    pytest.skip(f"{NAME}: {registry.unavailable()[NAME]}", allow_module_level=True)


class _Run:
    """One kernel's source run as Python: ``events`` records, in order, each
    line of ``out`` prefetched for a write ('w') and stored to ('s')."""

    def __init__(self, source: str, out: np.ndarray):
        self.out, self.events, self.arrays = out, [], {}
        ns = dict(np=np, numba=SimpleNamespace(carray=self._carray, float32=np.float32, float64=np.float64),
                  Tiled=lambda tiles, count, dtype: (tiles, count), **{f.__name__: f for f in self._simd()})
        body = "\n".join(ln for ln in source.splitlines() if not ln.startswith(("import numba", "from einlocal")))
        exec(compile(body, "<kernel>", "exec"), ns)
        self.tiles, self.count = ns["kernel"]

    def _carray(self, ptr, shape, dtype):
        return self.arrays[ptr][:shape[0]]

    def _lines(self, arr, lo, hi):
        """The cache lines of elements ``lo .. hi-1`` of ``arr`` where it is the output."""
        if not self.out.ctypes.data <= arr.ctypes.data < self.out.ctypes.data + self.out.nbytes:
            return range(0)
        return range((arr.ctypes.data + lo * arr.itemsize) // 64, (arr.ctypes.data + (hi - 1) * arr.itemsize) // 64 + 1)

    def _simd(self):
        run = self

        def vsplat(x, lanes):
            return np.full(lanes, x)

        def vload(arr, off, lanes):
            return arr[off:off + lanes].copy()

        def vload_lanes(arr, off, lanes, lo, hi):
            v = np.zeros(lanes, arr.dtype)
            v[lo:hi] = arr[off + lo:off + hi] if hi > lo else 0
            return v

        def vload_into(arr, off, lo, hi, prev):
            v = prev.copy()
            v[lo:hi] = arr[off + lo:off + hi] if hi > lo else v[lo:hi]
            return v

        def vload_bits(arr, off, lanes, bits):
            return np.array([arr[off + k] if bits >> k & 1 else 0 for k in range(lanes)], arr.dtype)

        def vstore_lanes(arr, off, v, lo, hi):
            if hi > lo:
                arr[off + lo:off + hi] = v[lo:hi]
                run.events += [("s", ln) for ln in run._lines(arr, off + lo, off + hi)]

        def vstore(arr, off, v):
            vstore_lanes(arr, off, v, 0, len(v))

        def prefetchw(arr, off):
            run.events += [("w", ln) for ln in run._lines(arr, off, off + 1)]

        def sload(arr, off):
            return arr[off]

        def sstore(arr, off, x):
            arr[off] = x
            run.events += [("s", ln) for ln in run._lines(arr, off, off + 1)]

        def vfma(a, b, c):
            return a * b + c

        def vsum(v):
            return v.sum()

        def prefetch(arr, off):
            pass
        return (vsplat, vload, vload_lanes, vload_into, vload_bits, vstore_lanes, vstore, prefetchw, sload, sstore,
                vfma, vsum, prefetch)

    def __call__(self, *operands):
        arrays = (self.out, *operands)
        self.arrays = {a.ctypes.data: a.reshape(-1) for a in arrays}
        for t in range(self.count):
            self.tiles(*(a.ctypes.data for a in arrays), t)


CASES = {
    # lanes across rows (numba_rows): 5 blocks of 6 images a tile, a vector over up to 4 rows of 5
    "rows-forward": (el.locally_connected2d, dict(x=(26, 4, 12, 7), weight=(4, 4, 3, 3, 10, 5)), "forward"),
    # the row's own vectors (numba_tiles): W2's input gradient, smaller; rows of 36, three or more vectors
    "tiles-dx": (el.locally_connected2d, dict(x=(26, 8, 6, 36), weight=(8, 8, 3, 3, 4, 34)), "dx"),
}


@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_next_block_lines_asked_for_while_a_block_sums(case, monkeypatch):
    """Every line a block stores was asked for while the block before it in
    the same loop summed: each store of a block but the first of its loop
    finds its line prefetched for a write just before.  And the kernel run
    as Python gives the compiled kernel's output."""
    from einlocal.backends import numba_tiling
    monkeypatch.setattr(numba_tiling, "PACK_MIN_REUSE", 4)
    monkeypatch.setattr(numba_tiling, "PACK_MIN_BYTES", 0)
    op, kw, which = CASES[case]
    arrays = {k: np.zeros(v) for k, v in kw.items()}
    call = op.bind(arrays["x"], arrays["weight"])
    plan = lowered(call.plan if which == "forward" else call.plan.backward[which[1:]])
    strides = {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands}
    kernel, compiled = registry.get(NAME)._compiled(plan, "float32", strides, _c_strides(plan.out_shape))
    assert "written ahead a block" in kernel.source.splitlines()[2], kernel.source.splitlines()[2]
    inner = re.search(r"^\s*j_(\w+) = ", kernel.source, re.M).group(1)
    trips = int(re.search(rf"for t_{inner} in range\((\d+)\)", kernel.source).group(1))
    assert trips >= 3, kernel.source

    rng = np.random.default_rng(5)
    ops = [rng.standard_normal(plan.shape[a.name]).astype(np.float32) for a in plan.stmt.operands]
    want = np.zeros(plan.out_shape, np.float32)
    compiled(want, *ops)
    run = _Run(kernel.source, np.zeros(plan.out_shape, np.float32))
    run(*ops)
    np.testing.assert_allclose(run.out, want, rtol=1e-5, atol=1e-5)

    # the events as blocks: the prefetches during a block's sums, then its stores
    blocks, asked, stored = [], set(), set()
    for kind, line in run.events + [("w", None)]:
        if kind == "w" and stored:
            blocks.append((asked, stored))
            asked, stored = set(), set()
        (asked if kind == "w" else stored).add(line)
    covered = [stored <= prev_asked for (prev_asked, _), (_, stored) in zip(blocks, blocks[1:])]
    firsts = len(blocks) // trips      # a block that starts its loop was asked for by no block before it
    assert len(blocks) >= 2 * trips and sum(not c for c in covered) <= firsts, (len(blocks), trips, covered)
