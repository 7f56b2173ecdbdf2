"""The `einlocal` command: compare, backends, check, bench, choose, cache, tune, table, source."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import PADDING_HELP, add_op_arguments, op_kwargs  # noqa: F401

__all__ = ["main"]


def _backend_names(text: str, *, keep_python: bool = False) -> list[str] | None:
    """The registered names ``text`` names or prefixes; BackendError for a
    word that names none."""
    from . import registry
    from .errors import BackendError
    wanted = [w for w in text.split(",") if w]
    if not wanted:
        return None
    for w in wanted:
        if not w.startswith("peer") and not any(n == w or n.startswith(w) for n in registry.NAMES):
            raise BackendError(f"--backends: {w!r} names no backend; valid names (or their prefixes): "
                               f"{', '.join(registry.NAMES)}")
    names = [n for n in registry.NAMES if any(n == w or n.startswith(w) for w in wanted)]
    names = [n for n in names if keep_python or n != "loops:python"] + [w for w in wanted if w.startswith("peer")]
    return names or wanted


# -- subcommands --------------------------------------------------------------------------------


def cmd_backends(args) -> int:
    from . import registry
    print("available:")
    for name in registry.available():
        print(f"  {name:<18} takes {', '.join(registry.get(name).takes)}")
    print("unavailable:")
    for name, reason in registry.unavailable().items():
        print(f"  {name:<18} {reason}")
    return 0


def _progress(after_s: float = 2.0):
    """A progress printer for stderr, silent for the first ``after_s`` seconds."""
    import time
    start = time.perf_counter()
    pending = []

    def say(line: str) -> None:
        elapsed = time.perf_counter() - start
        if elapsed < after_s:
            pending[:] = [line]
            return
        for p in pending:
            print(f"  ... {p}", file=sys.stderr, flush=True)
        pending.clear()
        print(f"  [{elapsed:6.1f} s] {line}", file=sys.stderr, flush=True)
    return say


def cmd_check(args) -> int:
    from .check import check
    op, shapes, params = op_kwargs(args)
    report = check(op, backends=_backend_names(args.backends), dtype=args.dtype, seed=args.seed,
                   progress=_progress(), reference_limit=args.reference_limit, **shapes, **params)
    print(report)
    return 0 if report.ok else 1


def cmd_source(args) -> int:
    """Print the code a generating backend emits for an op's forward
    statement and each backward statement (or the one ``--pass`` names)."""
    from . import registry
    from .arrays import Shaped
    from .errors import BackendError
    op, shapes, params = op_kwargs(args)
    call = op.bind_arrays({k: Shaped(v) for k, v in shapes.items()}, params)
    # one vocabulary with `check`: the gradient of argument a is "da" (dx, dweight)
    plans = {"forward": call.plan, **{f"d{arg}": call.plan.backward[stmt_op] for arg, stmt_op, _ in call.operands}}
    if args.pass_ not in ("all", "backward", *plans):
        raise BackendError(f"--pass {args.pass_!r}: the generated statements of {op.name} are "
                           f"{', '.join(plans)} (or backward: every gradient in one kernel, or all)")
    backend = registry.generator(args.backend)
    for name, plan in plans.items():
        if args.pass_ in ("all", name):
            print(f"# ===== {args.backend}, {name}: {plan}\n")
            print(backend.source(plan, dtype=args.dtype))
    if args.pass_ in ("all", "backward"):
        one = backend.one_pass_source(call, args.dtype) if hasattr(backend, "one_pass_source") else None
        if one is not None:
            print(f"# ===== {args.backend}, backward: every gradient in one pass over dy "
                  f"(what el.vjp runs when it asks for them all)\n")
            print(one)
        elif args.pass_ == "backward":
            raise BackendError(f"--pass backward: {args.backend} runs the gradients of {op.name} for these shapes "
                               f"apart (see --pass all)")
    return 0


def cmd_bench(args) -> int:
    from .bench import benchmark
    from .table import markdown, write_results
    op, shapes, params = op_kwargs(args)
    records = benchmark(op, backends=_backend_names(args.backends), passes=tuple(args.passes.split(",")),
                        regimes=tuple(args.regimes.split(",")), budget_s=args.budget, cap_s=args.cap,
                        dtype=args.dtype, memory=not args.no_memory, isolate=not args.in_process,
                        threads=args.threads, reference=args.reference or None, workload=args.op or "statement",
                        **shapes, **params)
    print(markdown(records))
    if args.out:
        from .compare import command_line
        from .machine import machine_info
        paths = write_results(records, args.out, command=command_line(args.argv), machine=machine_info(),
                              name=args.name)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_choose(args) -> int:
    from .backends.namespaces import namespace
    from .check import random_inputs
    from .choose import choose
    from .errors import BackendError
    op, shapes, params = op_kwargs(args)
    xp = namespace(args.library)
    missing = xp.unavailable()
    if missing:
        raise BackendError(f"--library {args.library}: {missing}")
    arrays = {k: xp.from_numpy_as(a, args.dtype, "cpu") for k, a in random_inputs(shapes, args.dtype, 0).items()}
    entry = choose(op, **arrays, backends=_backend_names(args.backends),
                   passes=tuple(args.passes.split(",")), budget_s=args.budget, refresh=args.refresh,
                   details=True, **params)
    for name, seconds in sorted(entry["seconds"].items(), key=lambda kv: kv[1]):
        print(f"  {name:<18} {seconds * 1e3:10.3f} ms")
    for name, why in entry.get("dropped", {}).items():
        print(f"  {name:<18} dropped: {why}")
    print(entry["backend"])
    return 0


def cmd_table(args) -> int:
    from .errors import ShapeError
    from .table import csv, load_run, markdown, plot
    try:
        run = load_run(args.file)
    except OSError as e:
        raise ShapeError(f"cannot read {args.file}: {e.strerror or e}") from None
    except ValueError as e:     # not JSON, or JSON of neither kind
        raise ShapeError(f"{args.file} is not a results file: {e}") from None
    if args.csv:
        print(csv(run["records"]), end="")
    else:
        if run.get("command"):
            print(f"Regenerate with: {run['command']}\n")
        print(markdown(run["records"]))
    if args.plot:
        path = plot(run["records"], args.plot)
        print(f"wrote {path}" if path else "nothing to plot", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from rich.console import Console

    from .compare import command_line, compare
    from .table import markdown
    console = Console(stderr=True)
    from .harness.supervisor import stop_all
    overrides = {k: v for k, v in (("budget_s", args.budget), ("cap_s", args.cap)) if v is not None}
    outdir = None if args.no_write else args.out
    try:
        records, paths = compare(args.workloads.split(",") if args.workloads else None,
                                 workloads_file=args.workloads_file, quick=args.quick, reduced=args.reduced,
                                 backends=_backend_names(args.backends), peers=not args.no_peers,
                                 peers_file=args.peers, threads=args.threads, outdir=outdir,
                                 command=command_line(args.argv), console=console,
                                 show_progress=not args.no_progress, resume=args.resume, save=args.save,
                                 history=args.history, **overrides)
    except KeyboardInterrupt:
        stopped = stop_all()
        kept = _kept(outdir)
        print(f"einlocal compare: interrupted; stopped {stopped} benchmark process(es); "
              + (f"kept {kept} in {Path(outdir) / 'results.json'}: rerun the same command with --resume to go on"
                 if outdir is not None else "nothing kept (--no-write)"), file=sys.stderr)
        return 130
    print(markdown(records))
    if paths:
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _kept(outdir) -> str:
    from .partial import finished_of
    if outdir is None:
        return "nothing"
    done, records = finished_of(Path(outdir) / "results.json")
    return f"{len(done)} finished job(s), {len(records)} record(s)"


def cmd_cache(args) -> int:
    from .cli_cache import cache_command
    return cache_command(args)


def cmd_tune(args) -> int:
    from .cli_cache import tune_command
    return tune_command(args, _backend_names(args.backends))


# -- parser -------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2 (as every einlocal error)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _passes(allowed):
    def parse(text: str) -> str:
        bad = [p for p in text.split(",") if p not in allowed]
        if bad or not text:
            raise argparse.ArgumentTypeError(f"pass {bad[0] if bad else text!r}; valid: {', '.join(allowed)}")
        return text
    return parse


def parser() -> argparse.ArgumentParser:
    from . import registry
    from .table import PASSES, REGIMES
    from .workloads import WORKLOADS
    p = _Parser(prog="einlocal", description="Locally connected, depthwise and grouped "
                "convolutions: which way of computing them is fastest here?")
    p.add_argument("--debug", action="store_true", help="on an error, the full traceback (else one line, exit 2)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compare", help="workloads (the report ones, or --workloads-file), every available backend, "
                       "checked then timed; tables and figures under results/")
    c.add_argument("--quick", action="store_true", help="within about a minute: small budgets, fresh regime only")
    c.add_argument("--reduced", action="store_true", help="the workloads at their reduced (tiny) shapes")
    c.add_argument("--workloads", default="", help=f"comma-separated ids (default: all); the report workloads: "
                   f"{', '.join(WORKLOADS)}, W4; or a --workloads-file's (a sweep's id runs all its values)")
    c.add_argument("--workloads-file", default=None, metavar="FILE.toml",
                   help="your own workloads (a TOML workload file; docs/workloads.md) instead of the report ones")
    c.add_argument("--resume", action="store_true",
                   help="go on from --out's results.json (an interrupted run), skipping the jobs it holds")
    c.add_argument("--save", default=None, metavar="NAME", help="also keep the run as NAME in the history "
                   "(einlocal runs, einlocal diff); an existing NAME is replaced")
    c.add_argument("--history", default=None, metavar="DIR", help="the history folder (default: <cache dir>/history)")
    c.add_argument("--backends", default="", help="comma-separated names or prefixes ('peer' for peers)")
    c.add_argument("--no-peers", action="store_true", help="leave out the peers (einlocal.peers)")
    c.add_argument("--peers", default=None, metavar="FILE",
                   help="time the peers of this Python file instead of einlocal.peers (it runs in this process)")
    c.add_argument("--threads", type=int, default=None, help="thread count for every library")
    c.add_argument("--budget", type=float, default=None, help="timed seconds per measurement")
    c.add_argument("--cap", type=float, default=None, help="cap in seconds per measurement")
    c.add_argument("--out", default="results", help="folder for results.md/.csv/.json/.png")
    c.add_argument("--no-write", action="store_true", help="print only, write nothing")
    c.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    c.set_defaults(run=cmd_compare)

    b = sub.add_parser("backends", help="available backends and what they take; unavailable ones and why")
    b.set_defaults(run=cmd_backends)

    k = sub.add_parser("check", help="every backend against the float64 reference; exit 1 on a failure")
    add_op_arguments(k)
    k.add_argument("--seed", type=int, default=None, help="the inputs' random seed (default: a new one, printed)")
    k.add_argument("--reference-limit", type=float, default=None,
                   help="above this many multiply-adds, check against a fast float64 lowering that passed the "
                        "pure-Python reference at batch 1, one channel per group (default 3e5)")
    k.set_defaults(run=cmd_check)

    t = sub.add_parser("bench", help="time forward/backward, memory, roofline for one op and shape")
    add_op_arguments(t)
    t.add_argument("--passes", type=_passes(PASSES), default="forward,backward",
                   help=f"comma-separated: {', '.join(PASSES)}")
    t.add_argument("--regimes", type=_passes(REGIMES), default="fresh,steady",
                   help=f"comma-separated: {', '.join(REGIMES)}")
    t.add_argument("--budget", type=float, default=0.3, help="timed seconds per measurement")
    t.add_argument("--cap", type=float, default=20.0, help="cap in seconds per measurement")
    t.add_argument("--threads", type=int, default=None, help="thread count for every library")
    t.add_argument("--reference", default="", help="check at full size first against this float64 backend")
    t.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    t.add_argument("--in-process", action="store_true", help="no subprocess per library (no kill at the cap)")
    t.add_argument("--out", default="", help="also write <name>.md/.csv/.json/.png here")
    t.add_argument("--name", default="bench", help="the file name for --out (default bench)")
    t.set_defaults(run=cmd_bench)

    h = sub.add_parser("choose", help="measure the candidates, cache and print the fastest")
    add_op_arguments(h)
    h.add_argument("--library", default="numpy", choices=registry.ENGINES, help="the arrays to measure on")
    h.add_argument("--passes", type=_passes(PASSES[:2]), default="forward",
                   help=f"comma-separated: {', '.join(PASSES[:2])} (default forward)")
    h.add_argument("--budget", type=float, default=0.1, help="timed seconds per candidate")
    h.add_argument("--refresh", action="store_true", help="measure again even if cached")
    h.set_defaults(run=cmd_choose)

    e = sub.add_parser("cache", help="the choice cache: list, export FILE, import FILE, prune, clear")
    e_sub = e.add_subparsers(dest="action", required=True)
    e_sub.add_parser("list", help="one line per entry: op, shapes, dtype, device, backend, time, date")
    e_sub.add_parser("export", help="write every entry to FILE, with the machine and versions").add_argument("file")
    i = e_sub.add_parser("import", help="take the entries of FILE this machine can use; each one's verdict")
    i.add_argument("file")
    i.add_argument("--replace", action="store_true", help="an imported entry replaces a local one for the same key")
    r = e_sub.add_parser("prune", help="remove the entries this machine cannot use")
    r.add_argument("--unused-days", type=float, default=None, help="also those not used for this many days")
    e_sub.add_parser("clear", help="remove every entry")
    e.set_defaults(run=cmd_cache)

    u = sub.add_parser("tune", help="measure the calls EINLOCAL_RECORD_UNTUNED recorded in FILE; fill the cache")
    u.add_argument("file")
    u.add_argument("--passes", default="forward", help="forward, backward, forward+backward: what is timed and summed")
    u.add_argument("--budget", type=float, default=0.1, help="timed seconds per candidate")
    u.add_argument("--backends", default="", help="comma-separated names or prefixes (default: all available)")
    u.add_argument("--refresh", action="store_true", help="measure again calls already cached")
    u.set_defaults(run=cmd_tune)

    g = sub.add_parser("source", help="print the code a loops backend generates for an op, forward and backward")
    add_op_arguments(g, backends=False)
    g.add_argument("--backend", default="loops:numba", help="loops:numba (default), loops:triton or loops:cupy")
    g.add_argument("--pass", dest="pass_", default="all",
                   help="forward, dx, dweight (the gradient of each array argument, as in check), backward "
                        "(every gradient in one kernel, where the backend has one) or all (default)")
    g.set_defaults(run=cmd_source)

    a = sub.add_parser("table", help="markdown (or CSV) from einlocal or pytest-benchmark JSON")
    a.add_argument("file", help="results.json of einlocal compare/bench, or pytest-benchmark JSON")
    a.add_argument("--csv", action="store_true", help="CSV instead of markdown")
    a.add_argument("--plot", default="", help="also write a PNG here")
    a.set_defaults(run=cmd_table)

    from .cli_runs import add_parsers
    add_parsers(sub)
    return p


def main(argv=None) -> int:
    """Run one subcommand; an einlocal error is one line on stderr and exit
    status 2 (the traceback with --debug)."""
    from .errors import EinlocalError
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except EinlocalError as e:
        if debug:
            raise
        lines = str(e).strip().splitlines() or [""]
        more = " (more with --debug)" if len(lines) > 1 else ""
        print(f"einlocal {args.command}: {type(e).__name__}: {lines[0]}{more}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
