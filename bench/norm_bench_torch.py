"""PyTorch CPU on the shapes of bench/norm_bench.lua: group_norm, softmax, layer_norm,
silu and gelu, forward and the explicit backward ATen kernels (native_group_norm_backward,
_softmax_backward_data, native_layer_norm_backward, silu_backward, gelu_backward), like
diffrl's dr_*_backward; gelu also into preallocated outputs ("gelu (out=)": the kernel
without the page faults of a fresh 42 MB output; bench/rounds_summary.py sets it against
diffrl's gelu). Median and fastest wall ms per call, and GB/s of the same nominal
traffic (forward 2, backward 3 float32 tensors) from the fastest.

    python3 bench/norm_bench_torch.py [threads] [repeats]
"""
import statistics
import sys

import torch
import torch.nn.functional as F

from torch_timing import wall_times

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20
torch.set_num_threads(threads)
torch.manual_seed(0)
aten = torch.ops.aten


def timed(f):
    walls = wall_times(f, repeats)
    return statistics.median(walls), min(walls)


def group_norm():
    shape = (2, 320, 64, 64)
    x, g, w, b = torch.randn(shape), torch.randn(shape), torch.randn(320), torch.randn(320)
    _, mean, rstd = aten.native_group_norm(x, w, b, 2, 320, 64 * 64, 32, 1e-5)
    fwd = timed(lambda: F.group_norm(x, 32, w, b, 1e-5))
    bwd = timed(lambda: aten.native_group_norm_backward(g, x, mean, rstd, w, 2, 320, 64 * 64, 32,
                                                         [True, True, True]))
    return "group_norm G=32 (+w, b)", shape, fwd, bwd


def softmax():
    shape = (16, 4096, 77)
    x, g = torch.randn(shape), torch.randn(shape)
    y = torch.softmax(x, -1)
    fwd = timed(lambda: torch.softmax(x, -1))
    bwd = timed(lambda: torch._softmax_backward_data(g, y, -1, torch.float32))
    return "softmax dim=-1", shape, fwd, bwd


def layer_norm():
    shape = (2, 4096, 320)
    x, g, w, b = torch.randn(shape), torch.randn(shape), torch.randn(320), torch.randn(320)
    _, mean, rstd = aten.native_layer_norm(x, [320], w, b, 1e-5)
    fwd = timed(lambda: F.layer_norm(x, [320], w, b, 1e-5))
    bwd = timed(lambda: aten.native_layer_norm_backward(g, x, [320], mean, rstd, w, b,
                                                         [True, True, True]))
    return "layer_norm [320] (+w, b)", shape, fwd, bwd


def silu():
    shape = (2, 320, 64, 64)
    x, g = torch.randn(shape), torch.randn(shape)
    return "silu", shape, timed(lambda: F.silu(x)), timed(lambda: aten.silu_backward(g, x))


def gelu():
    shape = (2, 4096, 1280)
    x, g = torch.randn(shape), torch.randn(shape)
    return "gelu", shape, timed(lambda: F.gelu(x)), timed(lambda: aten.gelu_backward(g, x))


def gelu_out():
    """gelu into preallocated outputs: the kernel alone. A 42 MB result is above
    glibc's largest mmap threshold (32 MB), so F.gelu's fresh output is mapped and
    page-faulted on most calls; diffrl's outputs come from its block cache."""
    shape = (2, 4096, 1280)
    x, g = torch.randn(shape), torch.randn(shape)
    y, gi = torch.empty(shape), torch.empty(shape)
    fwd = timed(lambda: torch._C._nn.gelu(x, out=y))
    bwd = timed(lambda: aten.gelu_backward.grad_input(g, x, grad_input=gi))
    return "gelu (out=)", shape, fwd, bwd


print(f"torch {torch.__version__} norm/softmax/unary, {threads} threads, {repeats} repeats, "
      f"float32")
print(f"{'op':26} {'shape':14} {'fwd ms':>9} {'fwd min':>9} {'fwd GB/s':>9} {'bwd ms':>9} "
      f"{'bwd min':>9} {'bwd GB/s':>9}")
with torch.no_grad():
    for case in (group_norm, softmax, layer_norm, silu, gelu, gelu_out):
        name, shape, fwd, bwd = case()
        n = 1
        for s in shape:
            n *= s
        print(f"{name:26} {'x'.join(map(str, shape)):14} {fwd[0] * 1e3:9.3f} {fwd[1] * 1e3:9.3f} "
              f"{2 * 4 * n / fwd[1] / 1e9:9.2f} {bwd[0] * 1e3:9.3f} {bwd[1] * 1e3:9.3f} "
              f"{3 * 4 * n / bwd[1] / 1e9:9.2f}")
