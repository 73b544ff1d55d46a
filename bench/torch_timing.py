"""What the PyTorch twins of the Lua benches share (bench/harness.lua's H.timed):
the median wall time of `repeats` calls after one warm-up call."""
import statistics
import time


def median_time(f, repeats):
    f()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)
