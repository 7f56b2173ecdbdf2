"""The report workloads on a CUDA GPU: every backend that runs on CUDA arrays
(torch, cupy, jax) is checked at full size against the float64 reference
(`el.check`, float32, TF32 off), then its forward and its backward (vjp:
every gradient) are timed, float32, medians.  Report 2 (W2) also gets
``loops:triton``'s deterministic path and the control ``native:torch``
(cuDNN ``F.conv2d`` of the same shape with one shared (16, 16, 3, 3) weight).

    python bench/bench_gpu.py [--out DIR] [--workloads W1,W2] [--budget S]

Writes ``DIR/gpu_<gpu name>.csv`` and ``.md`` (default DIR: results/).
Torch tensors are timed with CUDA events, cupy and jax arrays by the wall
clock around a call that waits for the device.  Targets for W2: backward
no more than 3x forward; ``loops:triton``'s forward within 2x of cuDNN's
shared-weight conv.  Without a CUDA device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

LIBRARIES = ("torch", "cupy", "jax")


def _device(lib, device):
    """A library's name for the device: jax calls a CUDA GPU "gpu"."""
    return "gpu:0" if lib == "jax" and device != "cpu" else device


def _arrays(lib, arrays, device):
    """numpy arrays -> the library's, on the device."""
    from einlocal.backends.namespaces import namespace
    return {k: None if a is None else namespace(lib).from_numpy(a, _device(lib, device)) for k, a in arrays.items()}


def _candidates(registry, device):
    """(backend, library) pairs that can run on the device's arrays here."""
    from einlocal.backends.namespaces import namespace
    out = []
    for name in registry.NAMES:
        if name in registry.unavailable():
            continue
        lib = registry.get(name).takes[0]
        if lib in LIBRARIES and namespace(lib).cannot_device(_device(lib, device)) is None:
            out.append((name, lib))
    return out


def _time(fn, budget_s, measure, CudaEventClock, lib):
    clock = None if lib != "torch" or CudaEventClock is None else CudaEventClock()
    return measure(fn, budget_s=budget_s, warmup=2, min_reps=5, cap_s=20.0, clock=clock)


