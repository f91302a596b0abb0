"""`conv2d_relu` (pipeline/train/models/gemm_conv.py): LEARNet's convolutions on the portable CPU
kernels as one matrix product over the batch give what ATen's convolution gives, values and
gradients, and ATen's convolution still runs where it is the faster one."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.models.gemm_conv import conv2d_relu
from pipeline.train.models.learnet import LEARNet


@contextlib.contextmanager
def onednn(enabled: bool):
    """oneDNN on (the native kernels convolve with it) or off (portable, as conftest pins it)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def reference(x, weight, bias, stride):
    return F.relu(F.conv2d(x, weight, bias, stride))


def values_and_gradients(fn, x, weight, bias, stride, upstream):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    y = fn(x, weight, bias, stride)
    inputs = [t for t in (x, weight, bias) if t is not None]
    return y, torch.autograd.grad((y * upstream).sum(), inputs)


@pytest.mark.parametrize(
    "batch, channels, size, out_channels, kernel, stride, with_bias",
    [
        (3, 3, 113, 16, 3, 2, True),  # the stem on a padded 112 input
        (4, 16, 28, 16, 1, 2, True),  # a 1x1 branch: strided picks, no padding
        (2, 32, 17, 64, 5, 2, True),  # 5x5 windows overlap over two strides
        (2, 4, 9, 6, 3, 1, False),  # stride 1, every pixel in 9 windows; no bias
        (1, 256, 9, 8, (3, 2), (2, 1), True),  # a rectangular kernel and stride
    ],
)
def test_values_and_gradients_equal_atens_convolution(batch, channels, size, out_channels, kernel, stride, with_bias):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = (stride, stride) if isinstance(stride, int) else stride
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size + 1, generator=generator)
    weight = torch.randn(out_channels, channels, kh, kw, generator=generator) / (channels * kh * kw) ** 0.5
    bias = torch.randn(out_channels, generator=generator) if with_bias else None
    out_shape = (batch, out_channels, (size - kh) // stride[0] + 1, (size + 1 - kw) // stride[1] + 1)
    upstream = torch.randn(out_shape, generator=generator)  # a gradient of both signs into the ReLU
    with onednn(False):
        y, grads = values_and_gradients(conv2d_relu, x, weight, bias, stride, upstream)
    y_ref, grads_ref = values_and_gradients(reference, x, weight, bias, stride, upstream)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_an_input_that_is_a_view_in_another_layout_is_read_by_its_strides():
    # a 1x1 convolution reads the previous layer's output as it is: (C, N, H, W) in memory, seen as NCHW
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 28, 28, generator=generator).permute(1, 0, 2, 3)[:, :, 1:, 1:]
    weight, bias = torch.randn(8, 16, 1, 1, generator=generator), torch.randn(8, generator=generator)
    upstream = torch.randn(3, 8, 14, 14, generator=generator)
    with onednn(False):
        y, grads = values_and_gradients(conv2d_relu, x, weight, bias, (2, 2), upstream)
    y_ref, grads_ref = values_and_gradients(reference, x.contiguous(), weight, bias, (2, 2), upstream)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_learnet_trains_the_same_with_either_convolution():
    def steps(portable: bool) -> list[float]:
        torch.manual_seed(0)
        model = LEARNet(num_classes=5)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        x, y = torch.rand(8, 3, 112, 112), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
        losses = []
        with onednn(not portable):
            for _ in range(3):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return losses

    assert steps(portable=True) == pytest.approx(steps(portable=False), rel=1e-4)


def test_atens_convolution_runs_where_it_is_the_faster_one(monkeypatch):
    import pipeline.train.models.gemm_conv as gemm_conv

    def refuse(*args):
        raise AssertionError("the batch-GEMM path ran")

    monkeypatch.setattr(gemm_conv._BatchGemmConvRelu, "apply", refuse)
    x, weight, bias = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    with onednn(True):  # the native kernels: oneDNN convolves
        assert torch.equal(conv2d_relu(x, weight, bias, (2, 2)), reference(x, weight, bias, (2, 2)))
    with onednn(False), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv2d_relu(x, weight, bias, (2, 2)).dtype == torch.bfloat16
    with onednn(False), pytest.raises(AssertionError, match="batch-GEMM"):
        conv2d_relu(x, weight, bias, (2, 2))
