"""PyTorch twin of bench/gpu_unet.lua: diffusers' UNet2DConditionModel from the SD2-base
config (random init), f32 with TF32 off, eager, on the GPU. argv: batch repeats.
Prints one JSON object: forward / forward+backward median seconds, the forward's
FLOPs (FlopCounterMode) and the peak memory of the forward+backward."""
import json
import os
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

batch, repeats = int(sys.argv[1]), int(sys.argv[2])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
here = os.path.dirname(os.path.abspath(__file__))
config = UNet2DConditionModel.load_config(os.path.join(here, "..", "spec", "fixtures", "models", "configs",
                                                       "sd2-base", "unet"))
torch.manual_seed(1)
unet = UNet2DConditionModel.from_config(config).cuda()
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(batch, 4, 64, 64, device="cuda", generator=g)
e = torch.randn(batch, 77, 1024, device="cuda", generator=g)
t = torch.full((batch,), 500.0, device="cuda")


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


with torch.no_grad():
    with FlopCounterMode(display=False) as fc:
        unet(x, t, e)
    flops = fc.get_total_flops()
    fwd = timed(lambda: unet(x, t, e))


def fwd_bwd():
    unet(x, t, e).sample.backward(torch.ones_like(x))
    unet.zero_grad(set_to_none=True)


torch.cuda.reset_peak_memory_stats()
fb = timed(fwd_bwd)
peak = torch.cuda.max_memory_allocated() / 2**20
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", file=sys.stderr)
print(json.dumps({"forward": fwd, "forward+backward": fb, "forward_flops": flops, "peak_mib": peak}))
