"""Small building blocks shared by every backbone, encoder and decoder of the family."""
import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "in_float32",
    "to_float32",
    "map_tensors",
    "get_activation",
    "MLP",
    "RMSNorm",
    "SwiGLUFFN",
    "ConvNormLayer",
    "inverse_sigmoid",
    "bias_init_with_prob",
]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "hardsigmoid": nn.Hardsigmoid,
    # A learned slope (one parameter, 0.25 at first): DN-DETR's and DAB-DETR's default activation.
    "prelu": nn.PReLU,
}


def get_activation(act):
    """Return an activation module from its name; ``None`` gives ``nn.Identity``.

    A module passed in is returned unchanged, so constructors accept either form.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    try:
        return _ACTIVATIONS[act.lower()]()
    except KeyError:
        raise ValueError(f"Unknown activation {act!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last).

    Parameter names (``layers.{i}.weight``) follow the official implementations.
    """

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers, act="relu"):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = get_activation(act)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension (Zhang & Sennrich, 2019): ``x / rms(x) * scale``.

    The statistics are taken in float32 for float32 and lower-precision inputs (as DEIMv2 does, so
    that half precision cannot overflow the sum of squares) and in float64 for float64 inputs (the
    official module would round those to float32); the result is cast back before the scale.
    No centring and no bias. Parameter name ``scale`` (init 1) as in the official DEIMv2 decoder.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class SwiGLUFFN(nn.Module):
    """Gated feed-forward block (Shazeer, 2020): ``w3(silu(a) * b)`` with ``[a, b] = w12(x)``.

    ``w12`` maps ``in_features`` to ``2 * hidden_features`` (the two halves, in that order);
    Xavier-uniform weights and zero biases. Parameter names as in DEIMv2 (and DINOv2).
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)
        for linear in (self.w12, self.w3):
            nn.init.xavier_uniform_(linear.weight)
            if bias:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def fuse_conv_and_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d):
    """``(kernel, bias)`` of one conv equal to ``norm(conv(x))`` with the norm's running statistics."""
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


class ConvNormLayer(nn.Module):
    """Conv2d (no bias by default) -> BatchNorm2d -> activation; 'same' padding for odd kernels.

    ``convert_to_deploy`` folds the norm into a biased conv named ``conv_bn_fused`` (the official
    D-FINE ``ConvNormLayer_fuse``) and deletes ``conv`` and ``norm``.
    """

    def __init__(self, ch_in, ch_out, kernel_size, stride, padding=None, bias=False, act=None, groups=1):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=padding, bias=bias, groups=groups)
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x):
        if hasattr(self, "conv_bn_fused"):
            return self.act(self.conv_bn_fused(x))
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def convert_to_deploy(self):
        if hasattr(self, "conv_bn_fused"):
            return
        conv = self.conv
        kernel, bias = fuse_conv_and_norm(conv, self.norm)
        self.conv_bn_fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                       padding=conv.padding, groups=conv.groups, bias=True).to(kernel)
        self.conv_bn_fused.weight.copy_(kernel)
        self.conv_bn_fused.bias.copy_(bias)
        del self.conv, self.norm


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logit of ``x`` clamped to [0, 1]; both ``x`` and ``1 - x`` are clipped at ``eps``."""
    x = x.clip(min=0.0, max=1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias that makes a sigmoid output ``prior_prob`` at initialisation."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def map_tensors(value, fn):
    """``value`` with ``fn`` applied to every tensor in it, through nested dataclasses (such as the
    decoder's outputs), dicts, lists and tuples, as new containers."""
    if torch.is_tensor(value):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: map_tensors(getattr(value, f.name), fn)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(item, fn) for item in value)
    return value


def to_float32(value):
    """``value`` with every reduced-precision floating-point tensor in it (see :func:`map_tensors`)
    cast to float32. Float32 and float64 tensors are kept, so that a float64 model (the parity tests
    run in float64) stays in float64."""
    return map_tensors(value, lambda t: t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t)


def in_float32(fn):
    """Run ``fn`` in float32 under AMP: outside autocast, its floating-point tensor arguments cast
    to float32. For the numerically fragile steps (box decoding, the distribution integral, IoU and
    GIoU, the losses), where float16 overflows or loses the small differences that matter. Without
    autocast and with float32 or float64 inputs it changes nothing."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*to_float32(args), **to_float32(kwargs))

    return wrapper
