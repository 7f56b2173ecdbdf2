"""Report 2's workload on a GPU: locally connected 3x3, x (100, 16, 28, 28),
weight (16, 16, 3, 3, 26, 26), forward and backward (dx and dweight), for
``loops:triton`` (and its deterministic path), ``einsum:torch`` and the
control ``native:torch`` (cuDNN ``F.conv2d`` of the same shape with a shared
(16, 16, 3, 3) weight), float32, CUDA-event timing via
``einlocal.timing.measure``.

    python bench/bench_gpu.py            # prints a table; writes results/gpu_W2_<gpu name>.csv

Targets: backward no more than 3x forward; forward within 2x of
cuDNN's shared-weight conv.  Without a CUDA device it says so and exits 0.
"""
from __future__ import annotations

import os
import sys


def _rows(torch, el, measure):
    from einlocal import registry
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(100, 16, 28, 28, device=dev, generator=g)
    w_local = torch.randn(16, 16, 3, 3, 26, 26, device=dev, generator=g)
    w_shared = torch.randn(16, 16, 3, 3, device=dev, generator=g)
    dy = torch.randn(100, 16, 26, 26, device=dev, generator=g)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = [("loops:triton", el.locally_connected2d, w_local, {}),
             ("loops:triton (deterministic)", el.locally_connected2d, w_local, {"deterministic": True}),
             ("einsum:torch", el.locally_connected2d, w_local, {}),
             ("native:torch conv2d (shared weight, cuDNN)", el.conv2d, w_shared, {})]
    rows = []
    for label, op, w, opts in cases:
        name = label.split(" ")[0]
        if name in registry.unavailable():
            rows.append((label, None, None, registry.unavailable()[name]))
            continue
        backend = registry.get(name)
        saved = getattr(backend, "deterministic", None)
        if "deterministic" in opts:
            backend.deterministic = opts["deterministic"]
        try:
            fwd = measure(lambda: op(x, w, backend=name), budget_s=1.0, warmup=3)
            bwd = measure(lambda: op.vjp(dy, x, w, backend=name), budget_s=1.0, warmup=3)
            rows.append((label, fwd, bwd, ""))
        except Exception as e:   # a backend that cannot run here is a row, not a crash
            rows.append((label, None, None, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
        finally:
            if hasattr(backend, "deterministic"):
                backend.deterministic = saved
    return rows


def main() -> int:
    try:
        import torch
    except ImportError:
        print("bench_gpu: needs torch with CUDA and a GPU; torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_gpu: unset TRITON_INTERPRET to time compiled kernels")
        return 1
    import einlocal as el
    from einlocal.timing import CudaEventClock, measure

    def timed(fn, **kw):
        return measure(fn, clock=CudaEventClock(), **kw)

    gpu = torch.cuda.get_device_name()
    rows = _rows(torch, el, timed)
    print(f"report 2 (W2) on {gpu}, float32, CUDA events, medians")
    print(f"{'backend':<46} {'forward ms':>11} {'backward ms':>12} {'bwd/fwd':>8}  note")
    lines = ["backend,forward_ms,forward_iqr_ms,backward_ms,backward_iqr_ms,gpu"]
    for label, fwd, bwd, note in rows:
        if fwd is None:
            print(f"{label:<46} {'-':>11} {'-':>12} {'-':>8}  {note}")
            continue
        f, b = fwd.median_s * 1e3, bwd.median_s * 1e3
        print(f"{label:<46} {f:>11.3f} {b:>12.3f} {b / f:>8.2f}  {note}")
        lines.append(f"{label},{f:.4f},{fwd.iqr_s * 1e3:.4f},{b:.4f},{bwd.iqr_s * 1e3:.4f},{gpu}")
    by = {label: r for label, *r in rows}
    tri, cudnn = by.get("loops:triton"), by.get("native:torch conv2d (shared weight, cuDNN)")
    if tri and tri[0] is not None and cudnn and cudnn[0] is not None:
        print(f"targets: backward/forward = {tri[1].median_s / tri[0].median_s:.2f} (<= 3); "
              f"forward / cuDNN shared-weight forward = {tri[0].median_s / cudnn[0].median_s:.2f} (<= 2)")
    out_dir = os.path.join(os.path.dirname(__file__), "..", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"gpu_W2_{gpu.replace(' ', '_').replace('/', '_')}.csv")
    with open(path, "w") as f:
        f.write("# python bench/bench_gpu.py\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
