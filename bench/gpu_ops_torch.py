"""PyTorch twin of bench/gpu_ops.lua: same shapes on the GPU, f32, TF32 off.
Prints one JSON object: case name -> median seconds."""
import json
import sys
import time

import torch
import torch.nn.functional as F

repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)


def randn(*shape, grad=False):
    return torch.randn(*shape, device=dev, generator=g).requires_grad_(grad)


def timed(f):
    f()
    torch.cuda.synchronize()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    walls.sort()
    return walls[(len(walls) - 1) // 2]


def fwd_bwd(f, inputs):
    def run():
        y = f()
        y.backward(torch.ones_like(y))
        for t in inputs:
            t.grad = None
    return timed(run)


out = {}
a, b = randn(4096, 4096), randn(4096, 4096)
out["matmul 4096x4096x4096"] = timed(lambda: a @ b)
x, w, bias = randn(8, 320, 64, 64, grad=True), randn(320, 320, 3, 3, grad=True), randn(320, grad=True)
with torch.no_grad():
    out["conv2d 8x320x64x64 3x3 fwd"] = timed(lambda: F.conv2d(x, w, bias, padding=1))
out["conv2d 8x320x64x64 3x3 fwd+bwd"] = fwd_bwd(lambda: F.conv2d(x, w, bias, padding=1), [x, w, bias])
x, w, b = randn(8, 320, 64, 64, grad=True), randn(320, grad=True), randn(320, grad=True)
with torch.no_grad():
    out["group_norm 8x320x64x64 fwd"] = timed(lambda: F.group_norm(x, 32, w, b, 1e-5))
out["group_norm 8x320x64x64 fwd+bwd"] = fwd_bwd(lambda: F.group_norm(x, 32, w, b, 1e-5), [x, w, b])
q, k, v = (randn(8, 5, 4096, 64, grad=True) for _ in range(3))
with torch.no_grad():
    out["attention 8x5x4096x64 fwd"] = timed(lambda: F.scaled_dot_product_attention(q, k, v))
out["attention 8x5x4096x64 fwd+bwd"] = fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v), [q, k, v])
a, b = randn(64, 1024, 1024), randn(64, 1024, 1024)
out["add 64M f32"] = timed(lambda: a + b)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", file=sys.stderr)
print(json.dumps(out))
