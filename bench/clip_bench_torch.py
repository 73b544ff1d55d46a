"""open_clip on PyTorch CPU, the twin of bench/clip_bench.lua (which runs this script
and prints both side by side): the aesthetic predictor on CLIP ViT-L/14 (QuickGELU)
and CLIP score on ViT-B/32, from float images [B, 3, 256, 256], the preprocessing
(antialiased bicubic resize to 224, centre crop, CLIP normalisation) included,
random-init weights, under torch.no_grad. Prints one JSON object: name -> median s.

    python3 bench/clip_bench_torch.py THREADS REPEATS BATCH
"""
import json
import sys

import open_clip
import torch
import torch.nn.functional as F
from torch_timing import median_time

threads, repeats, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))[None, :, None, None]
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))[None, :, None, None]


def timed(f):
    return median_time(f, repeats)


def preprocess(x, size=224):
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def clip(arch):
    return open_clip.model.CLIP(**open_clip.get_model_config(arch), quick_gelu=True).eval()


class MLP(torch.nn.Module):  # improved-aesthetic-predictor's, 768-1024-128-64-16-1
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


images = torch.rand(batch, 3, 256, 256)
ids = torch.zeros(batch, 77, dtype=torch.long)
for b in range(batch):
    ids[b, 0], ids[b, 11] = 49406, 49407
    ids[b, 1:11] = torch.arange(1, 11) + 300 + 17 * (b + 1)
out = {}
with torch.no_grad():
    l14, mlp = clip("ViT-L-14"), MLP().eval()

    def aesthetic():
        f = l14.encode_image(preprocess(images))
        return mlp(f / f.norm(dim=-1, keepdim=True))
    out["aesthetic"] = timed(aesthetic)
    del l14
    b32 = clip("ViT-B-32")

    def clip_score():
        fi, ft = b32.encode_image(preprocess(images)), b32.encode_text(ids)
        return 100 * F.cosine_similarity(fi, ft)
    out["clip_score"] = timed(clip_score)
print(json.dumps(out))
