"""`einlocal cache list | export | import | prune | clear`, run in-process."""
import importlib
import json

import numpy as np
import pytest

import einlocal as el
from einlocal.choice_cache import key_string
from einlocal.cli import main

auto = importlib.import_module("einlocal.auto")


@pytest.fixture
def use_cache(tmp_path, monkeypatch):
    """Point EINLOCAL_CACHE_DIR at a folder of tmp_path (a fresh process's view of it)."""
    def use(name):
        monkeypatch.setenv("EINLOCAL_CACHE_DIR", str(tmp_path / name))
        auto._cache_state.clear()
        return tmp_path / name
    yield use
    auto._cache_state.clear()


def chosen():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8, 8), dtype=np.float32), rng.standard_normal((6, 1, 3, 3), dtype=np.float32)
    return el.choose(el.depthwise_conv2d, x, w, padding=1, backends=["einsum:numpy", "bmm:numpy"], budget_s=0.002,
                     details=True)


def test_export_then_import_into_an_empty_cache_then_list_shows_the_entry(tmp_path, use_cache, capsys):
    use_cache("here")
    entry = chosen()
    exported = tmp_path / "choices.json"
    assert main(["cache", "export", str(exported)]) == 0
    assert "exported 1 entry" in capsys.readouterr().out
    data = json.loads(exported.read_text())
    header = data["header"]
    assert header["format"] == "einlocal-choices/1" and header["einlocal"] == el.__version__
    assert header["machine"]["cpu"] and header["versions"]["numpy"] == np.__version__

    use_cache("elsewhere")
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out.strip() == "the choice cache is empty"
    assert main(["cache", "import", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "accepted: depthwise_conv2d x=2x3x8x8 weight=6x1x3x3 padding=1 float32 numpy on cpu" in out
    assert "accepted 1 of 1 entries" in out
    assert main(["cache", "list"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("depthwise_conv2d x=2x3x8x8 weight=6x1x3x3 padding=1 float32 numpy on cpu  ->  "
                           + entry["backend"])
    assert f"{entry['seconds'][entry['backend']] * 1e3:.3f} ms" in line and entry["measured"][:10] in line
    assert "not used here" not in line
    x, w = np.ones((2, 3, 8, 8), np.float32), np.ones((6, 1, 3, 3), np.float32)
    call = el.depthwise_conv2d.bind(x, w, padding=1)
    assert auto.auto_backend(call, "numpy", "cpu", "float32") == entry["backend"]    # auto uses the import
    assert main(["cache", "import", str(exported)]) == 0          # a second import adds nothing
    assert f"rejected: depthwise_conv2d x=2x3x8x8 weight=6x1x3x3 padding=1 float32 numpy on cpu: already cached " \
           f"here with {entry['backend']}" in capsys.readouterr().out


def _entry(exported, **change):
    """The exported file's entry with key parts or value fields changed."""
    item = json.loads(exported.read_text())["entries"][0]
    key, value = list(item["key"]), dict(item["value"])
    parts = {"device": 6, "versions": 7, "version": 8}
    for name, v in change.items():
        if name in parts:
            key[parts[name]] = v
        else:
            value[name] = v
    return {"key": key, "value": value}


def test_import_rejects_each_entry_it_cannot_use_with_the_reason(tmp_path, use_cache, capsys):
    use_cache("here")
    chosen()
    exported = tmp_path / "choices.json"
    main(["cache", "export", str(exported)])
    data = json.loads(exported.read_text())
    old_numpy = [[n, "1.0.0" if n == "numpy" else v] for n, v in data["entries"][0]["key"][7]]
    data["entries"] = [
        _entry(exported, version="0.0.1"),
        _entry(exported, versions=old_numpy),
        _entry(exported, device="cuda:0 Some GPU"),
        _entry(exported, backend="no_such:backend"),
        {"key": "nonsense", "value": {"backend": "bmm:numpy"}},
        "not an entry",
        _entry(exported),
    ]
    exported.write_text(json.dumps(data))
    use_cache("elsewhere")
    capsys.readouterr()
    assert main(["cache", "import", str(exported)]) == 0
    out = capsys.readouterr().out
    rejected = [line for line in out.splitlines() if line.startswith("  rejected: ")]
    assert len(rejected) == 6 and "accepted 1 of 7 entries" in out
    for reason in ("made by einlocal 0.0.1, this is einlocal " + el.__version__,
                   f"other library versions: numpy 1.0.0 there, {np.__version__} here",
                   "measured on 'cuda:0 Some GPU', not a device here",
                   "unknown backend 'no_such:backend'",
                   "(not an einlocal choice key): not an einlocal choice key",
                   "entry 5: malformed: no key and value"):
        assert any(reason in line for line in rejected), reason


def test_import_keeps_a_local_choice_unless_told_to_replace(tmp_path, use_cache, capsys):
    use_cache("here")
    entry = chosen()
    exported = tmp_path / "choices.json"
    main(["cache", "export", str(exported)])
    other = "bmm:numpy" if entry["backend"] == "einsum:numpy" else "einsum:numpy"
    data = json.loads(exported.read_text())
    data["entries"][0]["value"]["backend"] = other
    exported.write_text(json.dumps(data))
    assert main(["cache", "import", str(exported)]) == 0
    assert f"cached here with {entry['backend']}, kept (--replace takes the file's)" in capsys.readouterr().out
    assert main(["cache", "import", str(exported), "--replace"]) == 0
    assert "accepted 1 of 1" in capsys.readouterr().out
    assert [e["value"]["backend"] for _, e in auto.choice_cache().items()] == [other]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('{"format": 1, "entries": {}}', "is not an einlocal choices export"),
])
def test_import_of_a_file_it_cannot_read_is_one_line_exit_2(tmp_path, use_cache, capsys, content, message):
    use_cache("here")
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert main(["cache", "import", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("einlocal cache: CacheFileError: ") and message in err[0], err


def test_prune_removes_the_entries_this_machine_cannot_use(use_cache, capsys):
    use_cache("here")
    entry = chosen()
    cache = auto.choice_cache()
    (good_key,) = [k for k, _ in cache.items()]
    stale = json.loads(good_key)
    stale[8] = "0.0.1"
    cache.put(stale, dict(entry))
    assert main(["cache", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and sum("[not used here: made by einlocal 0.0.1" in line for line in lines) == 1
    assert main(["cache", "prune"]) == 0
    out = capsys.readouterr().out
    assert "removed: depthwise_conv2d x=2x3x8x8" in out and "made by einlocal 0.0.1" in out and "removed 1 entry" in out
    assert [k for k, _ in cache.items()] == [good_key]
    assert main(["cache", "prune", "--unused-days", "0"]) == 0       # everything is older than 0 days
    assert "not used for" in capsys.readouterr().out and len(cache) == 0


def test_list_shows_the_statement_of_an_entry_without_its_description(use_cache, capsys):
    use_cache("here")
    x, w = np.ones((2, 3, 8, 8), np.float32), np.ones((6, 1, 3, 3), np.float32)
    call = el.depthwise_conv2d.bind(x, w, padding=1)
    auto.choice_cache().put(auto.choice_key(call, "numpy", "float32", "cpu"), {"backend": "bmm:numpy"})
    assert main(["cache", "list"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    # the key's statement and operand shapes (the weight as the statement sees it), its device name
    assert line.startswith("Op('y[n,c,m,h,w] += x[n,c,h+i-1,w+j-1] * wt[c,m,i,j]', pad=0) wt=3x2x3x3 x=2x3x8x8 "
                           "float32 numpy on cpu ") and line.endswith("->  bmm:numpy  -  -")


def test_clear_removes_every_entry(use_cache, capsys):
    use_cache("here")
    chosen()
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and len(auto.choice_cache()) == 0


def test_a_directory_in_place_of_the_cache_file(use_cache, capsys):
    folder = use_cache("here")
    (folder / "choices.json").mkdir(parents=True)
    assert main(["cache", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "the choice cache is empty"
    assert "einlocal cache: warning: ChoiceCache: cannot read the cache file" in captured.err
    assert "Traceback" not in captured.err
    assert main(["cache", "clear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("einlocal cache: CacheDirError: einlocal cannot write the choice cache") \
        and "it is a directory" in err[0]
    x, w = np.ones((2, 3, 8, 8), np.float32), np.ones((6, 1, 3, 3), np.float32)
    auto._cache_state.clear()       # a new process: it warns once again
    with pytest.warns(RuntimeWarning, match="is a directory"):
        assert el.depthwise_conv2d(x, w, padding=1).shape == (2, 6, 8, 8)      # auto: the cost model
    with pytest.raises(el.CacheDirError, match="it is a directory"):
        el.choose(el.depthwise_conv2d, x, w, padding=1, backends=["einsum:numpy"], budget_s=0.002)


def test_key_strings_survive_export_and_import(tmp_path, use_cache):
    use_cache("here")
    chosen()
    (k, _), = auto.choice_cache().items()
    exported = tmp_path / "choices.json"
    main(["cache", "export", str(exported)])
    use_cache("elsewhere")
    main(["cache", "import", str(exported)])
    assert [key for key, _ in auto.choice_cache().items()] == [k] == [key_string(json.loads(k))]
