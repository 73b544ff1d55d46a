"""PyTorch CPU on the shapes of bench/conv_bench.lua: conv2d forward, and forward +
backward (input, weight and bias gradients through torch.ops.aten.convolution_backward,
like diffrl's explicit dr.conv2d_backward). Wall ms per call, best / median of the
repeats; GFLOP/s from the best.

    python3 bench/conv_bench_torch.py [threads] [repeats]
"""
import statistics
import sys

import torch
import torch.nn.functional as F

from torch_timing import wall_times

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.set_num_threads(threads)
torch.manual_seed(0)

SHAPES = [  # name, input, weight, padding, stride (as in conv_bench.lua)
    ("resnet 3x3 (level 1)", (2, 320, 32, 32), (320, 320, 3, 3), 1, 1),
    ("resnet 3x3 (mid)", (2, 1280, 8, 8), (1280, 1280, 3, 3), 1, 1),
    ("conv_in 3x3", (2, 4, 64, 64), (320, 4, 3, 3), 1, 1),
    ("downsample 3x3 s2", (2, 640, 32, 32), (640, 640, 3, 3), 1, 2),
    ("skip 1x1", (2, 960, 32, 32), (320, 960, 1, 1), 0, 1),
]


def timed(f):
    walls = wall_times(f, repeats)
    return min(walls), statistics.median(walls)


print(f"torch {torch.__version__} conv2d, {threads} threads, {repeats} repeats, float32, "
      f"mkldnn {torch.backends.mkldnn.is_available()}; ms per call: best / median; "
      f"GF/s from the best")
print(f"{'shape':22} {'input':14} {'weight':15} {'fwd ms':>17} {'GF/s':>7} "
      f"{'fwd+bwd ms':>17} {'GF/s':>7}")
with torch.no_grad():
    for name, xs, ws, pad, stride in SHAPES:
        x, w, b = torch.randn(xs), torch.randn(ws), torch.randn(ws[0])
        y = F.conv2d(x, w, b, stride=stride, padding=pad)
        g = torch.randn_like(y)
        flops = 2 * xs[0] * ws[0] * y.shape[2] * y.shape[3] * ws[1] * ws[2] * ws[3]

        def both():
            F.conv2d(x, w, b, stride=stride, padding=pad)
            torch.ops.aten.convolution_backward(
                g, x, w, [ws[0]], [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1,
                [True, True, True])

        fb, fm = timed(lambda: F.conv2d(x, w, b, stride=stride, padding=pad))
        bb, bm = timed(both)
        print(f"{name:22} {'x'.join(map(str, xs)):14} {'x'.join(map(str, ws)):15} "
              f"{fb * 1e3:8.2f} /{fm * 1e3:7.2f} {flops / fb / 1e9:7.1f} "
              f"{bb * 1e3:8.2f} /{bm * 1e3:7.2f} {3 * flops / bb / 1e9:7.1f}")
