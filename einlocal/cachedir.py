"""The per-user cache folder: where it is, that only its user can write to it, and atomic writes and imports of code in it."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from .errors import CacheDirError

__all__ = ["default_root", "root", "folder", "fresh", "check", "write_atomic", "write_code", "load_module",
           "import_file"]

# POSIX owners and modes; elsewhere (Windows) the checks are skipped, never the folder's place
_POSIX = hasattr(os, "getuid")


def default_root() -> Path:
    """The platform's per-user cache folder for einlocal (not created here):
    ``$XDG_CACHE_HOME/einlocal`` or ``~/.cache/einlocal`` on Linux and other
    POSIX systems, ``~/Library/Caches/einlocal`` on macOS,
    ``%LOCALAPPDATA%\\einlocal\\Cache`` on Windows."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "einlocal" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "einlocal"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"   # the spec ignores a relative one
    return base / "einlocal"


def root() -> Path:
    """``$EINLOCAL_CACHE_DIR`` when set, else ``default_root()``: created
    (mode 0700) if missing, and checked to be the user's own and writable by
    no one else (`check`)."""
    env = os.environ.get("EINLOCAL_CACHE_DIR")
    path = Path(env) if env else default_root()
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):   # another process made it first: checked below
            path.mkdir(mode=0o700)
    _check_one(path, "the cache folder")
    return path


def fresh(prefix: str) -> Path:
    """A new empty folder (mode 0700) under ``root()``, removed when the
    process exits: a cache of its own for one run (a benchmark that
    measures into an empty choice cache), still inside the user's checked
    cache folder."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root()))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def folder(*parts: str) -> Path:
    """``root()/parts...``, each level made with mode 0700 where missing and
    all of them checked (`check`)."""
    path = base = root()
    for part in parts:
        path = path / part
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    check(path, base)
    return path


def check(path: str | os.PathLike, base: Path | None = None) -> None:
    """Refuse (``CacheDirError``) unless ``base`` (default ``root()``) and
    every folder from it down to ``path`` (a folder or a file; a file itself
    too) are owned by the user and writable by no one else.  ``path`` must
    lie inside ``base``."""
    base = root() if base is None else base
    path = Path(path)
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(base))
    except ValueError:
        raise CacheDirError(f"einlocal will not write or import generated code at {path}: it is outside "
                            f"the cache folder {base} (EINLOCAL_CACHE_DIR, or the per-user cache folder)") from None
    here = base
    _check_one(here, "the cache folder")
    for part in rel.parts:
        here = here / part
        _check_one(here, "a folder in the cache folder" if here.is_dir() else "a file in the cache folder")


def _check_one(path: Path, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CacheDirError(f"einlocal cannot use {what} {path}: {e.strerror or e}") from e
    if not _POSIX:
        return
    uid = os.getuid()
    problems = []
    if st.st_uid != uid:
        problems.append(f"it is owned by {_user(st.st_uid)}, not by you ({_user(uid)})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(w for w, bit in (("its group", stat.S_IWGRP), ("all users", stat.S_IWOTH))
                           if st.st_mode & bit)
        problems.append(f"its mode {stat.filemode(st.st_mode)} ({st.st_mode & 0o7777:04o}) lets {who} write to it")
    if problems:
        fix = (f"run `chmod go-w {path}` after checking what is in it"
               if st.st_uid == uid else "remove it or move it aside")
        raise CacheDirError(
            f"einlocal refuses {what} {path}: {'; '.join(problems)}, so another user could plant code that "
            f"would run in your process. Either {fix}, or set EINLOCAL_CACHE_DIR to a folder only you can write to.")


def _user(uid: int) -> str:
    try:
        import pwd
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def write_atomic(path: str | os.PathLike, data: str | bytes, *, shared: bool = False) -> None:
    """Replace ``path`` with ``data``: written to a new, unpredictably named
    file in the same folder (``tempfile.mkstemp``: created exclusively, never
    through a link), then renamed over ``path`` (``os.replace``: a link at
    ``path`` is replaced, not followed).  The file is the user's alone (mode
    0600), or with ``shared`` (a results file) as the umask makes new files."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if shared and hasattr(os, "fchmod"):
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_code(path: str | os.PathLike, source: str) -> Path:
    """``path`` (in the cache folder) holding ``source``: its folders checked
    (`check`), and the file written (`write_atomic`) unless it already holds
    exactly ``source``."""
    path = Path(path)
    check(path.parent)
    try:
        if not path.is_symlink() and path.is_file() and path.read_text() == source:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(path, source)
    return path


def load_module(name: str, path: str | os.PathLike):
    """Import the module file ``path`` (in the cache folder) as ``name``, from
    that path only (not through ``sys.path``), once its folders, its
    ``__pycache__`` (made 0700 here if missing) and the file are checked."""
    path = Path(path)
    check(path)
    with contextlib.suppress(FileExistsError):
        (path.parent / "__pycache__").mkdir(mode=0o700)
    check(path.parent / "__pycache__")
    return import_file(name, path)


def import_file(name: str, path) -> object:
    """Import the module at exactly ``path`` as ``name`` (no search path
    involved); a module that fails to run is not left in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod
