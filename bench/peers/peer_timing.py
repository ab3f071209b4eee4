"""Timing shared by the peers' scripts: CUDA events around one call, median of `steps` after `warmup`."""
import time

import torch

GIB = float(1 << 30)


def time_call(call, warmup, steps):
    """Median ms of call() over `steps` (after `warmup` calls), peak memory during them, and the
    last call's result."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(warmup):
            call()
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        ms = []
        for _ in range(steps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            out = call()
            e1.record()
            e1.synchronize()
            ms.append(e0.elapsed_time(e1))
    ms.sort()
    return dict(ms=ms[len(ms) // 2], ms_min=ms[0], ms_max=ms[-1], warmup_s=warm,
                peak_gib=torch.cuda.max_memory_allocated() / GIB,
                reserved_gib=torch.cuda.max_memory_reserved() / GIB), out
