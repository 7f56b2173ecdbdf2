"""A job's checks: at the reduced size against the loops, and a timed pass's first result against the full-size reference."""
from __future__ import annotations

__all__ = ["CheckFailed", "reduced_check", "check_peer", "full_size_check"]


class CheckFailed(AssertionError):
    """A result disagrees with its reference."""


def _verdict(errors: dict) -> dict:
    bad = {k: v for k, v in errors.items() if not v <= 1.0}
    if bad:
        raise CheckFailed(", ".join(f"{k} {v:.3g} x tolerance" for k, v in bad.items()))
    return errors


def reduced_check(job, op, peer=None) -> tuple[str, str] | None:
    """Check `job` at its reduced size (``check_shapes``; every grad mode, out= poisoned)
    against the loops (its ``check_reference`` file where the run made one): None
    where it passes, else (status, reason) for every timed step of the job.
    `peer`: (forward, backward or None, params), for a peer's job."""
    from .references import load_check_reference
    shapes = dict(job.check_shapes)
    modes = tuple(job.grad_modes) if job.grad_modes else None
    try:
        ref = None
        if job.check_reference:
            ref, vjp_error = load_check_reference(job.check_reference)
            if not vjp_error <= 1.0:
                raise AssertionError(f"the reference's VJP is {vjp_error:.3g} x tolerance off its finite difference")
        if peer is not None:
            check_peer(job, op, peer, shapes, ref)
            return None
        from ..check import check
        row = check(op, backends=[job.backend], dtype=job.dtype, seed=job.seed, grad_modes=modes, reference=ref,
                    library=job.arrays, **shapes, **job.params).rows[0]
        if row.status == "skipped":
            return "skipped", row.reason
        if row.status == "fail":
            raise AssertionError(row.reason or ", ".join(f"{k} {v:.3g} x tol" for k, v in row.errors.items() if v > 1))
    except Exception as e:  # noqa: BLE001 — any failure means: never timed
        return "failed", f"check at reduced size failed: {type(e).__name__}: {e}"[:400]
    return None


def check_peer(job, op, peer, shapes: dict, ref: dict | None = None) -> dict:
    """The peer's forward and backward at `shapes` against the loops (`ref`: their
    outputs on these inputs, computed once per run); errors / tolerance by name."""
    import numpy as np

    from ..backends.namespaces import namespace
    from ..check import _compare, random_inputs, reference_outputs
    from .calls import bind
    from .peerfile import peer_params
    fwd, bwd, params = peer
    xp = namespace(job.peer["library"])
    arrays = random_inputs(shapes, "float64", job.seed)
    call = bind(op, arrays, job.params)
    dy = random_inputs({"dy": call.out_shape}, "float64", job.seed + 2)["dy"]
    ref = ref if ref is not None else reference_outputs(call, arrays, dy)
    conv = {n: (None if a is None else xp.from_numpy(a.astype(job.dtype), "cpu")) for n, a in arrays.items()}
    kw = peer_params(job.peer, params, arrays["x"].shape)
    y = fwd(conv["x"], conv["weight"], conv.get("bias"), **kw)
    errors = {"y": _compare(xp.to_numpy(y), *ref["y"], job.dtype)}
    if bwd is not None:
        grads = bwd(xp.from_numpy(dy.astype(job.dtype), "cpu"), conv["x"], conv["weight"], conv.get("bias"), **kw)
        for n, g in zip(("x", "weight", "bias"), grads):
            if conv.get(n) is not None:
                errors["d" + n] = _compare(np.asarray(xp.to_numpy(g)), *ref["d" + n], job.dtype)
    return _verdict(errors)


def full_size_check(step, ref: dict, to_numpy, args, dtype: str):
    """check(result) for the first call of `step`'s pass: its result (forward: y;
    backward: the gradients in the order of `args`; forward+backward: both) against
    the full-size reference; returns errors / tolerance by name, raises `CheckFailed`."""
    from ..check import _compare

    def check(result) -> dict:
        if step.pass_ == "forward":
            ys, grads = result, None
        elif step.pass_ == "backward":
            ys, grads = None, result
        else:
            ys, grads = result
        errors = {}
        if ys is not None:
            errors["y"] = _compare(to_numpy(ys), *ref["y"], dtype)
        for name, g in zip(args, grads or ()):
            if g is not None and "d" + name in ref:
                errors["d" + name] = _compare(to_numpy(g), *ref["d" + name], dtype)
        return _verdict(errors)
    return check
