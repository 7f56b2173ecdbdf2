"""loops:numba: both kinds of generated nest (the register-tiled SIMD tiles
and the general loop nest) against the float64 reference, which one each
statement gets, the parallel-loop choice against the write-conflict
analysis, CPU torch tensors without copies, the on-disk kernel cache across
processes, and errors that carry the generated source.  Shapes are few and
small: every distinct plan is a numba compile."""
import contextlib
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import einlocal as el
from einlocal import registry
from einlocal.backends.loops_numba import _c_strides, lowered
from einlocal.backends.numba_simd import LANES

pytestmark = pytest.mark.compiled

NAME = "loops:numba"
if NAME in registry.unavailable():
    pytest.skip(f"{NAME}: {registry.unavailable()[NAME]}", allow_module_level=True)


@pytest.fixture(scope="module")
def numba_backend():
    return registry.get(NAME)


@contextlib.contextmanager
def _form(form):
    """Run loops:numba with the tiled nests ("tiled") or the general nest only."""
    b = registry.get(NAME)
    before, b.tiled = b.tiled, form == "tiled"
    try:
        yield b
    finally:
        b.tiled = before


def _check(op, dtype="float64", form="tiled", **kw):
    with _form(form):
        report = el.check(op, backends=[NAME], dtype=dtype, seed=1234, **kw)
    assert report.rows[0].status == "pass", str(report)
    assert report.ok, str(report)


def _plans(op, **kw):
    arrays = {k: np.zeros(v) for k, v in kw.items() if k in ("x", "weight", "bias")}
    params = {k: v for k, v in kw.items() if k not in arrays}
    call = op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **params)
    return {"forward": call.plan, **{f"d{k}": p for k, p in call.plan.backward.items()}}


# -- differential tests ------------------------------------------------------------------

CASES = {
    # Cout > 1, overlapping windows (kernel 3, stride 2), padding: dx is a scatter
    "lc2d-stride2-pad1": (el.locally_connected2d, dict(x=(2, 3, 9, 9), weight=(4, 3, 3, 3, 5, 5), stride=2, padding=1)),
    "lc2d-dilation2": (el.locally_connected2d, dict(x=(2, 2, 9, 8), weight=(3, 2, 3, 2, 5, 6), dilation=2)),
    "lc1d-stride2-bias": (el.locally_connected1d, dict(x=(2, 3, 11), weight=(2, 3, 3, 5), bias=(2, 5), stride=2)),
    "depthwise-m2-pad1-stride2": (el.depthwise_conv2d, dict(x=(2, 3, 8, 8), weight=(6, 1, 3, 3), padding=1, stride=2,
                                                            bias=(6,))),
    "conv2d-groups2-dilation2": (el.conv2d, dict(x=(2, 4, 9, 9), weight=(4, 2, 3, 3), groups=2, dilation=2, padding=1)),
}


@pytest.mark.parametrize("form", ["tiled", "general"])
@pytest.mark.parametrize("case", list(CASES), ids=str)
def test_catalogue_float64(case, form):
    op, kw = CASES[case]
    _check(op, "float64", form, **kw)


@pytest.mark.parametrize("case", ["lc2d-stride2-pad1", "depthwise-m2-pad1-stride2"], ids=str)
def test_catalogue_float32(case):
    op, kw = CASES[case]
    _check(op, "float32", **kw)


def test_user_op_with_pad():
    op = el.Op("y[b,o,t] += x[b,c,2*t+3*k-2] * w[o,c,k,t]", pad=0)
    _check(op, "float64", x=(2, 3, 14), w=(4, 3, 3, 6))


# -- which nest -----------------------------------------------------------------------------

def _case_plans(op, kw):
    """A catalogue op's or a statement's plans (forward and each gradient) for these shapes."""
    if isinstance(op, el.Op):
        plan = op.bind_arrays({k: np.zeros(v) for k, v in kw.items()}, {}).plan
        return {"forward": plan, **{f"d{k}": p for k, p in plan.backward.items()}}
    return _plans(op, **kw)


def _header(k) -> str:
    return k.source.splitlines()[2]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiles_for_the_report_layers(numba_backend, dtype):
    """Stride-1 layers: forward, weight gradient and the input gradient's
    gather form are all tiles; a depthwise weight gradient (a 3x3 output
    summed over the image) vectorises along the sum."""
    lc = _plans(el.locally_connected2d, x=(10, 3, 18, 18), weight=(4, 3, 3, 3, 16, 16))
    dw = _plans(el.depthwise_conv2d, x=(2, 3, 20, 20), weight=(6, 1, 3, 3), padding=1)
    lanes = LANES[dtype]     # 8 or 16 float32 lanes (AVX2 or AVX-512); every vector axis here is >= 16
    for plan in (*lc.values(), dw["forward"], dw["dx"]):
        head = _header(numba_backend.kernel(plan, dtype=dtype))
        assert f"map form: {lanes} lanes along" in head, (str(plan), head)
    assert f"reduce form: {lanes} lanes along w" in _header(numba_backend.kernel(dw["dwt"], dtype=dtype))
    src = numba_backend.source(dw["forward"], dtype=dtype)
    assert "vload_lanes" in src and "if " in src          # padding: edge tiles load the lanes inside


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interior_tiles_read_plainly(numba_backend, dtype):
    """An input gradient's tile whose reads of dy all lie inside it (along
    the vector too) loads plain vectors; one past an edge along the vector
    only masks those lanes; one past another axis's edge tests each tap
    (the reference tests run all three)."""
    plan = _plans(el.locally_connected2d, x=(10, 3, 18, 18), weight=(4, 3, 3, 3, 16, 16))["dx"]
    src = numba_backend.source(plan, dtype=dtype)
    inside, rest = src.split("\n                    elif ", 1)
    inside = inside.split("\n                    if i_h >= ", 1)[1]
    lanes, edge = rest.split("\n                    else:", 1)
    assert "vload(a_dy, " in inside and "vload_lanes" not in inside, inside
    assert "vload_lanes(a_dy, " in lanes and "continue" not in lanes, lanes
    assert "vload_lanes(a_dy, " in edge and "continue" in edge, edge


