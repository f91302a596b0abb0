"""Convolution + ReLU as one matrix product per layer over the whole batch, for CPU training on the
portable kernels (`cpu_kernels: portable`, pipeline/train/kernels.py).

With oneDNN off, torch convolves on the CPU with ATen's own `slow_conv2d`: an im2col and a matrix
product per image of the batch, products too small for MKL's SSE2 code to run near its peak
(LEARNet's 5x5 layer multiplies 64x800 by 800x49 once per image), and its ReLU backward
(`threshold_backward`) branches on every value in ATen's baseline build, mispredicted about half of
the time on a gradient's signs (14 ms for the stem's 1.6 M values, a multiply takes 0.6 ms).
`conv2d_relu` lays the patches of the whole batch out as one matrix (one strided copy: rows
channel x kernel position, columns image x output position), multiplies it once, and keeps the
ReLU's mask as floats so that its backward is a multiply. The results equal slow_conv2d's within
float32 rounding (the products sum in another order, so the bytes differ from it, and are the same
on every processor: MKL's reproducible code path and ATen's baseline build compute them), and a
LEARNet training epoch takes 1.3-1.4x less time (`python -m benchmarks.bench_kernels`).

Only where slow_conv2d would run: CPU tensors, oneDNN off, no autocast. On a GPU, with the native
kernels (oneDNN's convolutions are faster than this there) or under bf16 autocast, it is
`F.conv2d` + ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int]
) -> torch.Tensor:
    """ReLU(conv2d(x, weight, bias, stride)) of an input already padded (no padding, no dilation)."""
    if x.device.type != "cpu" or torch.backends.mkldnn.enabled or torch.is_autocast_enabled("cpu"):
        return F.relu(F.conv2d(x, weight, bias, stride))
    return _BatchGemmConvRelu.apply(x, weight, bias, tuple(stride))


class _BatchGemmConvRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # type: ignore[override]
        n, channels, height, width = x.shape
        out_channels, _, kh, kw = weight.shape
        sh, sw = stride
        ho, wo = (height - kh) // sh + 1, (width - kw) // sw + 1
        sn, sc, sy, sx = x.stride()
        patches = x.as_strided(
            (channels, kh, kw, n, ho, wo), (sc, sy, sx, sn, sy * sh, sx * sw), x.storage_offset()
        ).reshape(channels * kh * kw, n * ho * wo)
        flat_weight = weight.reshape(out_channels, -1)
        out = torch.mm(flat_weight, patches) if bias is None else torch.addmm(bias[:, None], flat_weight, patches)
        out.clamp_min_(0)
        if any(ctx.needs_input_grad[:3]):  # not when predicting (no_grad)
            ctx.save_for_backward(patches, weight, (out > 0).to(out.dtype))
            ctx.geometry = (x.shape, stride, ho, wo)
        # (out_channels, n, ho, wo) seen as NCHW: the next layer's copies read it in any order
        return out.view(out_channels, n, ho, wo).permute(1, 0, 2, 3)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        patches, weight, mask = ctx.saved_tensors
        (n, channels, height, width), (sh, sw), ho, wo = ctx.geometry
        out_channels, _, kh, kw = weight.shape
        grad = grad_out.permute(1, 0, 2, 3).reshape(out_channels, n * ho * wo) * mask
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_patches = torch.mm(weight.reshape(out_channels, -1).t(), grad).view(channels, kh, kw, n, ho, wo)
            grad_x = grad.new_zeros((n, channels, height, width))
            by_channel = grad_x.permute(1, 0, 2, 3)
            for i in range(kh):  # a fixed order of the overlapping patches' sums: the same bytes every run
                rows = slice(i, i + sh * (ho - 1) + 1, sh)
                for j in range(kw):
                    by_channel[:, :, rows, j : j + sw * (wo - 1) + 1 : sw] += grad_patches[:, i, j]
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad, patches.t()).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(1)
        return grad_x, grad_weight, grad_bias, None
