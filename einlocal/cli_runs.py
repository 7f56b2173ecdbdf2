"""The command line's ``runs`` and ``diff``: saved runs, and two runs compared."""
from __future__ import annotations

import sys

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    r = sub.add_parser("runs", help="the runs saved with `compare --save NAME`, one line each")
    r.add_argument("--history", default=None, help="the history folder (default: <cache dir>/history)")
    r.set_defaults(run=cmd_runs)

    d = sub.add_parser("diff", help="two runs compared: ratio of medians, significance (Mann-Whitney U)")
    d.add_argument("a", help="a results.json (or pytest-benchmark JSON) file, or a saved run's name")
    d.add_argument("b", help="the same, for the run compared against A")
    d.add_argument("--csv", action="store_true", help="CSV instead of a markdown table")
    d.add_argument("--alpha", type=float, default=None, help="significance threshold for p (default 0.05)")
    d.add_argument("--fail", type=float, default=None, metavar="PCT",
                   help="exit 1 when a significant slowdown exceeds PCT percent")
    d.add_argument("--history", default=None, help="where saved runs are looked up")
    d.set_defaults(run=cmd_diff)


def cmd_runs(args) -> int:
    from .runs import history_dir, saved
    runs = saved(args.history)
    if not runs:
        print(f"no saved runs in {history_dir(args.history)} (einlocal compare --save NAME stores one)")
        return 0
    for r in runs:
        print(f"{r['name']:<20} {r['date'] or '?':<25} {r['commit'] or '-':<20} {r['machine']}  "
              f"{','.join(r['workloads'])}")
    return 0


def _load(name: str, history):
    from .runs import RunError, resolve
    from .table import load_run
    path = resolve(name, history)
    try:
        return load_run(path)
    except (OSError, ValueError, TypeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None


def cmd_diff(args) -> int:
    from . import diff
    from .errors import EinlocalError
    alpha = diff.ALPHA if args.alpha is None else args.alpha
    try:
        if not 0 < alpha < 1:
            raise EinlocalError(f"--alpha must be between 0 and 1, got {alpha}")
        if args.fail is not None and args.fail < 0:
            raise EinlocalError(f"--fail PCT must be >= 0, got {args.fail}")
        a, b = _load(args.a, args.history), _load(args.b, args.history)
    except EinlocalError as e:
        print(f"einlocal diff: {e}", file=sys.stderr)
        return 2
    for line in diff.machine_differences(a.get("machine"), b.get("machine")):
        print(f"warning: the runs come from different machines or versions: {line}", file=sys.stderr)
    try:
        changes = diff.compare_runs(a["records"], b["records"], alpha)
    except ImportError as e:
        print(f"einlocal diff: the significance test needs scipy (pip install einlocal[bench]): {e}", file=sys.stderr)
        return 2
    print(diff.csv(changes) if args.csv else diff.markdown(changes, alpha), end="" if args.csv else "\n")
    if args.fail is not None and diff.worst_slowdown(changes) * 100 > args.fail:
        print(f"einlocal diff: a significant slowdown of {diff.worst_slowdown(changes):.0%} exceeds --fail "
              f"{args.fail:g}%", file=sys.stderr)
        return 1
    return 0