def test_memory_bound_statements_stream(numba_backend):
    """Under one flop per byte each element is used about once.  A 1x1
    layer's sum unrolls: a streaming tile reads the input once for every
    output channel (blocked whole), in memory order, parallel over the rows
    both operands read (the weight, the same for every image, read once).  A long
    sum (a weight gradient's batch) is looped outside the vector.  A 3x3
    layer on one image sums 27 terms per output: the general nest streams."""
    lc1 = _plans(el.locally_connected2d, x=(16, 4, 8, 16), weight=(2, 4, 1, 1, 8, 16))
    for name in ("forward", "dx"):
        plan = lc1[name]
        assert plan.flops() < plan.min_elements() * 4
        head = _header(numba_backend.kernel(plan, dtype="float32"))
        assert "map form (streaming: memory-bound" in head and f"): {LANES['float32']} lanes along w" in head, \
            (name, head)
        assert ("blocks ox2" if name == "forward" else "blocks cx4") in head and "prange over: h" in head, head
        assert "vstore_nt" not in numba_backend.source(plan, dtype="float32")     # 16 KB: stays in cache
    # taller: a tile takes rows of h (at least 8 tiles), inside the batch
    plan = _plans(el.locally_connected2d, x=(16, 4, 24, 16), weight=(2, 4, 1, 1, 24, 16))["forward"]
    src = numba_backend.source(plan, dtype="float32")
    assert "3 h a tile" in _header(numba_backend.kernel(plan, dtype="float32")), src[:400]
    body = src[src.index("for t_n in"):]       # (the weight's panel is filled before it)
    assert body.index("for r in range(3):") < body.index("for t_w in"), src
    # a batch of 20 is too long to unroll: dW sums it outside the vector, into a scratch of rows
    plan = _plans(el.locally_connected2d, x=(20, 3, 64, 32), weight=(2, 3, 1, 1, 64, 32))["dwt"]
    head = _header(numba_backend.kernel(plan, dtype="float32"))
    assert "n summed outside the vector into a scratch of 8 h" in head and "blocks ox2, cx3" in head, head
    plan = _plans(el.locally_connected2d, x=(1, 3, 12, 12), weight=(4, 3, 3, 3, 10, 10))["forward"]
    assert plan.flops() < plan.min_elements() * 4
    assert "numba_codegen" in numba_backend.kernel(plan, dtype="float32").source


def test_large_streamed_outputs_are_stored_non_temporally(numba_backend, monkeypatch):
    """A streaming tile's output larger than NONTEMPORAL_BYTES is written
    with non-temporal stores where the host takes them (not on AMD:
    `numba_simd.NONTEMPORAL_STORES`), the tile ending with a fence; the
    weight gradient, summed in a scratch, stores only its finished rows so."""
    from einlocal.backends import numba_tiling
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", True)
    lc1 = _plans(el.locally_connected2d, x=(32, 4, 128, 128), weight=(2, 4, 1, 1, 128, 128))   # y: 4 MiB float32
    for name in ("forward", "dx"):
        src = numba_backend.source(lc1[name], dtype="float32")
        assert "vstore_nt(a_" in src and "vstore(a_" not in src and src.count("sfence()") == 1, src[:600]


def test_edge_tiles_skip_taps_read_wholly_outside(numba_backend):
    """An edge tile's looped body skips a tap whose reads of an operand all
    lie outside it (W2's input gradient: rows 0, 1, 26 and 27 read dy's
    rows h - i only for some i): the test comes before the tap's loads."""
    src = numba_backend.source(_plans(el.locally_connected2d, x=(6, 2, 8, 20), weight=(2, 2, 3, 3, 6, 18))["dx"],
                               dtype="float32")
    edge = src[src.index("for i_i in range(3):"):]
    assert "if not (0 <= i_h - 1*i_i < 6):" in edge and edge.index("continue") < edge.index("vload")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_temporal_stores_against_the_reference(monkeypatch, dtype):
    """With every streamed output stored non-temporally (the threshold at 0):
    forward, both gradients and the bias against the reference, rows of 10
    (the last vector overlapping the one before: two stores to some
    elements); each gradient also alone (the second case's, asked for
    together, run in one pass: `numba_fused`)."""
    from einlocal.backends import numba_tiling
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", True)
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL_BYTES", 0)
    cases = [dict(x=(5, 3, 6, 10), weight=(2, 3, 1, 1, 6, 10), bias=(2, 6, 10)),
             dict(x=(20, 3, 4, 48), weight=(2, 3, 1, 1, 4, 48))]
    rng = np.random.default_rng(2)
    for kw in cases:
        _check(el.locally_connected2d, dtype, "tiled", **kw)
        args = [rng.standard_normal(kw[k]) for k in ("x", "weight", "bias") if k in kw]
        dy = rng.standard_normal(el.locally_connected2d(*args, backend="einsum:numpy").shape)
        want = el.vjp(el.locally_connected2d, dy, *args, backend="einsum:numpy")
        for k, arg in enumerate(("x", "weight")):
            got = el.vjp(el.locally_connected2d, dy.astype(dtype), *(a.astype(dtype) for a in args), backend=NAME,
                         wrt=arg)[k]
            tol = 2e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(got, want[k], rtol=tol, atol=tol, err_msg=arg)
    b = registry.get(NAME)
    for kw in cases:
        for plan in _plans(el.locally_connected2d, **kw).values():
            runs = [k.source for key, (k, _) in b._kernels.items() if key[0] == lowered(plan) and key[1] == dtype]
            assert runs and all("vstore_nt(a_" in src and "sfence()" in src for src in runs), plan


# A slice shared by a tile's inner loops, packed into a panel (numba_tiling.PACK): the
# passes expected packed for each case; padding makes dx's packed weight read outside it.
PACKED = {
    "lc2d-pad1-bias": (el.locally_connected2d, dict(x=(26, 3, 10, 18), weight=(4, 3, 3, 3, 10, 18), padding=1,
                                                    bias=(4, 10, 18)), ("forward", "dx", "dwt")),
    "lc2d-dilation-pad-h": (el.locally_connected2d, dict(x=(26, 2, 12, 20), weight=(5, 2, 3, 2, 12, 18),
                                                         padding=(1, 0), dilation=(1, 2)), ("forward", "dwt")),
    # only the packed operand is read outside its bounds: its zeros come from the panel alone
    "user-op-padded-weight": (el.Op("y[n,o,h,w] += x[n,c,h,w] * k[o,c,h+i-1,w]", pad=0),
                              dict(x=(26, 8, 6, 20), k=(8, 8, 6, 20)), ("forward", "dx")),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(PACKED), ids=str)
def test_packed_panels_against_the_reference(numba_backend, case, dtype, monkeypatch):
    """Where a tile's operand slice is shared by the tiles inside it (a
    weight by every batch block), it is copied once into a panel the tiles
    read, one panel a vector with the vectors inside the sharing loops,
    reads outside the operand as zeros, and the other operand is
    prefetched ahead: forward and both gradients against the reference
    (shapes too small for the thresholds, lowered here)."""
    from einlocal.backends import numba_tiling
    monkeypatch.setattr(numba_tiling, "PACK_MIN_REUSE", 4)
    monkeypatch.setattr(numba_tiling, "PACK_MIN_BYTES", 0)
    op, kw, packed = PACKED[case]
    plans = _case_plans(op, kw)
    heads = {k: _header(numba_backend.kernel(p, dtype=dtype)) for k, p in plans.items()}
    for name in packed:
        assert "packed per tile of" in heads[name] and "one panel each" in heads[name], (name, heads[name])
    assert not case.startswith("lc2d") or any("prefetched" in h for h in heads.values()), heads
    _check(op, dtype, "tiled", **kw)


# Lanes across rows (numba_tiling.ROWS): the vector runs along u*pitch + v, a packed
# slice gathered a row at a time; rows of 5 to 12 outputs, 2 to 4 rows a vector.
ROWS = {
    "lc2d-bias": (el.locally_connected2d, dict(x=(26, 3, 10, 14), weight=(4, 3, 3, 3, 8, 12), bias=(4, 8, 12))),
    "lc2d-narrow": (el.locally_connected2d, dict(x=(26, 4, 12, 7), weight=(4, 4, 3, 3, 10, 5))),
    "lc2d-stride-h": (el.locally_connected2d, dict(x=(26, 3, 17, 7), weight=(4, 3, 3, 3, 8, 5), stride=(2, 1))),
    "lc2d-dilation-w": (el.locally_connected2d, dict(x=(26, 3, 9, 14), weight=(4, 3, 3, 3, 7, 10), dilation=(1, 2))),
    "user-op": (el.Op("y[n,o,a,b] += x[n,c,a+i,b] * k[o,c,i,a,b]"), dict(x=(26, 6, 8, 12), k=(6, 6, 3, 6, 12))),
    # the operand not packed read outside its bounds: per tap, the lanes inside as one mask
    "lc2d-same": (el.locally_connected2d, dict(x=(26, 6, 7, 9), weight=(4, 6, 3, 3, 7, 9), padding=1)),
    # rows of 20, y's and the weight's rows one span: interior vectors read x unmasked
    "lc2d-same-wide": (el.locally_connected2d, dict(x=(26, 6, 5, 20), weight=(4, 6, 3, 3, 5, 20), padding=1)),
    "lc2d-pad-dilation": (el.locally_connected2d, dict(x=(26, 6, 9, 7), weight=(4, 6, 3, 3, 9, 7), padding=2,
                                                       dilation=2)),
    "lc2d-pad-h-bias": (el.locally_connected2d, dict(x=(26, 4, 12, 6), weight=(4, 4, 3, 2, 12, 5), padding=(1, 0),
                                                     bias=(4, 12, 5))),
    "user-op-pad": (el.Op("y[n,o,a,b] += x[n,c,a+i-1,b] * k[o,c,i,a,b]", pad=0),
                    dict(x=(26, 6, 8, 12), k=(6, 6, 3, 8, 12))),
    # several tiles of o: every tile's panels packed first, o looped inside n (numba_rows.OWN_INSIDE)
    "lc2d-many-o": (el.locally_connected2d, dict(x=(26, 3, 10, 14), weight=(13, 3, 3, 3, 8, 12), bias=(13, 8, 12))),
    "lc2d-same-many-o": (el.locally_connected2d, dict(x=(26, 4, 7, 9), weight=(13, 4, 3, 3, 7, 9), padding=1)),
}


_ROWS_RUNS = {"float32": ("float32", None, True), "float64": ("float64", None, True),
              "float32-3-vectors-a-tile": ("float32", 3, True), "float32-own-tiles-outside": ("float32", 3, False)}


@pytest.mark.parametrize("case, dtype, chunk, inside",
                         [(c, *run) for c in ROWS for k, run in _ROWS_RUNS.items() if run[2] or "many-o" in c],
                         ids=[f"{c}-{k}" for c in ROWS for k, run in _ROWS_RUNS.items() if run[2] or "many-o" in c])
