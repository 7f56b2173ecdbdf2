"""The ``einlocal cache`` and ``einlocal tune`` subcommands: the choice cache listed, moved and cleaned; recorded calls tuned."""
from __future__ import annotations

import contextlib
import sys
import warnings

__all__ = ["cache_command", "tune_command"]


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Warnings raised inside, each printed as one line on stderr at the end."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"einlocal {command}: warning: {w.message}", file=sys.stderr)


def _os_error(command: str, err: OSError) -> int:
    """An operating-system error (an einlocal error goes to `main`'s handler): one line, exit status 2."""
    print(f"einlocal {command}: {type(err).__name__}: {err}", file=sys.stderr)
    return 2


def cache_command(args) -> int:
    from . import cachetool
    from .errors import EinlocalError
    try:
        with _warnings_as_lines("cache"):
            return _cache_action(args, cachetool)
    except EinlocalError:
        raise
    except OSError as e:
        return _os_error("cache", e)


def _plural(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _cache_action(args, cachetool) -> int:
    if args.action == "list":
        lines = cachetool.rows()
        print("\n".join(lines) if lines else "the choice cache is empty")
    elif args.action == "export":
        print(f"exported {_plural(cachetool.export(args.file))} to {args.file}")
    elif args.action == "import":
        header, verdicts = cachetool.import_file(args.file, replace=args.replace)
        machine = header.get("machine") or {}
        print(f"{args.file}: einlocal {header.get('einlocal')}, exported {header.get('exported')} "
              f"on {machine.get('hostname')} ({machine.get('cpu')})")
        for desc, ok, why in verdicts:
            print(f"  {'accepted' if ok else 'rejected'}: {desc}: {why}")
        print(f"accepted {sum(ok for _, ok, _ in verdicts)} of {len(verdicts)} entries")
    elif args.action == "prune":
        removed = cachetool.prune(unused_days=args.unused_days)
        for desc, why in removed:
            print(f"  removed: {desc}: {why}")
        print(f"removed {_plural(len(removed))}")
    else:
        print(f"removed {_plural(cachetool.clear())}")
    return 0


def tune_command(args, backends) -> int:
    """`einlocal tune FILE`: one line per call as it is done; exit 1 when a call failed."""
    from .errors import EinlocalError
    from .tuning import tune

    def report(desc, status, detail):
        print(f"  {status}: {desc}: {detail}", flush=True)
    try:
        with _warnings_as_lines("tune"):
            results = tune(args.file, passes=tuple(args.passes.split(",")), budget_s=args.budget,
                           backends=backends, refresh=args.refresh, report=report)
    except EinlocalError:
        raise
    except OSError as e:
        return _os_error("tune", e)
    failed = sum(status == "failed" for _, status, _ in results)
    print(f"{len(results) - failed} of {len(results)} calls tuned or already cached"
          + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0
