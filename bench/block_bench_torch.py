"""PyTorch CPU twin of bench/block_bench.lua (which runs this script and prints
both side by side). Prints one JSON object: case name -> median seconds.

    python3 bench/block_bench_torch.py THREADS REPEATS
"""
import json
import sys

import torch
import torch.nn.functional as F

from torch_timing import median_time

threads, repeats = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)


def timed(f):
    return median_time(f, repeats)


out = {}
for name, (m, k, n, batch) in {
    "matmul 4096x320 @ 320x1280": (4096, 320, 1280, 0),
    "matmul 77x1024 @ 1024x1024": (77, 1024, 1024, 0),
    "bmm 16 x (1024x64 @ 64x1024)": (1024, 64, 1024, 16),
}.items():
    a = torch.randn(batch, m, k) if batch else torch.randn(m, k)
    b = torch.randn(batch, k, n) if batch else torch.randn(k, n)
    with torch.no_grad():
        out[name] = timed(lambda: a @ b)

C, H = 64, 32
x = torch.randn(2, C, H, H)
params = dict(w=torch.randn(C, C, 3, 3) * 0.05, b=torch.zeros(C), gw=torch.ones(C),
              gb=torch.zeros(C), wq=torch.randn(C, C) * 0.1, wk=torch.randn(C, C) * 0.1,
              wv=torch.randn(C, C) * 0.1, wo=torch.randn(C, C) * 0.1)
for p in params.values():
    p.requires_grad_()


def block():
    p = params
    h = F.silu(F.group_norm(F.conv2d(x, p["w"], p["b"], padding=1), 32, p["gw"], p["gb"], 1e-5))
    t = h.flatten(2).transpose(1, 2)  # [2, 1024, C]
    a = F.scaled_dot_product_attention(F.linear(t, p["wq"]), F.linear(t, p["wk"]),
                                       F.linear(t, p["wv"]))
    o = F.linear(a, p["wo"]).transpose(1, 2).reshape(2, C, H, H) + h
    return (o * o).mean()


def block_fwd_bwd():
    for p in params.values():
        p.grad = None
    block().backward()


with torch.no_grad():
    out["block forward"] = timed(block)
out["block forward+backward"] = timed(block_fwd_bwd)
print(json.dumps(out))