def test_lanes_across_rows_against_the_reference(numba_backend, case, dtype, chunk, inside, monkeypatch):
    """A packed tile over rows shorter than the vector runs its lanes across
    rows: the packed slice gathered and the sums stored one masked piece a
    row, the lanes past a row's end never stored, the last vector's reads
    of the other operand masked (and where it is read outside its bounds,
    each tap's lanes inside them); with ``chunk``, 3 vectors a tile, each
    its own panel (the vectors spread evenly: 2 or 3 a tile where 3 do
    not divide them); with
    several tiles of o, every tile's panels packed first and o looped
    inside n, or (``inside`` off) each tile's panel packed in turn.
    Forward and both gradients (with the bias) against the reference."""
    from einlocal.backends import numba_rows, numba_tiling
    if chunk is not None:
        monkeypatch.setattr(numba_rows, "CHUNK", chunk)
        monkeypatch.setattr(numba_backend, "_kernels", {})    # built afresh, with the chunk
    monkeypatch.setattr(numba_rows, "OWN_INSIDE", inside)
    monkeypatch.setattr(numba_tiling, "PACK_MIN_REUSE", 4)
    monkeypatch.setattr(numba_tiling, "PACK_MIN_BYTES", 0)
    # whether the form pays depends on the host's vector width (rows of 12
    # fill three 4-lane float64 vectors exactly): here it is taken always
    monkeypatch.setattr(numba_tiling, "ROWS_GAIN", 0.0)
    op, kw = ROWS[case]
    plans = _case_plans(op, kw)
    head = _header(numba_backend.kernel(plans["forward"], dtype=dtype))
    assert "numba_rows" in numba_backend.source(plans["forward"], dtype=dtype) and " lanes along " in head \
        and "+" in head.split(" lanes along ")[1].split()[0], head
    if chunk is not None:
        assert re.search(r"; (2|3|2-3) vectors a tile", head), head
    assert ("packed first, looped inside n" in head) == (inside and "many-o" in case), head
    _check(op, dtype, "tiled", **kw)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_one_span_and_plain_interior(numba_backend, dtype, monkeypatch):
    """Where y's and the weight's rows follow each other (padding 'same'), a
    vector over two rows is stored and gathered as one span; the vectors
    whose taps all lie inside x run a copy of the loops with plain loads
    (the reference test above runs this case: lc2d-same-wide)."""
    from einlocal.backends import numba_tiling
    monkeypatch.setattr(numba_tiling, "PACK_MIN_REUSE", 4)
    monkeypatch.setattr(numba_tiling, "PACK_MIN_BYTES", 0)
    monkeypatch.setattr(numba_tiling, "ROWS_GAIN", 0.0)
    op, kw = ROWS["lc2d-same-wide"]
    full = (1 << LANES[dtype]) - 1          # every lane's bit: 255 or 65535 for float32 (AVX2 or AVX-512)
    src = numba_backend.source(_case_plans(op, kw)["forward"], dtype=dtype)
    assert "numba_rows" in src and "hm = max(h0" in src, src
    assert "vstore_lanes(a_y, " in src and "+ p0, s0, l0, hm)" in src and "l1, h1)" not in src, src
    assert f"if (m0 & m1 & " in src and f") == {full}:" in src, src
    interior = src.split(f") == {full}:")[1].split("else:")[0]
    assert "vload(a_x, " in interior and "vload_bits" not in interior, interior


def test_vectors_a_tile():
    """W2's forward: 91 vectors of 8, rows 28 apart, a 18 KB panel each: 10
    a tile on 2 threads (5 tiles each), 8 on 4 (3 tiles each), fewer
    where the vectors are few; one where the panels would not fit in L2."""
    from einlocal.backends.numba_rows import chunk
    assert chunk(8, 28, 91, 18432, 2) == 10
    assert chunk(8, 28, 91, 18432, 4) == 8
    assert chunk(8, 28, 12, 18432, 2) == 3
    assert chunk(8, 28, 91, 200 * 1024, 2) == 1
    assert chunk(8, 28, 3, 18432, 2) == 1


