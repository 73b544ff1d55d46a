#!/usr/bin/env python3
"""Converts the PyTorch pickle weights of a diffusers / transformers folder to
safetensors, in place beside them, so diffrl can load the folder (diffrl never
unpickles: a pickle can run code).

    pip install torch safetensors
    python3 tools/convert_to_safetensors.py DIR [DIR ...]

DIR may be a pipeline folder (every subfolder is converted) or one model folder
(unet/, vae/, text_encoder/). For each *.bin (diffusion_pytorch_model.bin,
pytorch_model.bin, their .fp16 variants and sharded pytorch_model-0000x-of-0000y.bin
with the index), writes the .safetensors of the same stem; existing .safetensors
files are left alone. Loads with torch.load(weights_only=True), which refuses
anything but tensors and plain containers.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def convert_file(path):
    out = path[: -len(".bin")] + ".safetensors"
    out = out.replace("pytorch_model", "model") if os.path.basename(out).startswith("pytorch_model") else out
    if os.path.exists(out):
        print(f"{out}: exists, skipped")
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    # tensors sharing storage (tied weights) must be saved as separate copies
    seen = {}
    for k, v in list(tensors.items()):
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            tensors[k] = v.clone()
        seen[key] = k
    save_file(tensors, out, metadata={"format": "pt"})
    print(f"{path} -> {out} ({len(tensors)} tensors)")


def convert_index(path):
    out = path.replace("pytorch_model.bin.index", "model.safetensors.index")
    with open(path) as f:
        index = json.load(f)
    index["weight_map"] = {k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                           for k, v in index["weight_map"].items()}
    with open(out, "w") as f:
        json.dump(index, f, indent=2)
    print(f"{path} -> {out}")


def convert_dir(d):
    n = 0
    for root, _, files in os.walk(d):
        for name in sorted(files):
            p = os.path.join(root, name)
            if name.endswith(".bin") and ("pytorch_model" in name or "diffusion_pytorch_model" in name):
                convert_file(p)
                n += 1
            elif name.endswith(".bin.index.json"):
                convert_index(p)
    if n == 0:
        print(f"{d}: no PyTorch .bin weights found")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    for d in sys.argv[1:]:
        convert_dir(d)
