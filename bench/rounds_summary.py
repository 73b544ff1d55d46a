"""Summary of bench/rounds.sh's raw outputs: for every case, the fastest diffrl and
torch times over all rounds (ms; norm and conv: their fastest call of a round,
block: its median of a round) and the ratio torch / diffrl (above 1: diffrl is
faster). A torch-only row ("gelu (out=)", torch into preallocated outputs) is set
against diffrl's row of the same name without the suffix.

    python3 bench/rounds_summary.py DIR
"""
import collections
import glob
import os
import re
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/diffrl-rounds"
best = collections.defaultdict(lambda: float("inf"))


def keep(key, value):
    best[key] = min(best[key], value)


for f in glob.glob(os.path.join(d, "conv_*_2_*.txt")):
    who = "ours" if "_ours_" in f else "torch"
    for line in open(f):
        m = re.match(r"(\S.*?)\s{2,}(\d+x\S+)\s+(\d+x\S+)\s+(.*)", line)
        if not m:
            continue
        nums = [float(x) for x in re.findall(r"[\d.]+", m.group(4))]
        # diffrl: fwd best, median, cpu, GF/s, f+b best, ...; torch: fwd best, median, GF/s, f+b best
        name = "conv " + m.group(1).strip() + ", 2 threads"
        keep((name, "fwd", who), nums[0])
        keep((name, "f+b", who), nums[4] if who == "ours" else nums[3])
for f in glob.glob(os.path.join(d, "norm_*.txt")):
    who = "ours" if "_ours_" in f else "torch"
    threads = f.split("_")[-2]
    for line in open(f):
        p = line.split()
        if len(p) < 8 or not re.match(r"[\d.]+$", p[-1]):
            continue
        name = f"{line[:26].strip()}, {threads} thread{'s' if threads != '1' else ''}"
        keep((name, "fwd", who), float(p[-5]))
        keep((name, "bwd", who), float(p[-2]))
for f in glob.glob(os.path.join(d, "block_*.txt")):
    threads = f.split("_")[-2]
    for line in open(f):
        p = [x.strip() for x in line.split("|")]
        if len(p) < 5 or not re.match(r"[\d.]+$", p[2]):
            continue
        name = f"{p[1]}, {threads} thread{'s' if threads != '1' else ''}"
        keep((name, "median", "ours"), float(p[2]))
        keep((name, "median", "torch"), float(p[3]))

print(f"{'case':44} {'part':6} {'diffrl ms':>10} {'torch ms':>10} {'ratio':>6}")
for name, part in sorted({(k[0], k[1]) for k in best}):
    # torch-only variants ("gelu (out=)") are set against diffrl's plain case
    mine = (name, part, "ours") if (name, part, "ours") in best else \
        (re.sub(r" \(out=\)", "", name), part, "ours")
    ours, torch = best[mine], best[(name, part, "torch")]
    print(f"{name:44} {part:6} {ours:10.3f} {torch:10.3f} {torch / ours:6.2f}")
