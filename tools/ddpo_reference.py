#!/usr/bin/env python3
"""ddpo-pytorch's RL loop on diffusers, compact, for timing against diffrl's
trainer (bench/rl_bench.lua runs it). Pinned: torch 2.15.0, diffusers 0.42.1,
transformers 5.24.0, Pillow 13.0.0 (pip), CPU, float32.

    python3 tools/ddpo_reference.py THREADS REPEATS B T K R [MODEL]

Re-implements kvablack/ddpo-pytorch (scripts/train.py,
ddpo_pytorch/diffusers_patch/pipeline_with_logprob.py, ddim_with_logprob.py,
ddpo_pytorch/rewards.py) with the settings of its config/base.py and
diffrl's recipes/compressibility.lua where they differ only in size:

  sampling  StableDiffusionPipeline from MODEL (default the tiny-sd15 fixture),
            DDIM eta 1.0, T steps, guidance 5.0, R x R; the prompts encoded once
            per batch and the empty negative prompt once per run (as train.py);
            one UNet call per step on [uncond; cond] (2B rows); every latent and
            the per-step log-prob kept (pipeline_with_logprob), VAE decode,
            postprocess to [0, 1]
  reward    JPEG compressibility: -(bytes of PIL JPEG quality 95) / 1000
  advantage (r - mean) / (std + 1e-8) (numpy std), clamped to +-5
  training  full UNet (text encoder, VAE frozen; no LoRA, no gradient
            checkpointing, as train.py), AdamW lr 3e-4, betas 0.9/0.999, wd 1e-4,
            eps 1e-8. K optimizer steps: each recomputes the CFG noise prediction
            of the whole batch with gradients at one timestep column,
            ddim_step_with_logprob on the recorded next latents, PPO clipped loss
            (clip 1e-4, mean over the batch), backward, clip_grad_norm 1.0, step.

Differences from train.py, on purpose: it accumulates the gradients of the K
timesteps into ONE optimizer step (accelerate's gradient_accumulation_steps =
K); here, as in the paper (Zhang et al. 2024, Alg. 1) and diffrl, each timestep
is its own step. Like train.py, the timesteps are a random permutation per
sample (its first K columns), so one UNet call mixes timesteps; the rewards run
in the same thread (train.py uses a thread pool). No wandb, accelerate, EMA.

Prints a JSON object: median seconds over REPEATS iterations after one warm-up
for `sample` (text encoding + denoising + decode + reward of one batch), its
`reward` part, `train` (the K policy steps), and images/s of each.
"""
import io
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
THREADS, REPEATS, B, T, K, R = (int(a) for a in (args + [2, 3, 8, 10, 5, 32][len(args):])[:6])
MODEL = args[6] if len(args) > 6 else os.path.join(HERE, "..", "spec", "fixtures", "models", "tiny-sd15")
GUIDANCE, ETA, CLIP_RANGE, ADV_CLIP, MAX_GRAD_NORM = 5.0, 1.0, 1e-4, 5.0, 1.0
ANIMALS = ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer",
           "cow", "goat", "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle"]

torch.set_num_threads(THREADS)
torch.manual_seed(0)
rng = np.random.default_rng(0)


# ---- ddim_with_logprob.py ----------------------------------------------------------
def ddim_step_with_logprob(sched, model_output, timestep, sample, eta, prev_sample=None):
    """x_{t-1} (sampled, or the given prev_sample) and its Gaussian log-prob under the
    DDIM step, averaged over all but the batch dim. timestep: 0-d or [B] tensor."""
    timestep = timestep.reshape(-1).long()
    prev_t = (timestep - sched.config.num_train_timesteps // sched.num_inference_steps).clamp(
        0, sched.config.num_train_timesteps - 1)  # ddpo clamps (final step: alphas_cumprod[0])
    shape = (-1,) + (1,) * (sample.ndim - 1)
    a_t = sched.alphas_cumprod[timestep].reshape(shape)
    a_prev = sched.alphas_cumprod[prev_t].reshape(shape)
    b_t = 1 - a_t
    x0 = (sample - b_t ** 0.5 * model_output) / a_t ** 0.5  # epsilon prediction
    if sched.config.clip_sample:
        x0 = x0.clamp(-sched.config.clip_sample_range, sched.config.clip_sample_range)
    variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
    std = eta * variance ** 0.5
    mean = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * model_output
    if prev_sample is None:
        prev_sample = mean + std * torch.randn_like(model_output)
    log_prob = (-((prev_sample.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std)
                - math.log(math.sqrt(2 * math.pi)))
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


# ---- pipeline_with_logprob.py --------------------------------------------------------
@torch.no_grad()
def pipeline_with_logprob(pipe, prompt_embeds, negative_embeds, steps, guidance, eta, size):
    pipe.scheduler.set_timesteps(steps)
    embeds = torch.cat([negative_embeds, prompt_embeds])
    f = pipe.vae_scale_factor
    latents = torch.randn(prompt_embeds.shape[0], pipe.unet.config.in_channels, size // f, size // f)
    latents = latents * pipe.scheduler.init_noise_sigma
    all_latents, all_log_probs = [latents], []
    for t in pipe.scheduler.timesteps:
        x = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_uncond, noise_text = pipe.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0].chunk(2)
        noise = noise_uncond + guidance * (noise_text - noise_uncond)
        latents, log_prob = ddim_step_with_logprob(pipe.scheduler, noise, t, latents, eta)
        all_latents.append(latents)
        all_log_probs.append(log_prob)
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="pt")
    return image, all_latents, all_log_probs


