"""PyTorch CPU on the shapes of bench/attention_bench.lua:
F.scaled_dot_product_attention forward (under no_grad), and forward + backward
(out.backward(g) into q, k and v). Median wall ms per call, GFLOP/s (forward
4 B H Lq Lk E, forward + backward 3.5 times that).

    python3 bench/attention_bench_torch.py [threads] [repeats]
"""
import sys

import torch
import torch.nn.functional as F

from torch_timing import median_time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)

SHAPES = [  # name, q [B, H, Lq, E], k/v [B, H, Lk, E] (as in attention_bench.lua)
    ("self-attn 32x32 latents", (2, 8, 1024, 64), (2, 8, 1024, 64)),
    ("cross-attn 64x64 x text", (2, 8, 4096, 40), (2, 8, 77, 40)),
    ("self-attn 64x64 latents", (2, 8, 4096, 40), (2, 8, 4096, 40)),
]


def timed(f):
    return median_time(f, repeats)


print(f"torch {torch.__version__} scaled_dot_product_attention, {threads} threads, "
      f"{repeats} repeats, float32")
print(f"{'shape':24} {'q':16} {'k, v':16} {'fwd ms':>9} {'fwd GF/s':>8} {'f+b ms':>9} "
      f"{'f+b GF/s':>8}")
for name, qs, ks in SHAPES:
    q, k, v = torch.randn(qs), torch.randn(ks), torch.randn(ks)
    g = torch.randn(qs)
    flops = 4 * qs[0] * qs[1] * qs[2] * ks[2] * qs[3]

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def both():
        for t in (qg, kg, vg):
            t.grad = None
        F.scaled_dot_product_attention(qg, kg, vg).backward(g)

    tf, tb = timed(fwd), timed(both)
    print(f"{name:24} {'x'.join(map(str, qs)):16} {'x'.join(map(str, ks)):16} "
          f"{tf * 1e3:9.2f} {flops / tf / 1e9:8.1f} {tb * 1e3:9.2f} {3.5 * flops / tb / 1e9:8.1f}")
