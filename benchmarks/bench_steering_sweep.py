"""The steering baselines' coefficient sweep: the last token resumed against full forwards.

CAA at the middle block (15) of the embedded SmolLM2-135M-Instruct, the SPT job's default
coefficients, the reply-position pairs of every fifth built-in question (``--pairs``, default
48). Runs ``_steered_means`` resumed, then with resumed runs switched off (its fallback: one full
forward per equal-length group of prompts for each coefficient), checks they agree and prints
both times and their ratio.

Usage: ``python benchmarks/bench_steering_sweep.py [--pairs 48]``
"""

import argparse
import time

import sycointerp.patching._resume as resume
from sycointerp.data import load_builtin
from sycointerp.models import load_model
from sycointerp.spt.steering_baselines import _pairs_and_metric, _steered_means
from sycointerp.steering import caa_vector, steer_residual

ALPHAS = [-0.25, -0.5, -1.0, -2.0, -4.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=48)
    args = parser.parse_args()
    model = load_model()
    pairs, metric = _pairs_and_metric(model, load_builtin()[::5][: args.pairs], {"system": ""})
    layer = model.cfg.n_layers // 2
    vector = caa_vector(model, pairs, layer)
    steers = [
        (lambda a: lambda positions: steer_residual(model, vector, layer, a, positions=positions))(
            alpha
        )
        for alpha in ALPHAS
    ]
    t0 = time.perf_counter()
    fast = _steered_means(model, pairs, metric, steers)
    resumed_s = time.perf_counter() - t0
    supports = resume.supports_resume
    resume.supports_resume = lambda model: False
    try:
        t0 = time.perf_counter()
        full = _steered_means(model, pairs, metric, steers)
        full_s = time.perf_counter() - t0
    finally:
        resume.supports_resume = supports
    diff = max(abs(a - b) for a, b in zip(fast, full))
    print(
        f"{len(pairs)} pairs, {len(ALPHAS)} coefficients: resumed {resumed_s:.1f} s, full forwards "
        f"{full_s:.1f} s ({full_s / resumed_s:.1f}x); max abs diff {diff:.1e}"
    )
    if diff > 1e-4:
        raise SystemExit(f"the two sweeps differ by {diff:.2e}")


if __name__ == "__main__":
    main()