@pytest.mark.parametrize("T, K", [(46, 6), (46, 5), (91, 10), (12, 3), (7, 2), (5, 4)])
def test_vectors_spread_evenly_between_tiles(T, K):
    """Tile t_q's vectors, as the kernel's source computes them, follow the
    tile before's, cover all T once, at most K a tile and differing by one
    at most; split between 2 threads (the first half of the tiles to one)
    the shares differ by one at most too (W2's forward: 23 and 23, where
    full tiles and a short last one gave 24 and 22)."""
    import math
    from einlocal.backends.numba_rows import spread
    count, first = spread(T, K)
    tiles = math.ceil(T / K)
    sizes = [eval(count, {"t_q": q}) for q in range(tiles)]
    firsts = [eval(first, {"t_q": q}) for q in range(tiles)]
    assert firsts == [sum(sizes[:q]) for q in range(tiles)] and sum(sizes) == T, (sizes, firsts)
    assert max(sizes) <= K and max(sizes) - min(sizes) <= 1, sizes
    if tiles % 2 == 0:
        halves = sum(sizes[:tiles // 2]), sum(sizes[tiles // 2:])
        assert abs(halves[0] - halves[1]) <= 1, halves


def test_report_layer_packs_where_it_pays(numba_backend):
    """W2's kernels pack the slice that every batch (or channel) block shares
    (weights 36 KB, dy 51 KB); at batch 12 it is shared by too few tiles, or
    small enough to stay in L1, and nothing is packed."""
    for batch, packs in ((100, True), (12, False)):
        plans = _plans(el.locally_connected2d, x=(batch, 16, 28, 28), weight=(16, 16, 3, 3, 26, 26))
        for name, plan in plans.items():
            head = _header(numba_backend.kernel(plan, dtype="float32"))
            assert ("packed per tile of" in head) == packs, (batch, name, head)


def test_each_array_type_is_compiled_for_once(numba_backend):
    """A repeat with arrays of the same numba types compiles nothing; a
    read-only input is another type, compiled for (and timed) once."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((3, 2, 5, 17)), rng.standard_normal((2, 2, 3, 3, 3, 15))
    el.locally_connected2d(x, w, backend=NAME)
    seen = len(numba_backend.compile_seconds)
    el.locally_connected2d(x, w, backend=NAME)
    assert len(numba_backend.compile_seconds) == seen
    x.setflags(write=False)
    el.locally_connected2d(x, w, backend=NAME)
    el.locally_connected2d(x, w, backend=NAME)
    assert len(numba_backend.compile_seconds) == seen + 1


def test_stride_two_scatter_stays_a_general_nest(numba_backend):
    plan = _plans(el.depthwise_conv2d, x=(2, 3, 9, 9), weight=(3, 1, 3, 3), stride=2)["dx"]
    assert plan.gather is None
    k = numba_backend.kernel(plan)
    assert "numba_codegen" in k.source and k.prezero


@pytest.mark.parametrize("case, kw", [
    # a 10-wide row in 8 lanes (the last tile overlaps), blocks that overlap too
    ("lc2d-w10", dict(x=(11, 3, 7, 12), weight=(5, 3, 2, 3, 6, 10), bias=(5, 6, 10))),
    # memory-bound 1x1 layers (streaming tiles), a 10-wide row; a batch summed whole in dW
    ("lc2d-1x1-stream", dict(x=(6, 3, 5, 10), weight=(2, 3, 1, 1, 5, 10), bias=(2, 5, 10))),
    # taller: a tile takes 3 consecutive rows, inside the batch
    ("lc2d-1x1-rows", dict(x=(3, 3, 24, 10), weight=(2, 3, 1, 1, 24, 10), bias=(2, 24, 10))),
    # sums too long to unroll, looped outside the vector into a scratch: the batch in dW; the
    # channels in a forward that starts from the bias
    ("lc2d-1x1-long-batch", dict(x=(20, 3, 4, 32), weight=(2, 3, 1, 1, 4, 32))),
    ("lc2d-1x1-long-channels", dict(x=(3, 20, 4, 16), weight=(1, 20, 1, 1, 4, 16), bias=(1, 4, 16))),
    # 5 and 3 wide rows: 4 and 2 lanes
    ("lc2d-w5", dict(x=(13, 2, 6, 7), weight=(3, 2, 2, 3, 5, 5))),
    ("lc1d-w3", dict(x=(13, 2, 5), weight=(2, 2, 3, 3))),
    # padding on every side, uneven; dilation
    ("dw-pad-asym-dil", dict(x=(2, 3, 13, 11), weight=(6, 1, 3, 3), padding=((2, 1), (0, 3)), dilation=(1, 2))),
    # reduce form with a partial last vector (w = 11) and an odd multiplier
    ("dw-tail", dict(x=(2, 2, 9, 11), weight=(6, 1, 3, 3), padding=1)),
    # grouped shared-weight conv, kernel wider than the image is high
    ("conv-g2-k5", dict(x=(2, 4, 4, 9), weight=(6, 2, 3, 5), groups=2, padding=2)),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tile_edges_against_the_reference(case, kw, dtype):
    op = el.conv2d if case.startswith("conv") else el.depthwise_conv2d if case.startswith("dw") else \
        el.locally_connected1d if case.startswith("lc1d") else el.locally_connected2d
    _check(op, dtype, "tiled", **kw)


def test_long_reduction_general_dot_form():
    """The general nest's dot form (a short contiguous output axis, long
    reductions) where tiles are off; it still matches the reference."""
    plan = _plans(el.depthwise_conv2d, x=(2, 3, 20, 20), weight=(3, 1, 3, 3), padding=1)["dwt"]
    with _form("general") as b:
        assert "acc +=" in b.kernel(plan).source
    _check(el.depthwise_conv2d, "float64", "general", x=(2, 3, 20, 20), weight=(3, 1, 3, 3), padding=1)


def test_strided_inputs_and_output(numba_backend):
    """Transposed inputs and an output that is not C-ordered: the kernel reads
    them as they are, and the innermost loop follows the output's strides."""
    from einlocal.backends.loops_python import reference
    rng = np.random.default_rng(0)
    call = el.locally_connected2d.bind(np.zeros((2, 3, 6, 7)), np.zeros((2, 3, 2, 2, 5, 6)), None)
    plan = call.plan
    x = np.asfortranarray(rng.standard_normal((2, 3, 6, 7)))
    wt = rng.standard_normal((6, 5, 2, 2, 3, 2)).transpose(5, 4, 3, 2, 1, 0)
    assert not x.flags.c_contiguous and not wt.flags.c_contiguous
    out = np.full(plan.out_shape[::-1], np.nan).T          # F-ordered output
    got = numba_backend.execute(plan, {"x": x, "wt": wt}, out)
    assert got is out
    np.testing.assert_allclose(out, reference(plan, {"x": x, "wt": wt}), rtol=1e-12, atol=1e-12)
    # w unit-stride but the other axes permuted: tiles, with the strides as they are
    x2 = rng.standard_normal((2, 6, 3, 7)).transpose(0, 2, 1, 3)
    got = numba_backend.execute(plan, {"x": x2, "wt": wt})
    np.testing.assert_allclose(got, reference(plan, {"x": x2, "wt": wt}), rtol=1e-12, atol=1e-12)
    with _form("general") as b:    # the general nest's innermost loop follows the output's strides
        assert b.kernel(plan, tuple(s // 8 for s in out.strides)).inner == "n"
        assert b.kernel(plan).inner == "w"
        out[...] = np.nan
        assert b.execute(plan, {"x": x, "wt": wt}, out) is out
    np.testing.assert_allclose(out, reference(plan, {"x": x, "wt": wt}), rtol=1e-12, atol=1e-12)


# -- the parallel loop -----------------------------------------------------------------------


def _prange_indices(source: str) -> list[str]:
    """The parallel loops' indices: a general nest's prange, a tiled kernel's
    tile index (numba_drive calls the tiles in parallel)."""
    return re.findall(r"for [it]_(\w+) in numba\.prange", source) + re.findall(r"def tiles\(.*, t_(\w+)\):", source)


@pytest.mark.parametrize("case", ["lc2d-stride2-pad1", "depthwise-m2-pad1-stride2", "conv2d-groups2-dilation2"])
def test_prange_only_over_conflict_free_indices(case, numba_backend):
    op, kw = CASES[case]
    arrays = {k: np.zeros(v) for k, v in kw.items() if k in ("x", "weight", "bias")}
    params = {k: v for k, v in kw.items() if k not in arrays}
    call = op.bind(arrays["x"], arrays["weight"], arrays.get("bias"), **params)
    plans = [call.plan, *call.plan.backward.values()]
    assert any(p.conflicts.overlapping for p in plans) or case != "lc2d-stride2-pad1"
    for plan in plans:
        for form in ("tiled", "general"):
            with _form(form) as b:
                k = b.kernel(plan)
            run = lowered(plan)       # a scatter may run as its gather form
            found = _prange_indices(k.source)
            assert len(found) <= 1
            assert found == ([k.parallel] if k.parallel else [])
            for n in found:
                assert n in run.conflicts.parallel, (n, str(run.conflicts))
                overlapping_axes = {ax for ax, _ in run.conflicts.overlapping}
                assert all(n not in run.stmt.out.axes[ax].names for ax in overlapping_axes)


def test_scatter_parallel_over_batch(numba_backend):
    """dx of a stride-2 conv with overlapping windows: a scatter, parallel
    over an index its writes do not share."""
    call = el.locally_connected2d.bind(np.zeros((4, 3, 9, 9)), np.zeros((2, 3, 3, 3, 4, 4)), None, stride=2)
    plan = call.plan.backward["x"]
    assert plan.scatter and plan.conflicts.overlapping
    k = numba_backend.kernel(plan)
    assert k.prezero and k.parallel in ("n", "c")


# -- torch ---------------------------------------------------------------------------------


def test_torch_cpu_tensors(numba_backend):
    torch = pytest.importorskip("torch")
    from einlocal.backends.loops_numba import _numpy
    from einlocal.backends.loops_python import reference
    rng = np.random.default_rng(3)
    x_np, w_np = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3, 3, 3, 6, 6))
    x, w = torch.from_numpy(x_np), torch.from_numpy(w_np)
    assert np.shares_memory(_numpy(x, "x"), x_np) and np.shares_memory(_numpy(w, "w"), w_np)
    y = el.locally_connected2d(x, w, backend=NAME)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    plan = el.locally_connected2d.bind(x, w).plan
    np.testing.assert_allclose(y.numpy(), reference(plan, {"x": x_np, "wt": w_np}), rtol=1e-12, atol=1e-12)
    out = torch.full(tuple(y.shape), float("nan"), dtype=torch.float64)
    got = el.locally_connected2d(x, w, backend=NAME, out=out)
    assert got is out and torch.allclose(out, y)
    # autograd: the derived backward statements, run by the same backend
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    el.locally_connected2d(xg, wg, backend=NAME).backward(torch.ones_like(y))
    dx, dw = el.vjp(el.locally_connected2d, torch.ones_like(y), x, w, backend=NAME)[:2]
    assert torch.allclose(xg.grad, dx) and torch.allclose(wg.grad, dw)


def test_cannot_cuda_and_no_workspace(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3, 2, 2))).plan
    assert "cpu" in numba_backend.cannot(plan, library="torch", device="cuda:0").lower()
    assert numba_backend.cannot(plan, library="numpy", device="cpu") is None
    assert numba_backend.cannot(plan, library="jax", device="cpu") is None
    assert numba_backend.cannot(plan, library="jax", device="traced") is None     # inside jax.jit
    assert "cpu" in numba_backend.cannot(plan, library="jax", device="gpu:0").lower()
    assert "numba" in numba_backend.cannot(plan, library="cupy", device="cpu")
    assert numba_backend.workspace(plan)[0] == 0


