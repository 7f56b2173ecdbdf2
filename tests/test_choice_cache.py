"""einlocal.choice_cache: LRU order, atomic and tolerant file, concurrent writers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from einlocal import choice_cache
from einlocal.choice_cache import FORMAT_VERSION, ChoiceCache, key_string
from einlocal.errors import CacheDirError


def key(i):
    return ("y[n,o,h,w] += x[n,c,h+i,w+j] * wt[o,c,i,j,h,w]", ((2, 3, 8, 8), (4, 3, 3, 3, 6, 6)),
            "float32", "cpu", {"numpy": "2.4"}, i)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "sub" / "choices.json"


def test_put_get_and_persistence(path):
    cache = ChoiceCache(path)
    assert cache.get(key(0)) is None
    cache.put(key(0), {"backend": "bmm:numpy", "median_s": 0.01})
    assert cache.get(key(0)) == {"backend": "bmm:numpy", "median_s": 0.01}
    assert ChoiceCache(path).get(key(0))["backend"] == "bmm:numpy"  # another instance reads it
    assert len(cache) == 1 and key(0) in cache and key(1) not in cache


def test_least_recently_used_is_evicted(path):
    cache = ChoiceCache(path, max_entries=3)
    for i in range(4):
        cache.put(key(i), {"i": i})
    assert cache.get(key(0)) is None
    assert [cache.get(key(i))["i"] for i in (1, 2, 3)] == [1, 2, 3]
    assert len(cache) == 3


def test_get_updates_recency(path):
    cache = ChoiceCache(path, max_entries=3)
    for i in range(3):
        cache.put(key(i), {"i": i})
    assert cache.get(key(0)) == {"i": 0}  # 0 is now the most recent, 1 the least
    cache.put(key(3), {"i": 3})
    assert key(1) not in cache
    assert all(key(i) in cache for i in (0, 2, 3))
    assert cache.keys()[-1] == key_string(key(3))


def test_writes_leave_no_temporary_file(path):
    cache = ChoiceCache(path)
    for i in range(5):
        cache.put(key(i), {"i": i})
    # the lock file stays where the platform's lock keeps it (filelock removes it on Windows)
    assert sorted(n for n in os.listdir(path.parent) if n != "choices.json.lock") == ["choices.json"]
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT_VERSION and len(data["entries"]) == 5


def test_failed_write_keeps_the_old_file(path, monkeypatch):
    cache = ChoiceCache(path)
    cache.put(key(0), {"i": 0})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(choice_cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key(1), {"i": 1})
    monkeypatch.undo()
    assert len(cache) == 1 and cache.get(key(0)) == {"i": 0}
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]


@pytest.mark.parametrize("content", ['{"format": 1, "entr', "", "[1, 2]",
                                     '{"format": 999, "entries": {}}',
                                     '{"format": 1, "entries": {"k": 3}}'])
def test_unreadable_file_warns_and_is_rebuilt(path, content):
    path.parent.mkdir(parents=True)
    path.write_text(content)
    cache = ChoiceCache(path)
    with pytest.warns(RuntimeWarning, match="choices.json"):
        assert cache.get(key(0)) is None
    assert json.loads(path.read_text()) == {"format": FORMAT_VERSION, "entries": {}}
    cache.put(key(0), {"i": 0})
    assert cache.get(key(0)) == {"i": 0}


def test_clear(path):
    cache = ChoiceCache(path)
    cache.put(key(0), {"i": 0})
    cache.clear()
    assert len(cache) == 0 and cache.get(key(0)) is None


_WRITER = """
import sys
from einlocal.choice_cache import ChoiceCache
cache = ChoiceCache(sys.argv[1], max_entries=1000)
for i in range(40):
    cache.put([sys.argv[2], i], {"writer": sys.argv[2], "i": i})
"""


def test_concurrent_writers_keep_each_others_keys(path):
    path.parent.mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name])
             for name in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    cache = ChoiceCache(path, max_entries=1000)
    assert len(cache) == 80
    assert all(cache.get([w, i]) == {"writer": w, "i": i} for w in "ab" for i in range(40))


def test_key_string_is_stable():
    assert key_string(("a", (1, 2))) == key_string(["a", [1, 2]])
    assert key_string({"b": 1, "a": 2}) == key_string({"a": 2, "b": 1})
    assert key_string((np.int64(3),)) == key_string((3,))
    with pytest.raises(TypeError, match="not JSON-able"):
        key_string((object(),))


def test_value_must_be_a_json_dict(path):
    cache = ChoiceCache(path)
    with pytest.raises(TypeError):
        cache.put(key(0), ["not", "a", "dict"])
    with pytest.raises(TypeError):
        cache.put(key(0), {"f": object()})
    assert len(cache) == 0


def test_default_path_is_in_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path))
    assert ChoiceCache().path == tmp_path / "choices.json"


def test_a_directory_in_the_files_place_warns_on_read_and_is_a_clear_error_on_write(path):
    path.mkdir(parents=True)
    cache = ChoiceCache(path)
    with pytest.warns(RuntimeWarning, match="is a directory"):
        assert cache.get(key(0)) is None
    assert len(cache) == 0        # warned once: no second warning
    with pytest.raises(CacheDirError, match=r"choices.json: it is a directory; remove or repair it"):
        cache.put(key(0), {"i": 0})
    assert path.is_dir()


def test_an_unreadable_file_warns_and_is_left_alone(path, monkeypatch):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": FORMAT_VERSION, "entries": {}}))
    real = type(path).read_text

    def no_permission(self, *a, **k):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(type(path), "read_text", no_permission)
    with pytest.warns(RuntimeWarning, match="cannot read the cache file .*Permission denied"):
        assert ChoiceCache(path).get(key(0)) is None
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"format": FORMAT_VERSION, "entries": {}}   # not rebuilt


_HOLDER = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_writers_wait_for_the_lock_another_process_holds(path):
    """The lock is filelock's (every platform): a put waits while another process holds it."""
    import threading
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path) + ".lock"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        writer = threading.Thread(target=ChoiceCache(path).put, args=(key(0), {"i": 0}))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not path.exists()     # still waiting for the lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        writer.join(30)
        assert not writer.is_alive() and ChoiceCache(path).get(key(0)) == {"i": 0}
    finally:
        holder.kill()
        holder.wait()


def test_put_strings_items_and_remove(path):
    cache = ChoiceCache(path)
    cache.put_strings({key_string(key(i)): {"i": i} for i in range(3)})
    assert [e["value"]["i"] for _, e in cache.items()] == [0, 1, 2]
    assert cache.remove([key_string(key(1)), "no such key"]) == 1
    assert [json.loads(k)[-1] for k, _ in cache.items()] == [0, 2]
    with pytest.raises(TypeError, match="need str -> dict"):
        cache.put_strings({key_string(key(3)): 3})
