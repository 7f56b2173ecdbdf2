"""The GPU kernels' split reduction, paired: each report workload's weight
gradient through ``loops:triton`` and ``loops:cupy`` with the split (the
default) and without it (``gpu_codegen.SPLIT_TARGET`` at zero), the two
alternated over rounds in one process, float32, medians; each result checked
against the other.

    python bench/bench_gpu_split.py [--workloads W3a,W3b,W5] [--rounds 7]

Prints a markdown table.  Without a CUDA device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W3a,W3b,W5")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cuda:0", help=argparse.SUPPRESS)   # "cpu": a dry run under TRITON_INTERPRET=1
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_gpu_split: needs torch with CUDA and a GPU; torch is not installed")
        return 0
    if args.device != "cpu" and not torch.cuda.is_available():
        print("bench_gpu_split: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 0
    import numpy as np

    from einlocal import registry
    from einlocal.backends import gpu_codegen
    from einlocal.backends.namespaces import namespace
    from einlocal.check import random_inputs
    from einlocal.timing import CudaEventClock, measure
    from einlocal.workloads import WORKLOADS

    on = dict(gpu_codegen.SPLIT_TARGET)
    off = {k: 0 for k in on}
    gpu = torch.cuda.get_device_name() if args.device != "cpu" else "cpu (Triton interpreter)"
    print(f"{gpu}; python bench/bench_gpu_split.py {' '.join(sys.argv[1:])}")
    print("| workload | backend | split | parts | without split ms | with split ms | ratio | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for wid in args.workloads.split(","):
        w = WORKLOADS[wid]
        arrays = [np.broadcast_to(np.float32(0), s) for s in dict(w.shapes).values()]
        plan = w.op_fn().bind(*arrays, **dict(w.params)).plan
        dwt = plan.backward[plan.stmt.operands[1].name]
        host = random_inputs({a.name: dwt.shape[a.name] for a in dwt.stmt.operands}, "float32", 0)
        for name in ("loops:triton", "loops:cupy"):
            if name in registry.unavailable():
                print(f"| {wid} | `{name}` | unavailable: {registry.unavailable()[name]} | | | | | |")
                continue
            backend = registry.get(name)
            lib = backend.takes[0]
            xp = namespace(lib)
            ops = {k: xp.from_numpy(a, args.device) for k, a in host.items()}
            clock = CudaEventClock() if lib == "torch" and args.device != "cpu" else None
            times, results = {"off": [], "on": []}, {}
            for _ in range(args.rounds):
                for key, target in (("off", off), ("on", on)):
                    gpu_codegen.SPLIT_TARGET = target
                    t = measure(lambda: backend.execute(dwt, ops), budget_s=0.2, warmup=1, min_reps=3,
                                cap_s=30.0, clock=clock)
                    times[key].append(t.median_s * 1e3)
                    results[key] = np.asarray(xp.to_numpy(backend.execute(dwt, ops)))
            gpu_codegen.SPLIT_TARGET = on
            kp = backend.kernel_plan(dwt, "float32")
            moff, mon = statistics.median(times["off"]), statistics.median(times["on"])
            diff = float(np.abs(results["on"] - results["off"]).max())
            split = ", ".join(f"{n}<{e}" for n, e in kp.split) or "none"
            print(f"| {wid} | `{name}` | {split} | {kp.parts} | {moff:.3f} | {mon:.3f} | {moff / mon:.1f}x | {diff:.2e} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
