"""Generated code is written and imported only under the user's own cache
folder: a kernel planted in a shared temp folder never runs, a cache folder
others can write to is refused, and writes never follow a planted link."""
import importlib.util
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

import einlocal as el
from einlocal import cachedir, machine
from einlocal.errors import CacheDirError, EinlocalError

OP = el.Op("y[n,h] += x[n,h+i] * w[i,h]")
SHAPES = dict(x=(2, 9), w=(3, 7))
OTHER_UID = 54321            # a uid no test process runs as
AS_ROOT = hasattr(os, "getuid") and os.getuid() == 0
posix = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh EINLOCAL_CACHE_DIR, not yet created."""
    path = tmp_path / "cache"
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(path))
    return path


# -- where the cache folder is ------------------------------------------------------------------

@posix
def test_the_cache_folder_is_made_private(own_cache):
    assert machine.cache_dir() == own_cache
    assert _mode(own_cache) == 0o700
    assert _mode(cachedir.folder("numba", "deeper")) == 0o700
    assert _mode(own_cache / "numba") == 0o700


@posix
def test_a_fresh_folder_is_private_inside_the_cache_folder_and_gone_at_exit(own_cache):
    code = "from einlocal.cachedir import fresh; import os, stat; p = fresh('run-'); " \
           "print(p, oct(stat.S_IMODE(os.stat(p).st_mode)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "EINLOCAL_CACHE_DIR": str(own_cache)}).stdout.split()
    made = os.path.realpath(out[0])
    assert os.path.dirname(made) == os.path.realpath(own_cache) and os.path.basename(made).startswith("run-")
    assert out[1] == "0o700"
    assert not os.path.exists(made)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the XDG layout")
def test_default_is_the_per_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("EINLOCAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cachedir.default_root() == tmp_path / "xdg" / "einlocal"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")          # ignored, as the XDG spec says
    assert cachedir.default_root() == tmp_path / "home" / ".cache" / "einlocal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert machine.cache_dir() == tmp_path / "home" / ".cache" / "einlocal"
    assert _mode(machine.cache_dir()) == 0o700


# -- (a) a kernel planted in a shared temp folder never runs ----------------------------------------

_MALICIOUS = "open({marker!r}, 'a').write({tag!r} + '\\n')\n"

_VICTIM = textwrap.dedent("""
    import json, tempfile
    import numpy as np, torch
    import einlocal as el
    op = el.Op("y[n,h] += x[n,h+i] * w[i,h]")
    x = np.arange(18.0).reshape(2, 9) / 7
    w = np.arange(21.0).reshape(3, 7) / 5 - 2
    ref = sum(x[:, i:i + 7] * w[i] for i in range(3))
    tx, tw = torch.tensor(x, dtype=torch.float32), torch.tensor(w, dtype=torch.float32)
    got = {"numba": op(x=x, w=w, backend="loops:numba").tolist(),
           "triton": op(x=tx, w=tw, backend="loops:triton").double().tolist()}
    print(json.dumps({"ref": ref.tolist(), "got": got, "tmp": tempfile.gettempdir()}))
