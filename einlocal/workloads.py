"""The report workloads of WORKLOADS.md as data: op, shapes, params, dtype, peers, reduced sizes.

W1, W2, W3a, W3b and W5 are catalogue ops. W4 (ragged sets) lives in
`einlocal.ragged`; `ragged_workload()` returns its description when that
module exists (interface: `einlocal.ragged.workload(**kw)` returning a dict
or object with `callables` -> {strategy: {pass: fn()}}; see `compare.py`).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

__all__ = ["Workload", "WORKLOADS", "get", "ragged_workload", "shape_text"]


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    `shapes`: array argument -> shape in API.md's layouts (x, weight, bias);
    `params`: the op's keyword parameters; `reduced`: shapes (same params)
    small enough for the float64 loops reference and for quick tests;
    `peers`: names of the peers in bench/peers.py (its `PEERS` keys) shown
    beside the backends.
    """

    id: str
    report: int
    op: str
    shapes: dict
    params: dict = field(default_factory=dict)
    dtype: str = "float32"
    peers: tuple = ()
    reduced: dict = field(default_factory=dict)
    title: str = ""

    def op_fn(self):
        """The catalogue op object."""
        from .catalogue import CATALOGUE
        return CATALOGUE[self.op]

    def sized(self, reduced: bool = False) -> "Workload":
        """This workload at its reduced shapes (reduced=True) or as is."""
        if not reduced:
            return self
        return Workload(self.id, self.report, self.op, dict(self.reduced), dict(self.params), self.dtype,
                        self.peers, dict(self.reduced), self.title + " (reduced)")

    def batch_divided(self, k: int) -> "Workload":
        """This workload with its batch (x axis 0) divided by ``k`` (at least 1):
        the same layer per sample, ``k`` times less work (--quick)."""
        if k <= 1 or self.shapes["x"][0] <= 1:
            return self
        x = self.shapes["x"]
        n = max(1, x[0] // k)
        return Workload(self.id, self.report, self.op, {**self.shapes, "x": (n, *x[1:])}, dict(self.params),
                        self.dtype, self.peers, dict(self.reduced), f"{self.title} (batch {n} of {x[0]})")

    @property
    def shape(self) -> str:
        return shape_text(self.shapes)

    def elements(self) -> int:
        """Elements of x (the plot's problem size)."""
        return math.prod(self.shapes["x"])


def shape_text(shapes: dict) -> str:
    """'x(100,16,28,28) w(16,16,3,3,26,26)' from a shapes dict."""
    short = {"weight": "w", "bias": "b"}
    return " ".join(f"{short.get(k, k)}({','.join(str(d) for d in v)})" for k, v in shapes.items() if v is not None)


WORKLOADS: dict[str, Workload] = {w.id: w for w in (
    Workload("W1", 1, "locally_connected2d",
             {"x": (32, 4, 256, 256), "weight": (2, 4, 1, 1, 256, 256), "bias": (2, 256, 256)},
             peers=("slices+concatenate (numpy)", "unfold+einsum (torch)", "conv_general_dilated_local (jax)"),
             reduced={"x": (2, 4, 8, 8), "weight": (2, 4, 1, 1, 8, 8), "bias": (2, 8, 8)},
             title="locally connected 1x1 (report 1)"),
    Workload("W2", 2, "locally_connected2d",
             {"x": (100, 16, 28, 28), "weight": (16, 16, 3, 3, 26, 26)},
             peers=("unfold+einsum (torch)", "im2col+matmul (numpy)", "patches+einsum (jax)",
                    "conv_general_dilated_local (jax)"),
             reduced={"x": (2, 3, 8, 8), "weight": (4, 3, 3, 3, 6, 6)},
             title="locally connected 3x3 (report 2)"),
    Workload("W3a", 3, "depthwise_conv2d",
             {"x": (1, 1024, 28, 28), "weight": (1024, 1, 3, 3)}, {"padding": 1},
             peers=("F.conv2d(groups) (torch)", "conv_general_dilated (jax)"),
             reduced={"x": (1, 8, 6, 6), "weight": (8, 1, 3, 3)},
             title="depthwise 3x3, same padding (report 3)"),
    Workload("W3b", 3, "depthwise_conv2d",
             {"x": (32, 32, 128, 128), "weight": (64, 1, 3, 3)},
             peers=("F.conv2d(groups) (torch)", "conv_general_dilated (jax)"),
             reduced={"x": (2, 3, 8, 8), "weight": (6, 1, 3, 3)},
             title="depthwise 3x3, multiplier 2 (report 3)"),
    Workload("W5", 5, "conv2d",
             {"x": (16, 32, 32, 32), "weight": (64, 32, 3, 3)}, {"padding": 1},
             peers=("F.conv2d(groups) (torch)", "conv_general_dilated (jax)"),
             reduced={"x": (2, 4, 6, 6), "weight": (8, 4, 3, 3)},
             title="shared-weight conv2d, im2col+GEMM vs native (report 5)"),
)}


def get(workload_id: str) -> Workload:
    """The workload called `workload_id` (case-insensitive); ShapeError (a ValueError) listing the ids."""
    from .errors import ShapeError
    for key, w in WORKLOADS.items():
        if key.lower() == str(workload_id).lower():
            return w
    raise ShapeError(f"unknown workload {workload_id!r}; valid: {', '.join(WORKLOADS)}"
                     + (", W4" if ragged_available() else ""))


def ragged_available() -> bool:
    """Whether `einlocal.ragged` exists and exposes `workload()`."""
    if importlib.util.find_spec("einlocal.ragged") is None:
        return False
    import einlocal.ragged as ragged
    return callable(getattr(ragged, "workload", None))


def ragged_workload(**kw):
    """W4 from `einlocal.ragged.workload(**kw)`, or None where that module is absent."""
    if not ragged_available():
        return None
    import einlocal.ragged as ragged
    return ragged.workload(**kw)
