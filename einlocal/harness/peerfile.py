"""Where peers come from: `einlocal.peers`, or a file named explicitly (``--peers FILE``); never the working directory."""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from typing import Any

__all__ = ["load_peers", "load_peer", "peer_params", "peer_info", "peer_for", "PACKAGE_PEERS"]

PACKAGE_PEERS = "einlocal.peers"


def _module(path: str | None):
    """The peers module: the package's (`path` None), or the file at `path`, loaded by
    path once per process (one module per file, so two files' peers stay apart)."""
    if path is None:
        return importlib.import_module(PACKAGE_PEERS)
    name = "einlocal_peers_" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    mod = sys.modules.get(name)
    if mod is None:
        from ..cachedir import import_file
        mod = import_file(name, path)
    return mod


def _guess_library(name: str, entry: Any) -> str:
    if isinstance(entry, dict) and entry.get("library"):
        return entry["library"]
    if isinstance(entry, tuple) and len(entry) > 2:
        return entry[2]
    low = name.lower()
    if any(w in low for w in ("jax", "lax", "patches", "general_dilated")):
        return "jax"
    if any(w in low for w in ("torch", "unfold", "groups", "f_conv")):
        return "torch"
    return "numpy"


def load_peers(path: str | Path | None = None) -> dict[str, dict]:
    """Peer name -> {"library", "path", "name", "op"[, "same_as"]} from `einlocal.peers`
    (`path` None) or the peers file at `path` (explicitly named: an error there is raised).

    The module may hold `PEERS = {name: (forward, backward, library, op)}` (or dicts with
    those keys); otherwise its public functions (not ending in _backward/_vjp) are the peers.
    `SAME_CALL = {name: backend}` marks a peer that makes the very call a native backend makes
    (its entry gets ``same_as``: --quick times only the native one)."""
    if path is not None:
        path = str(Path(path).resolve())
        if not Path(path).is_file():
            raise FileNotFoundError(f"peers file {path} does not exist")
    mod = _module(path)            # peers import frameworks lazily, inside their functions
    table = getattr(mod, "PEERS", None)
    if isinstance(table, dict):
        items = table.items()
    else:
        items = [(n, f) for n, f in vars(mod).items()
                 if callable(f) and not n.startswith("_") and getattr(f, "__module__", None) == mod.__name__
                 and not n.endswith(("_backward", "_vjp")) and not isinstance(f, type)]
    same = getattr(mod, "SAME_CALL", {})
    out = {}
    for n, e in items:
        op = e[3] if isinstance(e, tuple) and len(e) > 3 else e.get("op") if isinstance(e, dict) else None
        out[n] = {"library": _guess_library(n, e), "path": path, "name": n, "op": op}
        if same.get(n):
            out[n]["same_as"] = same[n]
    return out


def load_peer(peer: dict):
    """(forward, backward or None) of the peer `peer` describes (`load_peers`' entry).

    Forward f(x, weight, bias, **params) -> y, backward g(dy, x, weight, bias, **params)
    -> (dx, dweight, dbias), arrays in einlocal's layouts: from the module's `PEERS`
    (name -> (forward, backward, library, op), a dict with those keys, or a function),
    else its functions `<name>` and `<name>_backward` (or `<name>_vjp`)."""
    mod = _module(peer.get("path"))
    table = getattr(mod, "PEERS", None)
    if isinstance(table, dict) and peer["name"] in table:
        entry = table[peer["name"]]
        if callable(entry):
            return entry, None
        if isinstance(entry, tuple):
            return entry[0], entry[1] if len(entry) > 1 else None
        return entry["forward"], entry.get("backward")
    fwd = getattr(mod, peer["name"])
    bwd = getattr(mod, peer["name"] + "_backward", None) or getattr(mod, peer["name"] + "_vjp", None)
    return fwd, bwd


def peer_params(peer: dict, params: dict, x_shape) -> dict:
    """A peer's keyword parameters for an x of `x_shape`: with ``groups_from="x_channels"``
    (depthwise as a grouped conv) ``groups`` is x's channel count, whatever the size."""
    if peer.get("groups_from") == "x_channels":
        return {**params, "groups": int(x_shape[1])}
    return params


def peer_info(op_name: str, info: dict) -> dict:
    """The peer entry as a job takes it for a workload of op `op_name`: a depthwise
    workload run by a grouped-conv peer gets ``groups_from="x_channels"`` (groups =
    x.shape[1] of the arrays each call gets, so the reduced check and the full size
    each have their own)."""
    info = dict(info)
    if op_name == "depthwise_conv2d" and info.get("op") == "conv2d":
        info["groups_from"] = "x_channels"
    return info


def peer_for(wanted: str, peers: dict) -> str | None:
    """The peer in `peers` whose name contains the workload's peer word (e.g. "unfold_einsum")."""
    if wanted in peers:
        return wanted
    key = wanted.lower().replace("_", "")
    for name in peers:
        if key in name.lower().replace("_", ""):
            return name
    return None