# -- source and errors ---------------------------------------------------------------------


def test_errors_carry_the_source(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 3, 3, 3, 3))).plan
    src = numba_backend.source(plan)
    assert "def kernel" in src and str(plan.stmt) in src
    bad = {"x": np.zeros((1, 2, 5)), "wt": np.zeros((1, 2, 3, 3, 3, 3))}     # x lacks an axis
    with pytest.raises(el.BackendError) as info:
        numba_backend.execute(plan, bad)
    assert "--- generated source ---" in str(info.value) and "def kernel" in str(info.value)


def test_tiled_kernel_refuses_another_dtype(numba_backend):
    """A tiled kernel's tiles read raw pointers: arrays of a dtype other than
    the one it was generated for are refused when it compiles."""
    import numba
    plan = _plans(el.depthwise_conv2d, x=(1, 16, 8, 8), weight=(16, 1, 3, 3), padding=1)["forward"]
    k = numba_backend.kernel(plan, dtype="float32")
    assert "Tiled(tiles" in k.source
    run = lowered(plan)
    strides = {a.name: _c_strides(run.shape[a.name]) for a in run.stmt.operands}
    fn = numba_backend._compiled(run, "float32", strides, _c_strides(run.out_shape))[1]
    arrays = (np.zeros(run.out_shape), *(np.zeros(run.shape[a.name], np.float32) for a in run.stmt.operands))
    with pytest.raises(TypeError, match="generated for float32 arrays; argument 0: array\\(float64"):
        fn.compile(tuple(numba.typeof(a) for a in arrays))


def test_float16_is_a_backend_error(numba_backend):
    plan = el.locally_connected2d.bind(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3, 2, 2))).plan
    ops = {"x": np.zeros((1, 1, 4, 4), np.float16), "wt": np.zeros((1, 1, 3, 3, 2, 2), np.float16)}
    with pytest.raises(el.BackendError, match="float16"):
        numba_backend.execute(plan, ops)


# -- the kernel cache across processes ------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, numpy as np, einlocal as el
    from einlocal import registry
    from einlocal.backends import loops_numba
    x, w = np.ones((1, 2, 6, 6)), np.ones((3, 2, 2, 2, 5, 5))
    y = el.locally_connected2d(x, w, backend="loops:numba")
    assert float(y[0, 0, 0, 0]) == 8.0
    b = registry.get("loops:numba")
    print(json.dumps({**loops_numba.STATS, "hits": list(b.cache_hits.values())}))
