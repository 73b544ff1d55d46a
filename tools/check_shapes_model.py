#!/usr/bin/env python3
"""Checks that a folder written by recipes/pretrain_shapes.lua (diffrl.pretrain.save),
e.g. models/shapes-base, is a diffusers Stable Diffusion pipeline that PyPI's own
code loads and samples:

  - transformers' CLIPTokenizer loads tokenizer/ and gives the same ids as diffrl's
    tokenizer (when the diffrl binary is found) for a few shapes captions;
  - CLIPTextModel, UNet2DConditionModel and AutoencoderKL load with no missing or
    unexpected keys;
  - StableDiffusionPipeline.from_pretrained(DIR) samples an image (DDIM, 20 steps,
    guidance 4) that is written as a PNG.

    pip install torch==2.15.0 diffusers==0.42.1 transformers==5.24.0
    python3 tools/check_shapes_model.py models/shapes-base [out.png] [--prompt TEXT]

Prints "check_shapes_model: OK ..." and exits 0 on success.
"""
import argparse
import json
import os
import subprocess
import sys

import tempfile

import torch
from PIL import Image
from safetensors.torch import load_file
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

CAPTIONS = ["a red circle", "a small blue square", "a blue square left of a green triangle",
            "two yellow stars", ""]
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def fail(msg):
    sys.exit(f"check_shapes_model: {msg}")


def diffrl_ids(model_dir, captions):
    """The diffrl C tokenizer's ids (None when no diffrl binary is found)."""
    binary = os.environ.get("DIFFRL_BIN", os.path.join(ROOT, "build", "diffrl"))
    if not os.path.exists(binary):
        return None
    code = ("local dr = require 'diffrl'; local cjson = require 'cjson'; "
            "local tok = dr.CLIPTokenizer(arg[1]); local out = {}; "
            "for i = 2, #arg do out[#out + 1] = tok:ids(arg[i]) end; print(cjson.encode(out))")
    res = subprocess.run([binary, "-e", code, os.path.join(model_dir, "tokenizer"), *captions],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def diffrl_outputs(model_dir):
    """diffrl's text encoder, UNet and VAE decoder outputs on fixed inputs, which it
    saves with the inputs (None when no diffrl binary is found)."""
    binary = os.environ.get("DIFFRL_BIN", os.path.join(ROOT, "build", "diffrl"))
    if not os.path.exists(binary):
        return None
    path = os.path.join(tempfile.mkdtemp(), "outputs.safetensors")
    code = ("local dr = require 'diffrl'; local p = dr.pipeline.load(arg[1]); local g = dr.Generator(7); "
            "local ids = p.tokenizer:encode({ 'a red circle', 'two yellow stars' }); "
            "local h = p.text_encoder:forward(ids); "
            "local x = dr.randn({ 2, p.latent_channels, p.sample_size / p.vae_scale, p.sample_size / p.vae_scale }, "
            "{ generator = g }); local t = dr.tensor({ 10, 700 }, { dtype = 'int64' }); "
            "local eps = p.unet:forward(x, t, h); local img = p.vae:decode(x); "
            "dr.save(arg[2], { ids = ids, hidden = h, x = x, t = t, eps = eps, img = img })")
    subprocess.run([binary, "-e", code, model_dir, path], capture_output=True, text=True, check=True)
    return load_file(path)


def compare(name, ours, theirs, tol=1e-4):
    err = ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12)).item()
    if not err < tol:
        fail(f"{name}: diffrl and PyTorch differ (max relative error {err:.2e})")
    return err


def check_loading_info(name, info):
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            fail(f"{name}: {kind}: {list(info[kind])[:5]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=os.path.join(ROOT, "models", "shapes-base"))
    ap.add_argument("output", nargs="?", default="shapes_check.png")
    ap.add_argument("--prompt", default="a red circle")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args()
    torch.manual_seed(0)

    tok = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    hf_ids = [tok(c)["input_ids"] for c in CAPTIONS]
    for c, ids in zip(CAPTIONS, hf_ids):
        if len(ids) > tok.model_max_length:
            fail(f"'{c}' has {len(ids)} tokens, more than model_max_length {tok.model_max_length}")
    ours = diffrl_ids(args.model, CAPTIONS)
    if ours is not None and ours != hf_ids:
        fail(f"tokenizer ids differ: transformers {hf_ids} vs diffrl {ours}")
    print(f"tokenizer: {len(tok)} tokens, model_max_length {tok.model_max_length}, "
          f"'{CAPTIONS[2]}' -> {hf_ids[2]}" + (" (same ids as diffrl)" if ours is not None else ""))

    te, info = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder", output_loading_info=True)
    check_loading_info("text_encoder", info)
    unet, info = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet", output_loading_info=True)
    check_loading_info("unet", info)
    vae, info = AutoencoderKL.from_pretrained(args.model, subfolder="vae", output_loading_info=True)
    check_loading_info("vae", info)
    n = sum(p.numel() for m in (te, unet, vae) for p in m.parameters())
    print(f"models: text_encoder, unet, vae load with every key ({n} parameters)")
    ref = diffrl_outputs(args.model)
    if ref is not None:
        with torch.no_grad():
            h = te(ref["ids"]).last_hidden_state
            eps = unet(ref["x"], ref["t"], encoder_hidden_states=ref["hidden"]).sample
            img = vae.decode(ref["x"]).sample
        errs = [compare("text_encoder", ref["hidden"], h), compare("unet", ref["eps"], eps),
                compare("vae.decode", ref["img"], img)]
        print("outputs: diffrl = PyTorch for text_encoder, unet, vae.decode (max relative errors "
              + ", ".join(f"{e:.1e}" for e in errs) + ")")

    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None)
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    out = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
               height=size, width=size, num_images_per_prompt=4,
               generator=torch.Generator().manual_seed(0))
    grid = Image.new("RGB", (4 * size, size))
    for i, im in enumerate(out.images):
        grid.paste(im, (i * size, 0))
    grid.save(args.output)
    print(f"check_shapes_model: OK: StableDiffusionPipeline sampled 4 images of '{args.prompt}' "
          f"({size}x{size}) -> {args.output}")


if __name__ == "__main__":
    main()
