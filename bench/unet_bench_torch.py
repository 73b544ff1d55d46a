#!/usr/bin/env python3
"""The PyTorch twin of bench/unet_bench.lua: diffusers' UNet2DConditionModel on
the CPU, same configs, shapes and threads; prints a JSON object of median
seconds per case and the FLOP count of each (torch.utils.flop_counter).

    python3 bench/unet_bench_torch.py THREADS REPEATS   # pip install torch diffusers
"""
import json
import os
import sys

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from torch_timing import median_time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.set_num_threads(threads)
here = os.path.dirname(os.path.abspath(__file__))


def timed(f):
    return median_time(f, repeats)


def flops(f):
    with FlopCounterMode(display=False) as fc:
        f()
    return fc.get_total_flops()


cases = [
    ("tiny", os.path.join(here, "..", "spec", "fixtures", "models", "tiny-sd15", "unet", "config.json"), 8, 32),
    ("small", os.path.join(here, "configs", "unet_small.json"), 16, 128),
]
out = {}
torch.manual_seed(0)
for name, path, size, cross in cases:
    with open(path) as f:
        config = json.load(f)
    unet = UNet2DConditionModel.from_config(config)
    x = torch.randn(2, 4, size, size)
    e = torch.randn(2, 77, cross)
    w = torch.randn(2, 4, size, size)
    t = torch.tensor([999, 37])

    def fwd():
        with torch.no_grad():
            unet(x, t, e)

    def fwd_bwd():
        unet.zero_grad(set_to_none=True)
        (unet(x, t, e).sample * w).sum().backward()

    out[name + " forward"] = timed(fwd)
    out[name + " forward+backward"] = timed(fwd_bwd)
    out["flops " + name + " forward"] = flops(fwd)
    out["flops " + name + " forward+backward"] = flops(fwd_bwd)
print(json.dumps(out))
