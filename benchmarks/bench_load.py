"""Load time of the embedded model: first load (GGUF de-quantization + cache write) against cached
loads, which check the cache entry's file sizes (the default) or re-hash every file
(``verify=True``), in float32 and bfloat16.

Run: .venv/bin/python benchmarks/bench_load.py   (uses a temporary cache for the cold runs)
"""

from __future__ import annotations

import os
import platform
import tempfile
import time


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    import torch

    from sycointerp import models

    gguf = models.embedded_gguf_path()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; GGUF {gguf.stat().st_size / 2**20:.0f} MiB"
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SYCOINTERP_CACHE"] = cache
        for dtype in (torch.float32, torch.bfloat16):
            _report(models, gguf, dtype)


def _report(models, gguf, dtype) -> None:
    """Cold, size-checked and fully hashed loads of one dtype, printed."""
    load = lambda: models.load_model(dtype=dtype)  # noqa: E731
    _, cold = _timed(load)
    _, sizes = _timed(load)
    os.environ["SYCOINTERP_VERIFY_CACHE"] = "1"
    _, hashed = _timed(load)
    del os.environ["SYCOINTERP_VERIFY_CACHE"]
    entry = models.convert_gguf(gguf, dtype=dtype)
    size = sum(p.stat().st_size for p in entry.iterdir()) / 2**20
    _, check = _timed(lambda: models.convert_gguf(gguf, dtype=dtype))
    print(f"{str(dtype).removeprefix('torch.')}: cache entry {size:.0f} MiB")
    print(f"  first load (convert GGUF + write cache): {cold:6.2f} s")
    print(f"  cached load, sizes checked (default):    {sizes:6.2f} s  ({cold / sizes:.1f}x)")
    print(f"  cached load, every file re-hashed:       {hashed:6.2f} s")
    print(f"  finding + checking the entry alone:      {check:6.3f} s")


if __name__ == "__main__":
    main()
