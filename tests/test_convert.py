"""einlocal.convert: each converter checked by running both sides on the
same input — jax.lax.conv_general_dilated_local and torch.nn.Conv2d where
installed; Keras (not a dependency) by a numpy transcription of its
documented LocallyConnected forward, plus hand-computed index mappings."""
import itertools

import numpy as np
import pytest

import einlocal as el
from einlocal import convert as cv


def _rng(seed):
    return np.random.default_rng(seed)


def _keras_local_conv(x, kernel, bias, kernel_size, strides, output_shape, data_format):
    """Keras' LocallyConnected forward (implementation=1), transcribed from
    keras.backend.local_conv and bias_add: every output position's input
    slice is flattened as laid out, stacked row-major over positions, and
    batch-multiplied with the kernel (positions, features, filters)."""
    first = data_format == "channels_first"
    xs = []
    for pos in itertools.product(*map(range, output_shape)):
        window = tuple(slice(p * s, p * s + k) for p, s, k in zip(pos, strides, kernel_size))
        patch = x[(slice(None), slice(None)) + window] if first else x[(slice(None),) + window + (slice(None),)]
        xs.append(patch.reshape(1, x.shape[0], -1))
    out = np.matmul(np.concatenate(xs, 0), kernel)               # (positions, N, filters)
    out = out.reshape(tuple(output_shape) + (x.shape[0], kernel.shape[-1]))
    nd = len(output_shape)
    out = out.transpose((nd, nd + 1) + tuple(range(nd)) if first else (nd,) + tuple(range(nd)) + (nd + 1,))
    if bias is not None:                                          # keras.backend.bias_add
        if first:
            out = out + bias.reshape((1, bias.shape[-1]) + bias.shape[:-1])
        else:
            out = out + bias.reshape((1,) + bias.shape)
    return out


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 1)])
def test_keras_2d_runs_like_einlocal(data_format, stride):
    rng = _rng(0)
    N, Cin, H, W, Cout, kh, kw = 2, 3, 7, 6, 4, 3, 2
    Ho, Wo = (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1
    x = rng.standard_normal((N, Cin, H, W))
    weight, bias = rng.standard_normal((Cout, Cin, kh, kw, Ho, Wo)), rng.standard_normal((Cout, Ho, Wo))
    y = el.locally_connected2d(x, weight, bias, stride=stride, backend="loops:python")

    kernel, kbias = cv.to_keras_locally_connected2d(weight, bias, data_format=data_format)
    assert kernel.shape == (Ho * Wo, kh * kw * Cin, Cout) and kbias.shape == (Ho, Wo, Cout)
    xk = x if data_format == "channels_first" else x.transpose(0, 2, 3, 1)
    yk = _keras_local_conv(xk, kernel, kbias, (kh, kw), stride, (Ho, Wo), data_format)
    yk = yk if data_format == "channels_first" else yk.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(yk, y, rtol=1e-12, atol=1e-12)

    back_w, back_b = cv.from_keras_locally_connected2d(kernel, kbias, kernel_size=(kh, kw), output_size=(Ho, Wo),
                                                       data_format=data_format)
    np.testing.assert_array_equal(back_w, weight)
    np.testing.assert_array_equal(back_b, bias)


def test_keras_2d_index_mapping_by_hand():
    """Keras kernel[p, f, o] with p = h*Wo + w, f = (i*kw + j)*Cin + c
    (channels_last) or (c*kh + i)*kw + j (channels_first)."""
    Cout, Cin, kh, kw, Ho, Wo = 2, 3, 2, 2, 3, 4
    kernel = np.arange(Ho * Wo * kh * kw * Cin * Cout, dtype=float).reshape(Ho * Wo, kh * kw * Cin, Cout)
    last, _ = cv.from_keras_locally_connected2d(kernel, kernel_size=(kh, kw), output_size=(Ho, Wo))
    first, _ = cv.from_keras_locally_connected2d(kernel, kernel_size=(kh, kw), output_size=(Ho, Wo),
                                                 data_format="channels_first")
    for o, c, i, j, h, w in [(1, 2, 0, 1, 1, 0), (0, 1, 1, 0, 2, 3), (1, 0, 1, 1, 0, 2)]:
        assert last[o, c, i, j, h, w] == kernel[h * Wo + w, (i * kw + j) * Cin + c, o]
        assert first[o, c, i, j, h, w] == kernel[h * Wo + w, (c * kh + i) * kw + j, o]
    bias = np.arange(Ho * Wo * Cout, dtype=float).reshape(Ho, Wo, Cout)
    _, b_last = cv.from_keras_locally_connected2d(kernel, bias, kernel_size=(kh, kw), output_size=(Ho, Wo))
    _, b_first = cv.from_keras_locally_connected2d(kernel, bias, kernel_size=(kh, kw), output_size=(Ho, Wo),
                                                   data_format="channels_first")
    assert b_last[1, 2, 3] == bias[2, 3, 1]
    assert b_first[1, 2, 3] == bias.reshape(-1)[(1 * Ho + 2) * Wo + 3]    # bias_add reshapes, not transposes


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_keras_1d_runs_like_einlocal(data_format):
    rng = _rng(1)
    N, Cin, L, Cout, k, s = 2, 3, 11, 2, 3, 2
    Lo = (L - k) // s + 1
    x = rng.standard_normal((N, Cin, L))
    weight, bias = rng.standard_normal((Cout, Cin, k, Lo)), rng.standard_normal((Cout, Lo))
    y = el.locally_connected1d(x, weight, bias, stride=s, backend="loops:python")
    kernel, kbias = cv.to_keras_locally_connected1d(weight, bias, data_format=data_format)
    assert kernel.shape == (Lo, k * Cin, Cout) and kbias.shape == (Lo, Cout)
    xk = x if data_format == "channels_first" else x.transpose(0, 2, 1)
    yk = _keras_local_conv(xk, kernel, kbias, (k,), (s,), (Lo,), data_format)
    yk = yk if data_format == "channels_first" else yk.transpose(0, 2, 1)
    np.testing.assert_allclose(yk, y, rtol=1e-12, atol=1e-12)
    back_w, back_b = cv.from_keras_locally_connected1d(kernel, kbias, kernel_size=k, data_format=data_format)
    np.testing.assert_array_equal(back_w, weight)
    np.testing.assert_array_equal(back_b, bias)


def test_keras_errors_name_the_numbers():
    kernel = np.zeros((12, 18, 4))
    with pytest.raises(el.ShapeError, match="12.*Ho\\*Wo = 15"):
        cv.from_keras_locally_connected2d(kernel, kernel_size=3, output_size=(3, 5))
    with pytest.raises(el.ShapeError, match="18.*kh\\*kw = 3\\*4 = 12"):
        cv.from_keras_locally_connected2d(kernel, kernel_size=(3, 4), output_size=(3, 4))
    with pytest.raises(el.ShapeError, match="data_format"):
        cv.to_keras_locally_connected2d(np.zeros((1, 1, 1, 1, 1, 1)), data_format="NHWC")
    with pytest.raises(el.ShapeError, match="bias must have shape"):
        cv.to_keras_locally_connected2d(np.zeros((2, 1, 1, 1, 3, 3)), np.zeros((3, 3, 2)))


# -- jax / flax --------------------------------------------------------------

@pytest.mark.parametrize("rhs_spec", ["OIHW", "HWIO", "WHIO", "IOWH"])
def test_jax_local_runs_like_einlocal(rhs_spec):
    jax = pytest.importorskip("jax")
    rng = _rng(2)
    N, Cin, H, W, Cout, kh, kw = 2, 3, 7, 6, 4, 3, 2
    stride, dilation, padding = (2, 1), (1, 2), ((1, 0), (2, 1))
    Ho, Wo = (H + 1 - kh) // 2 + 1, W + 3 - 2 * (kw - 1)
    x, weight = rng.standard_normal((N, Cin, H, W)), rng.standard_normal((Cout, Cin, kh, kw, Ho, Wo))
    y = el.locally_connected2d(x, weight, stride=stride, padding=padding, dilation=dilation, backend="loops:python")
    rhs = cv.to_jax_local(weight, rhs_spec)
    sizes = {"O": Cout, "I": Cin * kh * kw, "H": Ho, "W": Wo}
    assert rhs.shape == tuple(sizes[c] for c in rhs_spec)
    order = [0 if c == "H" else 1 for c in rhs_spec if c in "HW"]     # jax lists spatial params in rhs order

    def pick(t):
        return tuple(t[k] for k in order)

    yj = jax.lax.conv_general_dilated_local(x, rhs, pick(stride), pick(padding), pick((kh, kw)),
                                            rhs_dilation=pick(dilation), dimension_numbers=("NCHW", rhs_spec, "NCHW"))
    np.testing.assert_allclose(np.asarray(yj), y, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(cv.from_jax_local(rhs, (kh, kw), rhs_spec), weight)


def test_jax_default_layout_is_a_reshape():
    weight = np.arange(2 * 3 * 2 * 2 * 4 * 5, dtype=float).reshape(2, 3, 2, 2, 4, 5)
    np.testing.assert_array_equal(cv.to_jax_local(weight), weight.reshape(2, 12, 4, 5))


def test_flax_conv_local_layout_runs_like_einlocal():
    """flax ConvLocal calls conv_general_dilated_local with NHWC inputs and
    an HWIO kernel (Ho, Wo, Cin*kh*kw, Cout), then adds a bias (Ho, Wo, Cout)."""
    jax = pytest.importorskip("jax")
    rng = _rng(3)
    N, Cin, H, W, Cout, kh, kw = 2, 2, 6, 5, 3, 3, 3
    Ho, Wo = H - 2, W - 2
    x = rng.standard_normal((N, Cin, H, W))
    weight, bias = rng.standard_normal((Cout, Cin, kh, kw, Ho, Wo)), rng.standard_normal((Cout, Ho, Wo))
    y = el.locally_connected2d(x, weight, bias, backend="loops:python")
    kernel, fbias = cv.to_flax_conv_local(weight, bias)
    assert kernel.shape == (Ho, Wo, Cin * kh * kw, Cout) and fbias.shape == (Ho, Wo, Cout)
    yf = jax.lax.conv_general_dilated_local(x.transpose(0, 2, 3, 1), kernel, (1, 1), "VALID", (kh, kw),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + fbias
    np.testing.assert_allclose(np.asarray(yf).transpose(0, 3, 1, 2), y, rtol=1e-10, atol=1e-10)
    back_w, back_b = cv.from_flax_conv_local(kernel, fbias, kernel_size=(kh, kw))
    np.testing.assert_array_equal(back_w, weight)
    np.testing.assert_array_equal(back_b, bias)


def test_converters_keep_the_array_library():
    torch = pytest.importorskip("torch")
    w = torch.randn(2, 3, 2, 2, 4, 4)
    kernel, _ = cv.to_keras_locally_connected2d(w)
    assert isinstance(kernel, torch.Tensor) and kernel.is_contiguous()
    back, _ = cv.from_keras_locally_connected2d(kernel, kernel_size=2, output_size=4)
    assert torch.equal(back, w)
    assert torch.equal(cv.from_jax_local(cv.to_jax_local(w, "HWIO"), (2, 2), "HWIO"), w)
    with pytest.raises(el.ShapeError, match="permutation of 'OIHW'"):
        cv.to_jax_local(w, "OIHX")


# -- torch nn.Conv2d -----------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 2), padding="same"),
                                dict(kernel_size=3, stride=2, dilation=(1, 2), padding=(2, 1), bias=False)])
def test_depthwise_from_and_to_torch_conv(kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    C, m = 3, 2
    conv = torch.nn.Conv2d(C, C * m, groups=C, dtype=torch.float64, **kw)
    x = torch.randn(2, C, 9, 8, dtype=torch.float64)
    layer = cv.depthwise_from_torch_conv(conv)
    assert (layer.channels, layer.multiplier) == (C, m) and layer.weight.dtype == torch.float64
    assert layer.weight.data_ptr() != conv.weight.data_ptr()            # copied, not shared
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    if kw.get("padding") != "same" or kw["kernel_size"] == 3:
        back = cv.to_torch_conv(layer)
        assert back.groups == C and back.out_channels == C * m
        torch.testing.assert_close(back(x), conv(x), rtol=1e-12, atol=1e-12)


def test_to_torch_conv_refuses_asymmetric_padding():
    torch = pytest.importorskip("torch")
    from einlocal.torch import DepthwiseConv2d, LocallyConnected2d
    with pytest.raises(el.ShapeError, match="symmetrically"):
        cv.to_torch_conv(DepthwiseConv2d(2, 2, 2, padding="same"))
    with pytest.raises(el.ShapeError, match="no nn.Conv2d equivalent"):
        cv.to_torch_conv(LocallyConnected2d(2, 1, 2, 4))
    with pytest.raises(el.ShapeError, match="groups == in_channels"):
        cv.depthwise_from_torch_conv(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(el.ShapeError, match="padding_mode"):
        cv.depthwise_from_torch_conv(torch.nn.Conv2d(2, 2, 3, groups=2, padding=1, padding_mode="reflect"))


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=(2, 3), stride=2, dilation=(2, 1))])
def test_locally_connected_from_torch_conv(kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, dtype=torch.float64, **kw)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    layer = cv.locally_connected_from_torch_conv(conv, (9, 8))
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        layer.weight[:, :, :, :, 0, 0] += 1.0                          # untied: one position changes
    diff = (layer(x) - conv(x)).abs().amax(dim=(0, 1))
    assert diff[0, 0] > 0.1 and diff.flatten()[1:].max() < 1e-12