# ---- rewards.py ------------------------------------------------------------------------
def jpeg_compressibility(images):
    arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
    sizes = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell() / 1000)
    return -np.array(sizes)


# ---- train.py --------------------------------------------------------------------------
pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
pipe.vae.requires_grad_(False)
pipe.text_encoder.requires_grad_(False)
pipe.unet.requires_grad_(True)
unet = pipe.unet
optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)


def encode(prompts):
    ids = pipe.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


neg_embed = encode([""])
sample_neg_embeds = neg_embed.repeat(B, 1, 1)
train_neg_embeds = neg_embed.repeat(B, 1, 1)


def iteration():
    # SAMPLING
    t0 = time.perf_counter()
    unet.eval()
    prompts = [ANIMALS[i] for i in rng.integers(0, len(ANIMALS), B)]
    prompt_embeds = encode(prompts)
    images, latents, log_probs = pipeline_with_logprob(pipe, prompt_embeds, sample_neg_embeds, T, GUIDANCE, ETA, R)
    latents = torch.stack(latents, dim=1)  # [B, T + 1, 4, h, w]
    log_probs = torch.stack(log_probs, dim=1)  # [B, T]
    timesteps = pipe.scheduler.timesteps.repeat(B, 1)  # [B, T]
    t1 = time.perf_counter()
    rewards = jpeg_compressibility(images)
    t2 = time.perf_counter()
    advantages = torch.as_tensor((rewards - rewards.mean()) / (rewards.std() + 1e-8), dtype=torch.float32)
    samples = {"prompt_embeds": prompt_embeds, "timesteps": timesteps, "latents": latents[:, :-1],
               "next_latents": latents[:, 1:], "log_probs": log_probs, "advantages": advantages}

    # TRAINING (one inner epoch, train batch = sample batch)
    t3 = time.perf_counter()
    perm = torch.randperm(B)
    samples = {k: v[perm] for k, v in samples.items()}
    perms = torch.stack([torch.randperm(T) for _ in range(B)])
    for key in ["timesteps", "latents", "next_latents", "log_probs"]:
        samples[key] = samples[key][torch.arange(B)[:, None], perms]
    unet.train()
    embeds = torch.cat([train_neg_embeds, samples["prompt_embeds"]])
    adv = torch.clamp(samples["advantages"], -ADV_CLIP, ADV_CLIP)
    ratio_dev = 0.0
    for j in range(K):
        x, ts = samples["latents"][:, j], samples["timesteps"][:, j]
        noise_uncond, noise_text = unet(torch.cat([x] * 2), torch.cat([ts] * 2), embeds).sample.chunk(2)
        noise = noise_uncond + GUIDANCE * (noise_text - noise_uncond)
        _, log_prob = ddim_step_with_logprob(pipe.scheduler, noise, ts, x, ETA,
                                             prev_sample=samples["next_latents"][:, j])
        ratio = torch.exp(log_prob - samples["log_probs"][:, j])
        if j == 0:  # same weights as sampling: ratio 1 up to rounding (a check)
            ratio_dev = float((ratio.detach() - 1).abs().max())
        unclipped = -adv * ratio
        clipped = -adv * torch.clamp(ratio, 1.0 - CLIP_RANGE, 1.0 + CLIP_RANGE)
        loss = torch.mean(torch.maximum(unclipped, clipped))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
    t4 = time.perf_counter()
    return t2 - t0, t2 - t1, t4 - t3, float(rewards.mean()), ratio_dev


iteration()  # warm-up
runs = [iteration() for _ in range(REPEATS)]
sample, reward, train = (statistics.median(r[i] for r in runs) for i in range(3))
print(json.dumps({"sample": sample, "reward": reward, "train": train,
                  "sample_images_per_s": B / sample, "train_images_per_s": B / train,
                  "reward_mean_last": runs[-1][3], "first_step_ratio_dev": max(r[4] for r in runs), "threads": THREADS, "repeats": REPEATS,
                  "B": B, "T": T, "K": K, "R": R, "torch": torch.__version__}))