""")


def _expected_files():
    """{folder: (file name, source)} of the kernels the victim's two calls
    generate, worked out in this process (under a scratch cache folder)."""
    from einlocal.backends import loops_numba, loops_triton
    plan = OP.bind(**SHAPES)
    triton = loops_triton.make()
    kp = triton.kernel_plan(plan, "float32")
    numba_src = loops_numba.make().kernel(plan, dtype="float64").source
    numba_path, _ = loops_numba._module_path(numba_src)
    return {"triton_kernels": (f"{kp.name}.py", loops_triton.triton_source(kp)),
            "numba": (numba_path.name, numba_src)}


def _plant(folder, name, source, marker, tag):
    """``folder/name`` holding the expected ``source``, and a ``__pycache__``
    entry stamped with that source's mtime and size whose code writes
    ``tag`` to ``marker``: what Python imports for that file."""
    from importlib._bootstrap_external import _code_to_timestamp_pyc
    os.makedirs(folder / "__pycache__", exist_ok=True)
    path = folder / name
    path.write_text(source)
    st = os.stat(path)
    code = compile(_MALICIOUS.format(marker=str(marker), tag=tag), str(path), "exec")
    pyc = importlib.util.cache_from_source(str(path))
    with open(pyc, "wb") as f:
        f.write(_code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size))
    return path


@posix
@pytest.mark.triton
def test_a_kernel_planted_in_a_shared_temp_folder_never_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    pytest.importorskip("numba")
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path / "scratch"))
    expected = _expected_files()

    # another user's shared temp folder, with einlocal's old kernel folders made first
    shared, marker = tmp_path / "shared", tmp_path / "marker"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    planted = []
    for sub, (name, source) in expected.items():
        folder = shared / "einlocal" / sub
        planted.append(_plant(folder, name, source, marker, sub))
        for f in (folder, folder.parent, folder / "__pycache__"):
            os.chmod(f, 0o777)
            if AS_ROOT:
                os.chown(f, OTHER_UID, OTHER_UID)

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("EINLOCAL_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(TMPDIR=str(shared), HOME=str(home), TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _VICTIM], env=env, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), marker.read_text()                    # no planted code ran
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tmp"] == str(shared)                                  # the victim's temp folder is the shared one
    import numpy as np
    np.testing.assert_allclose(out["got"]["numba"], out["ref"], rtol=1e-12)
    np.testing.assert_allclose(out["got"]["triton"], out["ref"], rtol=1e-5)

    # the kernels went to the per-user cache folder, under the planted names
    own = home / ".cache" / "einlocal"
    assert _mode(own) == 0o700
    for sub, (name, source) in expected.items():
        assert (own / sub / name).read_text() == source
        assert _mode(own / sub) == 0o700 and _mode(own / sub / "__pycache__") == 0o700

    # the plants are live: an importer trusting the shared folder runs them
    for k, path in enumerate(planted):
        spec = importlib.util.spec_from_file_location(f"planted_{k}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert marker.read_text().split() == list(expected)


# -- (b) a cache folder others can write to is refused ----------------------------------------------

def _call_backend(name):
    """One call of backend ``name`` through a fresh instance (no kernel cached in memory)."""
    import numpy as np
    if name == "loops:triton":
        pytest.importorskip("triton")
        torch = pytest.importorskip("torch")
        from einlocal.backends import loops_triton as mod
        arrays = {k: torch.ones(v) for k, v in SHAPES.items()}
    else:
        pytest.importorskip("numba")
        from einlocal.backends import loops_numba as mod
        arrays = {k: np.ones(v) for k, v in SHAPES.items()}
    return mod.make().execute(OP.bind(**SHAPES), arrays)


@posix
@pytest.mark.parametrize("backend_name", ["loops:numba", "loops:triton"])
def test_a_group_writable_cache_folder_is_refused(own_cache, backend_name):
    assert float(_call_backend(backend_name)[0, 0]) == 3.0            # the private folder works
    os.chmod(own_cache, 0o770)
    with pytest.raises(CacheDirError, match="group") as info:
        _call_backend(backend_name)
    msg = str(info.value)
    assert str(own_cache) in msg and "0770" in msg and "EINLOCAL_CACHE_DIR" in msg and "chmod" in msg
    assert isinstance(info.value, EinlocalError) and isinstance(info.value, PermissionError)


@posix
@pytest.mark.parametrize("backend_name, sub", [("loops:numba", "numba"), ("loops:triton", "triton_kernels")])
def test_a_world_writable_kernel_folder_is_refused(own_cache, backend_name, sub):
    cachedir.folder(sub)
    os.chmod(own_cache / sub, 0o777)
    with pytest.raises(CacheDirError, match="all users") as info:
        _call_backend(backend_name)
    assert str(own_cache / sub) in str(info.value)


@posix
def test_a_writable_pycache_is_refused(own_cache):
    path = cachedir.write_code(cachedir.folder("numba") / "k_test.py", "X = 1\n")
    (path.parent / "__pycache__").mkdir(mode=0o700)
    os.chmod(path.parent / "__pycache__", 0o775)
    with pytest.raises(CacheDirError, match="__pycache__"):
        cachedir.load_module("einlocal_test_pycache", path)
    assert "einlocal_test_pycache" not in sys.modules
    os.chmod(path.parent / "__pycache__", 0o700)
    assert cachedir.load_module("einlocal_test_pycache", path).X == 1


@pytest.mark.skipif(not AS_ROOT, reason="giving a folder to another user needs root")
def test_a_folder_of_another_user_is_refused(own_cache):
    folder = cachedir.folder("numba")
    os.chown(folder, OTHER_UID, -1)
    with pytest.raises(CacheDirError, match=f"owned by .*{OTHER_UID}") as info:
        cachedir.folder("numba")
    assert "move it aside" in str(info.value)
    os.chown(own_cache, OTHER_UID, -1)
    with pytest.raises(CacheDirError, match=str(own_cache)):
        machine.cache_dir()


def test_code_outside_the_cache_folder_is_not_imported(own_cache, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("X = 1\n")
    with pytest.raises(CacheDirError, match="outside"):
        cachedir.load_module("einlocal_test_outside", outside)
    link = cachedir.folder("numba") / "k_link.py"
    link.symlink_to(outside)                                          # a link out of the folder is outside too
    with pytest.raises(CacheDirError, match="outside"):
        cachedir.load_module("einlocal_test_outside", link)


# -- (c) writes never follow a planted link ------------------------------------------------------------

@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("untouched\n")
    return path


def test_write_atomic_replaces_a_link_instead_of_following_it(own_cache, victim):
    target = cachedir.folder("numba") / "k_x.py"
    target.symlink_to(victim)
    cachedir.write_atomic(target, "X = 2\n")
    assert victim.read_text() == "untouched\n"
    assert not target.is_symlink() and target.read_text() == "X = 2\n"
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_write_code_replaces_a_link_holding_the_same_source(own_cache, victim):
    victim.write_text("X = 3\n")
    target = cachedir.folder("numba") / "k_y.py"
    target.symlink_to(victim)
    cachedir.write_code(target, "X = 3\n")
    assert not target.is_symlink() and target.read_text() == "X = 3\n"


def test_machine_json_write_does_not_follow_a_link_at_the_old_temp_name(own_cache, victim):
    own_cache.mkdir(mode=0o700)
    (own_cache / f".machine.json.{os.getpid()}.tmp").symlink_to(victim)
    (own_cache / "machine.json").symlink_to(victim)
    assert machine._cached("test_rate", lambda: 4.5, refresh=True) == 4.5
    assert victim.read_text() == "untouched\n"
    assert not (own_cache / "machine.json").is_symlink()
    assert machine._cached("test_rate", lambda: 0.0, refresh=False) == 4.5


@pytest.mark.triton
def test_triton_kernel_write_does_not_follow_a_link_at_the_old_temp_name(own_cache, victim):
    pytest.importorskip("triton")
    from einlocal.backends import loops_triton
    path = os.path.join(loops_triton.kernel_dir(), "k_link.py")
    os.symlink(victim, f"{path}.{os.getpid()}.tmp")
    assert loops_triton.write_kernel("k_link", "X = 4\n") == path
    assert victim.read_text() == "untouched\n"
    assert open(path).read() == "X = 4\n"