""")


def test_second_process_loads_from_file_cache(tmp_path):
    import json
    env = {**os.environ, "EINLOCAL_CACHE_DIR": str(tmp_path)}

    def run():
        done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    assert first["compiled"] == 1 and first["loaded"] == 0
    assert list((tmp_path / "numba").glob("k_*.py"))
    second = run()
    assert second["compiled"] == 0 and second["loaded"] == 1 and second["hits"] == [True]


# -- the bias, fused --------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["tiled", "general"])
@pytest.mark.parametrize("op, kw", [
    (el.locally_connected2d, dict(x=(9, 3, 8, 11), weight=(4, 3, 2, 2, 7, 10), bias=(4, 7, 10))),   # bias per position
    (el.depthwise_conv2d, dict(x=(2, 3, 9, 12), weight=(6, 1, 3, 3), bias=(6,), padding=1)),        # per channel
], ids=["lc2d", "depthwise"])
def test_forward_starts_from_the_bias(op, kw, form):
    """The bias is where each sum starts (one pass over the output): the
    forward kernel takes it as one more array, and the result is the
    reference's."""
    _check(op, "float32", form, **kw)
    plan = _plans(op, **kw)["forward"]
    with _form(form) as b:
        fused = [k for key, (k, _) in b._kernels.items() if key[0] == plan and key[4] is not None and key[-1] == b.tiled]
    assert fused and all("init_" in k.source for k in fused)


def test_the_other_vector_width_matches_the_reference():
    """The tiles at the register width this CPU does not pick (256 bits on an
    AVX-512 host, 512 elsewhere, where LLVM splits each vector): one small
    padded depthwise layer and a 1x1 layer, forward and backward, in a
    process of their own; then a 1x1 layer with a bias whose outputs are
    streamed with non-temporal stores (its one-pass backward)."""
    from einlocal.backends.numba_simd import VECTOR_BITS
    other = 256 if VECTOR_BITS == 512 else 512
    code = textwrap.dedent("""
        import einlocal as el
        from einlocal.backends import numba_tiling
        from einlocal.backends.numba_simd import LANES
        assert LANES["float32"] == {lanes}, LANES
        for op, kw in [(el.depthwise_conv2d, dict(x=(2, 2, 9, 19), weight=(4, 1, 3, 3), padding=1)),
                       (el.locally_connected2d, dict(x=(4, 3, 3, 20), weight=(2, 3, 1, 1, 3, 20))),
                       ("streamed", dict(x=(3, 2, 16, 64), weight=(2, 2, 1, 1, 16, 64), bias=(2, 16, 64)))]:
            if op == "streamed":
                op, numba_tiling.NONTEMPORAL, numba_tiling.NONTEMPORAL_BYTES = el.locally_connected2d, True, 0
            report = el.check(op, backends=["loops:numba"], dtype="float32", seed=7, **kw)
            assert report.ok and report.rows[0].status == "pass", str(report)
        print("ok")
    """).format(lanes=other // 32)
    env = {**os.environ, "EINLOCAL_VECTOR_BITS": str(other)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# -- the bias gradient summed in the weight gradient's kernel ---------------------------------

FUSED_CASES = {
    # W1's form: every channel in one tile, the batch summed outside the vector
    "lc2d-1x1-c3": (el.locally_connected2d, ((20, 3, 4, 48), (2, 3, 1, 1, 4, 48), (2, 4, 48))),
    # input channels looped outside the tile: only their first adds to the bias's sum
    "lc2d-1x1-c12": (el.locally_connected2d, ((20, 12, 4, 48), (2, 12, 1, 1, 4, 48), (2, 4, 48))),
    # tiles over input channels (not an index of dy): the bias summed apart
    "lc1d-1x1-c12": (el.locally_connected1d, ((20, 12, 64), (2, 12, 1, 64), (2, 64))),
}


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_the_bias_gradient_from_the_weight_gradients_kernel(numba_backend, case, dtype, library, monkeypatch):
    from einlocal.backends import numba_tiles
    from einlocal.backends.namespaces import namespace
    if library == "torch":
        pytest.importorskip("torch")
    op, shapes = FUSED_CASES[case]
    rng = np.random.default_rng(5)
    x, w, b = (rng.standard_normal(s) for s in shapes)
    y64 = op(x, w, b, backend="einsum:numpy")
    dy = rng.standard_normal(y64.shape)
    want = el.vjp(op, dy, x, w, b, backend="einsum:numpy")
    fused = []
    original = numba_backend.vjp_and_bias
    monkeypatch.setattr(numba_backend, "vjp_and_bias", lambda *a, **k: fused.append(original(*a, **k)) or fused[-1])
    xp = namespace(library)
    arrays = [xp.from_numpy(a.astype(dtype)) for a in (dy, x, w, b)]
    outs = tuple(xp.from_numpy(np.full(a.shape, np.nan, dtype)) for a in (x, w, b))
    for out in (None, outs):
        got = el.vjp(op, *arrays, backend=NAME, out=out)
        tol = 2e-4 if dtype == "float32" else 1e-10
        for g, ref, name in zip(got, want, ("x", "weight", "bias")):
            np.testing.assert_allclose(xp.to_numpy(g), ref, rtol=tol, atol=tol, err_msg=name)
    # without x's gradient: never the one pass over every gradient (numba_fused), always this kernel
    got = el.vjp(op, *arrays, backend=NAME, wrt=("weight", "bias"))
    for g, ref, name in zip(got[1:], want[1:], ("weight", "bias")):
        np.testing.assert_allclose(xp.to_numpy(g), ref, rtol=tol, atol=tol, err_msg=name)
    call = op.bind(x, w, b)
    plan = lowered(call.plan.backward["wt"])
    t = numba_tiles.tiling(plan, dtype, {a.name: _c_strides(plan.shape[a.name]) for a in plan.stmt.operands},
                           _c_strides(plan.out_shape))
    expect = t is not None and t.sums_outside != () and t.parallel in plan.stmt.operands[0].names
    assert len(fused) == 3 and all((f is not None) == expect for f in fused), (t, fused)
    if case != "lc1d-1x1-c12":
        assert expect, f"{case} was meant to take the fused form: {t}"


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_the_weight_gradients_kernel_sums_the_bias_into_out(library, monkeypatch):
    """Where the weight gradient's kernel sums the bias's gradient too, a
    C-ordered ``out=`` entry for the bias takes the sums itself: nothing is
    copied into it afterwards."""
    from einlocal.backends.namespaces import namespace
    if library == "torch":
        pytest.importorskip("torch")
    op, shapes = FUSED_CASES["lc2d-1x1-c3"]
    rng = np.random.default_rng(6)
    x, w, b = (rng.standard_normal(s) for s in shapes)
    dy = rng.standard_normal(op(x, w, b, backend="einsum:numpy").shape)
    want = el.vjp(op, dy, x, w, b, backend="einsum:numpy", wrt=("weight", "bias"))
    xp = namespace(library)
    copied = []
    assign = xp.assign
    monkeypatch.setattr(xp, "assign", lambda out, src: copied.append(out) or assign(out, src))
    outs = (None, xp.from_numpy(np.full(w.shape, np.nan)), xp.from_numpy(np.full(b.shape, np.nan)))
    got = el.vjp(op, *(xp.from_numpy(a) for a in (dy, x, w, b)), backend=NAME, wrt=("weight", "bias"), out=outs)
    for g, o, ref, name in zip(got[1:], outs[1:], want[1:], ("weight", "bias")):
        assert g is o, name
        np.testing.assert_allclose(xp.to_numpy(g), ref, rtol=1e-10, atol=1e-10, err_msg=name)
    assert not any(c is outs[2] for c in copied)


def test_non_temporal_stores_are_off_on_amd(tmp_path, monkeypatch):
    """On AMD a load matching a non-temporal store in flight in its low 12
    bits waits for it to reach memory, so large outputs are stored plainly
    there (and by EINLOCAL_NONTEMPORAL's choice anywhere); the streamed
    output's kernel follows the switch."""
    from einlocal.backends import numba_simd, numba_tiling
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert numba_simd._vendor(str(info)) == "AuthenticAMD"
    assert numba_simd._vendor(str(tmp_path / "absent")) == ""
    monkeypatch.delenv("EINLOCAL_NONTEMPORAL", raising=False)
    for vendor, want in (("AuthenticAMD", False), ("GenuineIntel", True), ("", True)):
        monkeypatch.setattr(numba_simd, "_vendor", lambda v=vendor: v)
        assert numba_simd._nontemporal_stores() == (want, True), vendor     # (anywhere, loads kept away)
    monkeypatch.setenv("EINLOCAL_NONTEMPORAL", "1")
    assert numba_simd._nontemporal_stores() == (True, True)
    monkeypatch.setenv("EINLOCAL_NONTEMPORAL", "0")
    assert numba_simd._nontemporal_stores() == (False, False)
    monkeypatch.setenv("EINLOCAL_NONTEMPORAL", "yes")
    with pytest.raises(ValueError, match="EINLOCAL_NONTEMPORAL must be 0 or 1"):
        numba_simd._nontemporal_stores()
    monkeypatch.setattr(numba_tiling, "NONTEMPORAL", False)
    plan = _plans(el.locally_connected2d, x=(32, 4, 128, 64), weight=(2, 4, 1, 1, 128, 64))["forward"]
    src = registry.get(NAME).source(plan, dtype="float32")
    assert "vstore_nt(" not in src and "vstore(a_" in src


def test_a_kernel_module_is_keyed_by_the_intrinsics_it_is_built_with(tmp_path, monkeypatch):
    """numba's file cache keeps machine code by the module's source, so the
    module's name also holds the intrinsics' code: a change to them builds
    every kernel again instead of loading one built by the old code."""
    from einlocal.backends import loops_numba, numba_simd
    before = loops_numba._module_path("kernel = None\n")[1]
    changed = tmp_path / "numba_simd.py"
    changed.write_text(open(numba_simd.__file__).read() + "\n# changed\n")
    monkeypatch.setattr(numba_simd, "__file__", str(changed))
    loops_numba._codegen_salt.cache_clear()
    try:
        assert loops_numba._module_path("kernel = None\n")[1] != before
    finally:
        monkeypatch.undo()
        loops_numba._codegen_salt.cache_clear()
    assert loops_numba._module_path("kernel = None\n")[1] == before


# A streaming tile's operand read again for every image (a 1x1 layer's weight), packed
# once a tile into a panel (numba_tiling.STREAM_PACK): output-channel blocks and a last
# vector that overlap the ones before, a bias, the input read outside its bounds.
STREAM_PACKED = {
    "lc1x1-bias": (el.locally_connected2d, dict(x=(9, 3, 16, 20), weight=(5, 3, 1, 1, 16, 20), bias=(5, 16, 20))),
    "lc1x1-pad": (el.locally_connected2d, dict(x=(9, 2, 16, 20), weight=(3, 2, 1, 1, 18, 22), padding=1)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(STREAM_PACKED), ids=str)
def test_streaming_panel_against_the_reference(numba_backend, case, dtype):
    op, kw = STREAM_PACKED[case]
    head = _header(numba_backend.kernel(_case_plans(op, kw)["forward"], dtype=dtype))
    assert "streaming" in head and "packed per tile, read from there for every n" in head, head
    _check(op, dtype, "tiled", **kw)


def test_streaming_panel_only_where_it_is_read_again(numba_backend, monkeypatch):
    """W1's weight, read again for each of 32 images, is packed; with a batch
    under PACK_MIN_REUSE, or the switch off, it is read where it lies."""
    from einlocal.backends import numba_tiling
    for batch, packed in ((32, True), (4, False)):
        plan = _plans(el.locally_connected2d, x=(batch, 4, 64, 64), weight=(2, 4, 1, 1, 64, 64))["forward"]
        src = numba_backend.source(plan, dtype="float32")
        assert ("vload(pk, b_pk" in src) is packed and ("wt packed per tile" in _header(
            numba_backend.kernel(plan, dtype="float32"))) is packed, src[:500]
    monkeypatch.setattr(numba_tiling, "STREAM_PACK", False)
    plan = _plans(el.locally_connected2d, x=(32, 4, 64, 32), weight=(2, 4, 1, 1, 64, 32))["forward"]
    assert "vload(pk" not in numba_backend.source(plan, dtype="float32")
