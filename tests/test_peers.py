"""The peers of einlocal.peers (shown beside our backends) against the
loops:python reference, forward and backward, on small shapes."""
import numpy as np
import pytest

import einlocal as el
from einlocal import peers
from einlocal.backends.namespaces import namespace

LC_PLAIN = dict(x=(2, 3, 7, 6), weight=(4, 3, 3, 2, 5, 5), bias=(4, 5, 5), params={})
LC_STRIDED = dict(x=(2, 3, 9, 8), weight=(4, 3, 3, 2, 4, 8), bias=(4, 4, 8),
                  params=dict(stride=(2, 1), padding=1, dilation=(2, 2)))
DEPTHWISE = dict(x=(2, 3, 7, 6), weight=(6, 1, 3, 3), bias=(6,), params=dict(padding=1, groups=3))
GROUPED = dict(x=(2, 4, 7, 6), weight=(6, 2, 3, 2), bias=None, params=dict(stride=2, padding=((1, 0), (0, 2)), groups=2))

CASES = [(name, case_name, case) for name, (_, _, _, op) in peers.PEERS.items()
         for case_name, case in ((("plain", LC_PLAIN), ("strided", LC_STRIDED)) if op == "locally_connected2d"
                                 else (("depthwise", DEPTHWISE), ("grouped", GROUPED)))
         if not (name.startswith("slices") and case_name == "strided")]


def _convert(lib, a):
    return None if a is None else namespace(lib).from_numpy(a)


def _numpy(a):
    return None if a is None else (a.detach().numpy() if hasattr(a, "detach") else np.asarray(a))


@pytest.mark.parametrize("name,case_name,case", CASES, ids=[f"{n}-{c}" for n, c, _ in CASES])
def test_peer_matches_reference(name, case_name, case):
    fwd, bwd, lib, op_name = peers.PEERS[name]
    pytest.importorskip(lib)
    rng = np.random.default_rng(7)
    arrays = {k: (None if case[k] is None else rng.uniform(-1, 1, case[k])) for k in ("x", "weight", "bias")}
    params = dict(case["params"])
    op = getattr(el, op_name)
    ref_params = dict(params)
    if op_name == "conv2d" and case is DEPTHWISE:
        op, ref_params = el.depthwise_conv2d, {k: v for k, v in params.items() if k != "groups"}
    ref_y = op(arrays["x"], arrays["weight"], arrays["bias"], backend="loops:python", **ref_params)
    dy = rng.uniform(-1, 1, ref_y.shape)
    ref_g = op.vjp(dy, arrays["x"], arrays["weight"], arrays["bias"], backend="loops:python", **ref_params)
    conv = {k: _convert(lib, a) for k, a in arrays.items()}
    y = fwd(conv["x"], conv["weight"], conv["bias"], **params)
    np.testing.assert_allclose(_numpy(y), ref_y, rtol=1e-10, atol=1e-10)
    grads = bwd(_convert(lib, dy), conv["x"], conv["weight"], conv["bias"], **params)
    for what, g, r in zip(("dx", "dweight", "dbias"), grads, ref_g):
        if r is None:
            assert g is None, what
            continue
        np.testing.assert_allclose(_numpy(g), r, rtol=1e-10, atol=1e-10, err_msg=what)