def _workload_rows(w, el, registry, budget_s, measure, CudaEventClock, progress, device="cuda:0"):
    from einlocal.check import _op_parts, random_inputs
    op, params = w.op_fn(), dict(w.params)
    host = random_inputs(dict(w.shapes), "float32", 0)
    call, _, _ = _op_parts(op, host, params)
    dy_host = random_inputs({"dy": call.out_shape}, "float32", 2)["dy"]
    rows = []
    by_lib = {}
    for name, lib in _candidates(registry, device):
        by_lib.setdefault(lib, []).append(name)
    for lib, names in by_lib.items():
        t0 = time.perf_counter()
        report = el.check(op, backends=names, dtype="float32", seed=0, device=_device(lib, device),
                          library=lib, **dict(w.shapes), **params)
        progress(f"{w.id} {lib}: checked {len(names)} backends in {time.perf_counter() - t0:.1f} s")
        arrays, dy = _arrays(lib, host, device), _arrays(lib, {"dy": dy_host}, device)["dy"]
        args = [arrays[k] for k in w.shapes]
        for row in report.rows:
            result = {"workload": w.id, "backend": row.backend, "library": lib, "check": row.status,
                      "worst": row.worst if row.status != "skipped" else None, "note": row.reason}
            if row.status == "pass":
                try:
                    fwd = _time(lambda: op(*args, backend=row.backend, **params), budget_s, measure, CudaEventClock,
                                lib)
                    bwd = _time(lambda: op.vjp(dy, *args, backend=row.backend, **params), budget_s, measure,
                                CudaEventClock, lib)
                    result.update(forward_ms=fwd.median_s * 1e3, backward_ms=bwd.median_s * 1e3)
                except Exception as e:  # noqa: BLE001 — a backend that cannot be timed here is a row, not a crash
                    result["note"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            rows.append(result)
            progress(_line(result))
    return rows


def _w2_extra(el, registry, budget_s, measure, CudaEventClock, progress):
    """W2's deterministic loops:triton and the cuDNN shared-weight control."""
    import torch
    from einlocal.check import random_inputs
    host = random_inputs({"x": (100, 16, 28, 28), "wl": (16, 16, 3, 3, 26, 26), "ws": (16, 16, 3, 3),
                          "dy": (100, 16, 26, 26)}, "float32", 0)
    t = {k: torch.from_numpy(v).cuda() for k, v in host.items()}
    rows = []
    triton = registry.get("loops:triton")
    if "loops:triton" not in registry.unavailable():
        saved = triton.deterministic
        triton.deterministic = True
        try:
            fwd = _time(lambda: el.locally_connected2d(t["x"], t["wl"], backend="loops:triton"), budget_s, measure,
                        CudaEventClock, "torch")
            bwd = _time(lambda: el.locally_connected2d.vjp(t["dy"], t["x"], t["wl"], backend="loops:triton"),
                        budget_s, measure, CudaEventClock, "torch")
            rows.append({"workload": "W2", "backend": "loops:triton (deterministic)", "library": "torch",
                         "check": "", "worst": None, "note": "", "forward_ms": fwd.median_s * 1e3,
                         "backward_ms": bwd.median_s * 1e3})
        finally:
            triton.deterministic = saved
    torch.backends.cudnn.allow_tf32 = False
    fwd = _time(lambda: el.conv2d(t["x"], t["ws"], backend="native:torch"), budget_s, measure, CudaEventClock, "torch")
    bwd = _time(lambda: el.conv2d.vjp(t["dy"], t["x"], t["ws"], backend="native:torch"), budget_s, measure,
                CudaEventClock, "torch")
    rows.append({"workload": "W2", "backend": "control: F.conv2d, shared weight (cuDNN)", "library": "torch",
                 "check": "", "worst": None, "note": "", "forward_ms": fwd.median_s * 1e3,
                 "backward_ms": bwd.median_s * 1e3})
    for r in rows:
        progress(_line(r))
    return rows


def _line(r) -> str:
    f, b = r.get("forward_ms"), r.get("backward_ms")
    times = f"{f:10.3f} {b:10.3f} {b / f:7.2f}" if f is not None and b is not None else f"{'-':>10} {'-':>10} {'-':>7}"
    worst = f"{r['worst']:.2f}" if r.get("worst") is not None else ""
    return f"{r['workload']:<4} {r['backend']:<42} {r['check']:<8} {worst:>6} {times}  {r['note'][:120]}"


def _versions() -> str:
    import importlib.metadata as md
    out = []
    for dist in ("torch", "triton", "cupy-cuda13x", "cupy-cuda12x", "jax", "jaxlib", "numpy"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results"))
    ap.add_argument("--workloads", default="W1,W2,W3a,W3b,W5")
    ap.add_argument("--budget", type=float, default=0.3, help="timed seconds per pass and backend")
    args = ap.parse_args(argv)
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
    from einlocal import registry
    from einlocal.timing import CudaEventClock, measure
    from einlocal.workloads import WORKLOADS

    gpu = torch.cuda.get_device_name()

    def progress(line):
        print(line, flush=True)

    progress(f"{gpu}; {_versions()}")
    progress(f"{'id':<4} {'backend':<42} {'check':<8} {'worst':>6} {'fwd ms':>10} {'bwd ms':>10} {'bwd/fwd':>7}  note")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "gpu_" + "".join(c if c.isalnum() else "_" for c in gpu))
    command = "python bench/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for wid in args.workloads.split(","):
        rows += _workload_rows(WORKLOADS[wid], el, registry, args.budget, measure, CudaEventClock, progress)
        if wid == "W2":
            rows += _w2_extra(el, registry, args.budget, measure, CudaEventClock, progress)
        _write(stem, command.strip(), gpu, rows)      # after each workload: a run cut short keeps what it measured
    print(f"wrote {stem}.csv, {stem}.md")
    return 0


def _write(stem, command, gpu, rows):
    keys = ("workload", "backend", "library", "check", "worst", "forward_ms", "backward_ms", "note")
    with open(stem + ".csv", "w") as f:
        f.write(f"# {command}\n# {gpu}; {_versions()}\n" + ",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(_csv(r.get(k)) for k in keys) + "\n")
    with open(stem + ".md", "w") as f:
        f.write(f"# The report workloads on {gpu}\n\n`{command}`; {_versions()}. float32 (TF32 off), "
                "medians; check: at full size against the float64 reference (worst error / tolerance).\n\n"
                "| workload | backend | check | forward ms | backward ms | bwd/fwd | note |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n")
        for r in rows:
            fm, bm = r.get("forward_ms"), r.get("backward_ms")
            check = r["check"] + (f" ({r['worst']:.2f})" if r.get("worst") else "")
            cells = [r["workload"], f"`{r['backend']}`", check,
                     f"{fm:.3f}" if fm else "", f"{bm:.3f}" if bm else "", f"{bm / fm:.2f}" if fm and bm else "",
                     r["note"].replace("|", "/")[:160]]
            f.write("| " + " | ".join(cells) + " |\n")


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return '"' + s.replace('"', "'") + '"' if ("," in s or "\n" in s) else s


if __name__ == "__main__":
    sys.exit(main())
