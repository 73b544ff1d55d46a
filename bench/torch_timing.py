"""What the PyTorch twins of the Lua benches share (bench/harness.lua's H.timed):
the wall times of `repeats` calls after one warm-up call, and their median."""
import statistics
import time


def wall_times(f, repeats):
    f()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        walls.append(time.perf_counter() - t0)
    return walls


def median_time(f, repeats):
    return statistics.median(wall_times(f, repeats))
