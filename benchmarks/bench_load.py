"""Load time of the embedded model: first load (GGUF de-quantization + cache write) vs cached load.

Run: .venv/bin/python benchmarks/bench_load.py   (uses a temporary cache for the cold run)
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
    from sycointerp import models

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SYCOINTERP_CACHE"] = cache
        _, cold = _timed(models.load_model)
        _, warm = _timed(models.load_model)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        "torch threads "
        f"{__import__('torch').get_num_threads()}"
    )
    print(f"first load (convert GGUF + write cache): {cold:6.2f} s")
    print(
        f"cached load (verify hashes + read safetensors): {warm:6.2f} s   ratio {cold / warm:4.1f}x"
    )


if __name__ == "__main__":
    main()
