"""One small module per group of ATen ops: imported through the torch frontend and
run in kiln's interpreter, it must match torch eager. Cases with dynamic dims run at
the export size and at another size. Checks dtype promotion (explicit casts), scalar
arguments, symbolic sizes in attributes, and every handler of the conversion table."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from kiln.frontend.torch import import_model
from kiln.testing import assert_roundtrip, assert_same_outputs

# torch.export's own pytree code warns about its internals; ATen, about padding="same"
# with an even kernel (the conv_padding_modes case, on purpose)
pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")]

TOL = {"rtol": 1e-5, "atol": 1e-5}


class Fn(torch.nn.Module):
    """A module around a function of its inputs (and of `self.layer`, if given)."""

    def __init__(self, fn: Callable, layer: torch.nn.Module | None = None):
        super().__init__()
        self.fn, self.layer = fn, layer

    def forward(self, *xs):
        return self.fn(self, *xs) if self.layer is not None else self.fn(*xs)


def f32(*shape):
    return lambda: torch.randn(*shape)


def i64(*shape, high=5):
    return lambda: torch.randint(0, high, shape)


def boolean(*shape):
    return lambda: torch.rand(*shape) > 0.5


# name -> (function or module, input makers, dynamic_dims or None, sizes for another run)
CASES: dict[str, tuple] = {
    # --- elementwise, promotion and scalars
    "unary_float": (lambda x: (x.exp(), x.abs().log(), x.abs().sqrt(), (x.abs() + 1).rsqrt(),
                               x.sin(), x.cos(), x.tanh(), x.sigmoid(), x.erf(), x.neg(),
                               x.reciprocal(), x.atan(), x.log1p().nan_to_num(0.0) * 0,
                               torch.expm1(x), torch.sign(x)), [f32(3, 4)]),
    "rounding": (lambda x: (x.floor(), x.ceil(), x.round(), x.trunc(), x.abs()), [f32(3, 4)]),
    "activations": (lambda x: (F.relu(x), F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x),
                               F.leaky_relu(x, 0.2), F.elu(x, 0.5), F.softplus(x, 2.0, 5.0),
                               F.hardswish(x), F.hardsigmoid(x), F.mish(x), F.relu6(x),
                               F.hardtanh(x, -0.5, 0.5)), [f32(3, 4)]),
    "int_plus_float": (lambda x, i: (x + i, i * 2.5, i + 1, i / 2, i // 2, i % 3, x * True),
                       [f32(3, 4), i64(3, 4)]),
    "int_true_divide": (lambda a, b: (a / (b + 1), torch.div(a, b + 1, rounding_mode="floor"),
                                      torch.div(-a, b + 1, rounding_mode="trunc")),
                        [i64(3, 4, high=9), i64(3, 4)]),
    "float_divide_modes": (lambda x, y: (torch.div(x, y, rounding_mode="trunc"),
                                         torch.div(x, y, rounding_mode="floor"),
                                         torch.remainder(x, y), torch.fmod(x, y)),
                           [f32(3, 4), lambda: torch.rand(3, 4) + 0.5]),
    "pow": (lambda x: (x ** 2, x.abs() ** 0.5, 2.0 ** x, torch.pow(x, x.abs())), [f32(3, 4)]),
    "binary_broadcast": (lambda x, y: (x - y, torch.maximum(x, y), torch.minimum(x, y),
                                       torch.atan2(x, y), torch.sub(x, y, alpha=2)),
                         [f32(2, 3, 4), f32(4)]),
    "compare": (lambda x, i: (x > 0, x <= i, i == 2, i != 2.5, x >= 0.5, x < i),
                [f32(3, 4), i64(3, 4)]),
    "logical": (lambda a, b, i: (a & b, a | b, a ^ b, ~a, torch.logical_and(a, i),
                                 torch.logical_not(i), torch.logical_or(i, i),
                                 torch.logical_xor(a, b)),
                [boolean(3, 4), boolean(3, 4), i64(3, 4)]),
    "where_masked_fill": (lambda x, m: (torch.where(m, x, 0.5), x.masked_fill(m, -1e4),
                                        torch.where(x > 0, x, torch.zeros_like(x)),
                                        x.masked_fill(~m, float("-inf"))),
                          [f32(3, 4), boolean(3, 4)]),
    "clamp": (lambda x, lo: (x.clamp(-0.5, 0.5), x.clamp(min=0), x.clamp(max=0.1),
                             torch.clamp(x, lo, lo + 1), x.clamp_min(lo)),
              [f32(3, 4), f32(3, 4)]),
    "isnan_isinf": (lambda x: (torch.isnan(x), torch.isinf(x / 0), torch.isfinite(x)),
                    [f32(3, 4)]),
    "casts": (lambda x, i: (x.to(torch.float16), x.long(), i.bool(), i.float() * x,
                            x.to(torch.bfloat16), x.double(), i.to(torch.int32)),
              [f32(3, 4), i64(3, 4)]),
    "casts_and_identities": (lambda x, i: (x.type_as(i), i.to("cpu", torch.float32), x.to(i),
                                           x.to(x), x.contiguous(), F.dropout(x, 0.5, False),
                                           F.dropout2d(x[None, None], 0.5, False),
                                           F.alpha_dropout(x, 0.5, False)),
                             [f32(3, 4), i64(3, 4)]),
    "bool_scalar_ops": (lambda m, i: (m & True, i | 2, i ^ 3, m ^ (i > 2)),
                        [boolean(3, 4), i64(3, 4)]),
    # --- reductions
    "reductions": (lambda x: (x.sum(), x.sum(1), x.sum((0, 2), keepdim=True), x.mean(-1),
                              x.mean(), x.amax(1), x.amin((1, 2)), x.max(), x.prod(2),
                              x.var(1), x.std(2, keepdim=True), x.var(1, correction=0)),
                   [f32(2, 3, 4)]),
    "max_min_dim": (lambda x: (x.max(1), x.min(-1, keepdim=True), x.argmax(), x.argmin(1),
                               x.argmax(2, keepdim=True)), [f32(2, 3, 4)]),
    "bool_int_reductions": (lambda m, i: (m.sum(1), m.any(), m.all(0), (i > 2).any(1),
                                          i.sum(), torch.cumsum(m, 1), torch.cumsum(i, 0),
                                          i.to(torch.int32).sum(0)),
                            [boolean(3, 4), i64(3, 4)]),
    "var_std_overloads": (lambda x: (torch.var(x, 1, unbiased=False), x.var(), x.std(),
                                     x.std(1, correction=0, keepdim=True),
                                     torch.std(x, (0, 2), unbiased=True)), [f32(2, 3, 4)]),
    "softmax": (lambda x: (x.softmax(-1), x.log_softmax(1), torch.softmax(x, 0, torch.float64)),
                [f32(2, 3, 4)]),
    # --- normalizations
    "layer_norm": (lambda s, x: (s.layer(x), F.layer_norm(x, (3, 4)),
                                 F.layer_norm(x, (4,), bias=torch.ones(4))),
                   [f32(2, 3, 4)], None, None, torch.nn.LayerNorm(4, eps=1e-3)),
    "rms_norm": (lambda s, x: (s.layer(x), F.rms_norm(x, (4,)),
                               x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)),
                 [f32(2, 3, 4)], None, None, torch.nn.RMSNorm(4)),
    "group_norm": (lambda s, x: s.layer(x), [f32(2, 6, 5)], None, None,
                   torch.nn.GroupNorm(3, 6)),
    "batch_norm_1d": (lambda s, x: s.layer(x), [f32(2, 6, 5)], {0: {0: "n"}}, [(3, 6, 5)],
                      torch.nn.BatchNorm1d(6).eval()),
    # --- contractions and windows
    "matmul": (lambda a, b, c: (a @ b, torch.bmm(a, c), a[0] @ b, torch.mm(a[0], b),
                                torch.addmm(b[0], a[0], b, beta=0.5, alpha=2.0),
                                torch.baddbmm(a, a, c), torch.einsum("bij,bjk->bik", a, c),
                                torch.matmul(a, b[:, 0])),
               [f32(2, 4, 4), f32(4, 4), f32(2, 4, 4)]),
    "conv": (lambda s, x: (s.layer(x), F.conv1d(x[:, :, 0], torch.ones(2, 4, 3), stride=2),
                           F.conv2d(x, torch.ones(4, 1, 3, 3), padding=2, dilation=2,
                                    groups=4)),
             [f32(2, 4, 9, 9)], None, None, torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1))),
    "pooling": (lambda x: (F.max_pool2d(x, 3, 2, 1, ceil_mode=True), F.max_pool1d(x[:, 0], 2),
                           F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                           F.avg_pool1d(x[:, 0], 3, 2), F.adaptive_avg_pool2d(x, (3, 2)),
                           F.adaptive_avg_pool1d(x[:, 0], 4), F.max_pool2d(x, 2, dilation=2)),
                [f32(2, 3, 9, 10)]),
    "attention": (lambda q, k, v, m: (F.scaled_dot_product_attention(q, k, v),
                                      F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                      F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                                      F.scaled_dot_product_attention(q, k, v, m.float(),
                                                                     scale=0.3)),
                  [f32(2, 4, 5, 8), f32(2, 4, 5, 8), f32(2, 4, 5, 8),
                   lambda: torch.tril(torch.ones(5, 5)) > 0]),
    "attention_gqa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                      [f32(2, 4, 5, 8), f32(2, 2, 5, 8), f32(2, 2, 5, 8)]),
    "conv_padding_modes": (lambda s, x: (F.conv2d(x, s.layer.weight, padding="same"),
                                         F.conv2d(x, s.layer.weight, s.layer.bias,
                                                  padding="valid"),
                                         F.conv1d(x[:, :, 0], s.layer.weight[..., 0],
                                                  padding="same", dilation=2),
                                         F.conv1d(x[0, :, 0], s.layer.weight[..., 0]),
                                         F.conv3d(x.unsqueeze(2), s.layer.weight.unsqueeze(2),
                                                  padding=(0, 1, 1))),
                           [f32(2, 4, 7, 6)], None, None, torch.nn.Conv2d(4, 6, (3, 2))),
    "pool_3d": (lambda x: F.max_pool3d(x.unsqueeze(2), (1, 2, 2)), [f32(2, 3, 6, 6)]),
    "embedding": (lambda s, i: s.layer(i), [i64(2, 5, high=10)], None, None,
                  torch.nn.Embedding(10, 6, padding_idx=0)),
    # --- layout
    "views": (lambda x: (x.view(6, 4), x.reshape(-1), x.permute(2, 0, 1), x.transpose(0, 2),
                         x[0].t(), x.unsqueeze(1), x[:, :1].squeeze(1), x.flatten(1),
                         x[:, :1].expand(2, 5, 4), x.contiguous(), x.unflatten(2, (2, 2))),
              [f32(2, 3, 4)]),
    "slices": (lambda x: (x[:, 1:], x[..., ::2], x[:, -2:], x[:, 0], x[:, -1], x[1],
                          x.narrow(2, 1, 2), x[:, 1:-1, 1::2]), [f32(2, 3, 4)]),
    "cat_stack_split": (lambda x, i: (torch.cat([x, i], 1), torch.stack([x, x], 0),
                                      *x.split(2, dim=2), *x.chunk(3, 1), *x.unbind(0),
                                      *torch.split(x, [1, 3], 2)),
                        [f32(2, 3, 4), i64(2, 3, 4)]),
    "pad_flip_repeat": (lambda x: (F.pad(x, (1, 2)), F.pad(x, (0, 1, 2, 0), value=-1.0),
                                   x.flip(0, 2), x.repeat(2, 1, 3), x.repeat(2, 1, 1, 1),
                                   x.tile((2,)), torch.roll(x, 1, 1) * 0),
                        [f32(2, 3, 4)]),
    "gather_index": (lambda x, i, j: (torch.gather(x, 2, i), x.index_select(1, j[0]),
                                      x[j], x[:, j[0]], x[j, :, j], x[j, j],
                                      x[:, j[0], 0]),
                     [f32(3, 3, 4), i64(3, 3, 2, high=4), i64(2, 3, high=3)]),
    "stack_unbind_narrow": (lambda x: (torch.stack([x, x * 2], -1), *x.unbind(-1),
                                       x.narrow(1, -2, 2), x.narrow(2, -3, 2),
                                       x.narrow(0, 1, 1), x.tile((2, 1)),
                                       x.view_as(x.flatten(1)).reshape_as(x),
                                       x[:, :1].expand_as(x)), [f32(2, 3, 4)]),
    "diff": (lambda x: (torch.diff(x), torch.diff(x, n=2, dim=1),
                        torch.diff(x, prepend=x[:, :, :1], append=x[:, :, -1:] * 2),
                        torch.diff(x > 0, dim=1)),
             [f32(2, 5, 4)], {0: {1: "seq"}}, [(2, 7, 4)]),
    "triangles": (lambda x: (x.triu(), x.tril(-1), torch.triu(x, 1)), [f32(2, 4, 5)]),
    "creation": (lambda x: (torch.arange(5), torch.arange(1, 9, 3), torch.full((2, 3), 7.0),
                            torch.zeros(2, dtype=torch.int32), torch.ones_like(x),
                            torch.full_like(x, 2, dtype=torch.int64),
                            torch.arange(4, dtype=torch.float32), torch.tensor([1.0, 2.0]),
                            torch.empty_like(x).fill_(3.0)),
                 [f32(2, 3)]),
    # --- dynamic dims
    "dynamic_views": (lambda x: (x.view(-1, 4), x.reshape(x.shape[0], -1), x[:, 1:],
                                 x.permute(1, 0, 2).flatten(0, 1), x.split(3, 2)[0], x[:, 1:-1],
                                 x.chunk(2, 1)[1], x.expand(2, -1, -1, -1), torch.cat([x, x], 1)),
                      [f32(2, 6, 4)], {0: {0: "batch", 1: "seq"}}, [(5, 4, 4)]),
    "dynamic_creation": (lambda x: (torch.arange(x.shape[1]), x + x.shape[1],
                                    torch.ones(x.shape[0], 2), torch.zeros_like(x),
                                    torch.full((x.shape[1],), 2.0), x.new_ones(x.shape[0]),
                                    torch.arange(x.shape[0], x.shape[0] + 3),
                                    x.new_full((x.shape[1], 2), 5.0), x.new_zeros(3),
                                    torch.ones_like(x, dtype=torch.int32),
                                    torch.zeros(2, x.shape[0], dtype=torch.bool)),
                         [f32(2, 3, 4)], {0: {0: "batch", 1: "seq"}}, [(5, 2, 4)]),
    "dynamic_mask": (lambda x: x.masked_fill(torch.triu(torch.ones(x.shape[1], x.shape[1],
                                                                  dtype=torch.bool), 1),
                                             float("-inf")).softmax(-1),
                     [f32(2, 6, 6)], {0: {0: "batch", 1: "seq", 2: "seq"}}, [(3, 4, 4)]),
    "dynamic_split": (lambda x: x.split([2, x.shape[1] - 2], 1), [f32(2, 6)], {0: {1: "seq"}},
                      [(2, 9)]),
}


def _case(name):
    fn, makers, dims, sizes, *layer = CASES[name] + (None,) * (5 - len(CASES[name]))
    return fn, makers, dims, sizes, layer[0] if layer else None


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_eager(name):
    fn, makers, dims, sizes, layer = _case(name)
    torch.manual_seed(0)
    model = (Fn(fn, layer) if layer is not None else Fn(fn)).eval()
    if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    inputs = tuple(make() for make in makers)
    graph = import_model(model, inputs, dynamic_dims=dims)
    assert_same_outputs(model, graph, inputs, **TOL)
    for shape in sizes or ():   # the same graph at another size (one input)
        other = (torch.randn(*shape),)
        assert_same_outputs(model, graph, other, **TOL)
    assert_roundtrip(graph)
