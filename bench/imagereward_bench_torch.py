"""The official image-reward 1.5 package on PyTorch CPU, the twin of
bench/imagereward_bench.lua (which runs this script and prints both side by side):
full-size ImageReward (BLIP ViT-L/16 + BERT-base with cross-attention + the MLP
head), random init, scoring float images [B, 3, 256, 256] in [0, 1] with fixed
token ids (35, ImageReward's max_length) under torch.no_grad: ImageReward.score
minus PIL, i.e. the package's _transform geometry on tensors (antialiased bicubic
resize of the shorter side to 224, centre crop, CLIP normalisation) and then
ImageReward.score_gard. Prints one JSON object: the median seconds of a batch and
the FLOP count of one (torch.utils.flop_counter).

The package's classes come from the unpacked wheel exactly as
tools/fixtures/make_imagereward_fixtures.py imports them (its import_package and
REAL_MED, with its shims for transformers 5). The wheel's folder: $IMAGEREWARD_PACKAGE,
else a cached unpack under the temp dir, made on first use with
`pip download image-reward==1.5 --no-deps`.

    python3 bench/imagereward_bench_torch.py THREADS REPEATS BATCH
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch_timing import median_time
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
threads, repeats, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))[None, :, None, None]
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))[None, :, None, None]


def fixtures_script():
    path = os.path.join(ROOT, "tools", "fixtures", "make_imagereward_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_imagereward_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def package_dir():
    """A folder holding ImageReward/ of the image-reward 1.5 wheel."""
    d = os.environ.get("IMAGEREWARD_PACKAGE")
    if d:
        return d
    d = os.path.join(tempfile.gettempdir(), "diffrl-image-reward-1.5")
    if not os.path.isfile(os.path.join(d, "ImageReward", "ImageReward.py")):
        os.makedirs(d, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "image-reward==1.5",
                        "--no-deps", "-d", d], check=True, stdout=sys.stderr)
        with zipfile.ZipFile(glob.glob(os.path.join(d, "image_reward-1.5-*.whl"))[0]) as z:
            z.extractall(d)
    return d


def timed(f):
    return median_time(f, repeats)


def preprocess(x, n_px=224):
    """ImageReward._transform(224) on float tensors: Resize(224) of the shorter side
    (bicubic, antialiased), CenterCrop(224), Normalize."""
    h, w = x.shape[-2:]
    nh, nw = (n_px, int(n_px * w / h)) if h <= w else (int(n_px * h / w), n_px)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((nh - n_px) / 2.0)), int(round((nw - n_px) / 2.0))
    x = x[:, :, top:top + n_px, left:left + n_px]
    return (x - MEAN) / STD


# the package's vit.py imports timm's old module paths: FutureWarnings on stderr, whose
# printed source lines hold braces that the JSON reader of bench/harness.lua would take
warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
fx = fixtures_script()
vit, med, blip, pre, ir = fx.import_package(package_dir())
med_path = os.path.join(tempfile.gettempdir(), "diffrl_imagereward_bench_med_config.json")
with open(med_path, "w") as f:
    json.dump(fx.REAL_MED, f)
model = ir.ImageReward(med_config=med_path, device="cpu").eval()
assert sum(p.numel() for p in model.parameters()) == 446665953

images = torch.rand(batch, 3, 256, 256)
ids = torch.zeros(batch, fx.MAX_LEN, dtype=torch.long)
mask = torch.zeros(batch, fx.MAX_LEN, dtype=torch.long)
for b in range(batch):  # [CLS], 10 word ids, [SEP], then padding (as bench/imagereward_bench.lua)
    ids[b, 0], ids[b, 11] = 101, 102
    ids[b, 1:11] = torch.arange(1, 11) + 2000 + 17 * (b + 1)
    mask[b, :12] = 1
out = {}
with torch.no_grad():
    def score():
        return model.score_gard(ids, mask, preprocess(images))
    out["imagereward"] = timed(score)
    with FlopCounterMode(display=False) as fc:
        score()
    out["flops"] = fc.get_total_flops()
print(json.dumps(out))
