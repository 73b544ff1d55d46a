#!/usr/bin/env python3
"""Pillow twin of bench/data_bench.lua: decode every .jpg of a webdataset shard,
resize the shorter side to RES (bilinear, reducing_gap=None: torchvision's Resize on
a PIL image), centre-crop RES x RES and convert to float32 [3, RES, RES] / 255, on one
core. Prints 'pillow=VERSION seconds=S cpu_seconds=C' (best of 5 passes over the
shard, wall clock and process CPU time).

    python3 bench/data_bench_pillow.py SHARD.tar RES      (pip install pillow numpy)
"""
import io
import sys
import tarfile
import time

import numpy as np
import PIL
from PIL import Image


def load(data, res):
    img = Image.open(io.BytesIO(data)).convert('RGB')
    w, h = img.size
    nw, nh = (res, int(res * h / w)) if w <= h else (int(res * w / h), res)
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = int(round((nw - res) / 2.0)), int(round((nh - res) / 2.0))
    img = img.crop((left, top, left + res, top + res))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def main():
    path, res = sys.argv[1], int(sys.argv[2])
    with tarfile.open(path) as tar:
        blobs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith('.jpg')]
    walls, cpus = [], []
    for _ in range(6):
        t0, c0 = time.perf_counter(), time.process_time()
        for b in blobs:
            load(b, res)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    # the best of the last 5 (the first warms up): the cores are shared
    print('pillow=%s seconds=%.6f cpu_seconds=%.6f' % (PIL.__version__, min(walls[1:]), min(cpus[1:])))


if __name__ == '__main__':
    main()
