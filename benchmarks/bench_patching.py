"""Patching speed: sycointerp against TransformerLens's own loops, side by side in one process.

Same model (the embedded SmolLM2-135M-Instruct), same prompt pairs (aligned challenge /
counterfactual pairs of the built-in questions), same metric (flip: gold minus wrong answer
logit at the last position, averaged over the pairs). For each method the script checks that the
numbers agree (max abs difference <= 1e-4) and prints wall time, peak RSS growth and the ratio.

- all-position head outputs: TransformerLens ``generic_activation_patch`` with
  ``layer_head_vector_patch_setter`` (the body of ``get_act_patch_attn_head_out_all_pos``, one
  full forward per head) vs ``patch_heads(position="all")``;
- last-position head outputs: the same TransformerLens loop with a last-position setter vs
  ``patch_heads(position="last")``;
- path patching to the logits (SPT paper): a plain loop of one hooked forward per head vs
  ``path_patch_heads``;
- attribution patching: time in forward-equivalents (one plain forward of the batch = 1) and its
  Spearman correlation with exact all-position patching.

TransformerLens's loops cost the same for every head (one full forward each), so with
``--tl-layers N`` they run only the heads of layers ``0..N-1`` (``--tl-heads M``: only the first
``M`` of those) and their time is scaled to every head (said in the output); agreement is checked
on those heads. Ours always runs every head.

Timings on this machine vary by 20-40% between runs, so each row alternates the reference and
ours ``--rounds`` times (default 3: reference, ours, reference, ours, ...) and reports the median
ratio with its range. Beside each ratio, the FLOP floor: the reference's matmul FLOPs over ours
(per token ``2 x`` the layer parameters and ``2 x V x d`` for an unembedding; attention scores
left out): the ratio if both sides ran at the same FLOP rate. A measured ratio above it means the
reference spends more per FLOP than ours (per-forward hook and Python overhead, small matmuls).

``--placement disk`` places SmolLM2 with layers 10-19 read from disk at every forward (an
``accelerate`` device map and an offload folder) and runs every row on that placement, adding
the hooked fallback (full hooked forwards, what patching ran on placed models before the
engine followed placements) beside ours for last-position patching.

``--shape llama-1b`` runs the same workload on a random-weight model with the shape of
Llama-3.2-1B-Instruct (16 layers x 32 heads, 8 KV heads, d_model 2048, MLP 8192, vocabulary
128,256, tied embeddings; ~1.24B parameters, 4.9 GB in float32) and SmolLM2's chat tokenizer.

Usage: ``python benchmarks/bench_patching.py [--pairs 16] [--tl-layers 30] [--tl-heads M]
[--shape smollm2|llama-1b] [--placement none|disk] [--rounds 3] [--batch-size 256]
[--skip all ...]``
"""

import argparse
import ctypes
import gc
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial

import pandas as pd
import torch
from transformer_lens import patching as tl_patching

from sycointerp.data import build_pairs, load_builtin
from sycointerp.data.batch import PairBatch
from sycointerp.metrics import flip_metric
from sycointerp.models import load_model
from sycointerp.patching import attribution_patch_heads, patch_heads, path_patch_heads
from sycointerp.patching.activation import patch_head_list
from sycointerp.stability import spearman

TOL = 1e-4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, peak RSS growth in MiB) of ``fn()``, RSS sampled every 5 ms.

    Freed heap memory is returned to the OS first (``malloc_trim``), so the growth reflects this
    call's peak rather than what an earlier call left in the allocator.
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return out, seconds, max(0, max(peak[0], _rss()) - start) / 2**20


def tl_head_sweep(
    model, batch: PairBatch, metric_mean, cells: list[tuple[int, int]], last_only: bool
) -> torch.Tensor:
    """TransformerLens's own one-forward-per-head loop over ``cells`` ((layer, head) pairs)."""
    _, cf_cache = model.run_with_cache(batch.cf, names_filter=lambda n: n.endswith("attn.hook_z"))
    rows = torch.arange(batch.n)

    def last_position_setter(corrupted, index, clean):
        _, head = index
        corrupted[rows, batch.ref_last, head] = clean[rows, batch.cf_last, head]
        return corrupted

    setter = last_position_setter if last_only else tl_patching.layer_head_vector_patch_setter
    index = pd.DataFrame(cells, columns=["layer", "head"])
    with torch.no_grad():
        out = tl_patching.generic_activation_patch(
            model, batch.ref, cf_cache, metric_mean, setter, "z", index_df=index
        )
    return out.flatten()


def plain_path_loop(
    model, batch: PairBatch, metric_mean, cells: list[tuple[int, int]]
) -> torch.Tensor:
    """One plain hooked forward per sender head (the SPT paper's procedure, written directly)."""
    L, rows = model.cfg.n_layers, torch.arange(batch.n)
    names = {f"blocks.{l}.attn.hook_z" for l in range(L)} | {
        f"blocks.{l}.ln1.hook_in" for l in range(L)
    }
    with torch.no_grad():
        _, cf = model.run_with_cache(batch.cf, names_filter=lambda n: n in names)
        _, ref = model.run_with_cache(batch.ref, names_filter=lambda n: n in names)

    def patch_z(z, hook, head, layer):
        z = z.clone()
        z[rows, batch.ref_last, head] = cf[f"blocks.{layer}.attn.hook_z"][rows, batch.cf_last, head]
        return z

    def freeze(x, hook, layer):
        x = x.clone()
        x[rows, batch.ref_last] = ref[f"blocks.{layer}.ln1.hook_in"][rows, batch.ref_last]
        return x

    out = torch.empty(len(cells))
    for i, (layer, head) in enumerate(cells):
        hooks = [(f"blocks.{layer}.attn.hook_z", partial(patch_z, head=head, layer=layer))]
        hooks += [
            (f"blocks.{l}.ln1.hook_in", partial(freeze, layer=l)) for l in range(layer + 1, L)
        ]
        with torch.no_grad():
            out[i] = metric_mean(model.run_with_hooks(batch.ref, fwd_hooks=hooks))
    return out


def llama_1b_shape():
    """A random-weight bridge shaped like Llama-3.2-1B-Instruct, with SmolLM2's chat tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sycointerp.models import boot_bridge, embedded_tokenizer

    tokenizer = embedded_tokenizer()
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return boot_bridge(hf, tokenizer, "random Llama-3.2-1B shape", "hooks", "cpu")


def disk_placed_smollm2(folder: str):
    """SmolLM2 with layers 10-19 offloaded to disk (the tied embedding and unembedding together
    on the CPU, as accelerate requires)."""
    placement = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    placement |= {f"model.layers.{i}": "disk" if 10 <= i < 20 else "cpu" for i in range(30)}
    return load_model(device_map={**placement, "lm_head": "cpu"}, offload_folder=folder)


def flop_floor(model, batch: PairBatch, kind: str) -> float:
    """The reference's matmul FLOPs over ours for one sweep of every head (see module doc).

    Reference: one full forward of every prompt token per head, full unembedding. Ours: the
    reference side's full forward; the counterfactual side's forward (for ``"last"`` and path
    patching only its suffix from the shared prefix on, padded to the longest suffix, as the
    engine runs it; for ``"all"`` a full forward); both without unembedding but the metric's
    tokens; then per head the recomputed positions (the last one; for ``"all"``, every position
    from the shared prefix on) from the head's layer to the end, unembedding two tokens.
    """
    L, H, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    vocab = model.cfg.d_vocab
    block = sum(p.numel() for p in model.blocks[0].parameters())
    tokens = int(batch.ref.numel())
    suffix = batch.ref_last - batch.shared_prefix + 1
    cf_suffix = batch.cf_last - batch.shared_prefix + 1
    reference = L * H * tokens * 2 * (L * block + vocab * d)
    positions = int(suffix.sum()) if kind == "all" else batch.n
    cf_tokens = int(batch.cf.numel()) if kind == "all" else batch.n * int(cf_suffix.max())
    layers_per_head = sum(L - l for l in range(L)) / L  # heads spread evenly over the layers
    ours = (tokens + cf_tokens) * 2 * L * block
    ours += L * H * positions * 2 * (layers_per_head * block + 2 * d)
    return reference / ours


def alternate(reference: Callable[[], object], ours: Callable[[], object], rounds: int):
    """``rounds`` alternating measurements (reference first): the last results and, for each
    side, the list of seconds and the largest peak RSS growth."""
    times: dict[str, list[float]] = {"reference": [], "ours": []}
    peaks = {"reference": 0.0, "ours": 0.0}
    results = {}
    for _ in range(rounds):
        for side, fn in (("reference", reference), ("ours", ours)):
            results[side], seconds, mib = measure(fn)
            times[side].append(seconds)
            peaks[side] = max(peaks[side], mib)
    return results, times, peaks


def report(name: str, ours, tl, times, peaks, scale: float, floor: float | None) -> dict:
    """One row: medians of the alternating rounds, the ratio's median and range, the floor."""
    diff = float((ours - tl).abs().max())
    ratios = [r * scale / o for r, o in zip(times["reference"], times["ours"])]
    row = {
        "method": name,
        "ours_s": statistics.median(times["ours"]),
        "reference_s": statistics.median(times["reference"]) * scale,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "flop_floor": floor,
        "ours_peak_mib": peaks["ours"],
        "reference_peak_mib": peaks["reference"],
        "max_abs_diff": diff,
    }
    status = "OK" if diff <= TOL else "MISMATCH"
    scaled = f" (scaled x{scale:.1f})" if scale != 1 else ""
    print(
        f"{name:<34} ours {row['ours_s']:8.1f} s  reference {row['reference_s']:8.1f} s{scaled:>14}"
        f"  ratio {row['ratio']:6.1f}x [{min(ratios):.1f}-{max(ratios):.1f}] over {len(ratios)}"
        f"{f', floor {floor:.0f}x' if floor else ''}  peak RSS +{peaks['ours']:6.0f} / "
        f"+{peaks['reference']:6.0f} MiB  max|diff| {diff:.1e} {status}",
        flush=True,
    )
    if diff > TOL:
        raise SystemExit(f"{name}: results differ by {diff:.2e} > {TOL}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument(
        "--tl-layers",
        type=int,
        default=None,
        help="reference loops run layers 0..N-1 (default all)",
    )
    parser.add_argument(
        "--tl-heads", type=int, default=None, help="reference loops run only this many heads"
    )
    parser.add_argument("--shape", choices=["smollm2", "llama-1b"], default="smollm2")
    parser.add_argument("--placement", choices=["none", "disk"], default="none")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per row")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["all", "last", "path", "attribution"]
    )
    args = parser.parse_args()
    if args.placement == "disk" and args.shape != "smollm2":
        parser.error("--placement disk places SmolLM2 (--shape smollm2)")

    offload = tempfile.TemporaryDirectory(prefix="bench-offload-")
    if args.placement == "disk":
        model = disk_placed_smollm2(offload.name)
    else:
        model = load_model() if args.shape == "smollm2" else llama_1b_shape()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    tl_layers = args.tl_layers or L
    cells = [(l, h) for l in range(tl_layers) for h in range(H)][: args.tl_heads]
    scale = L * H / len(cells)
    take = torch.tensor([l * H + h for l, h in cells])
    pairs = build_pairs(
        load_builtin()[:: max(1, 170 // args.pairs)][: args.pairs], model.tokenizer, align=True
    )
    batch = PairBatch.from_pairs(pairs, model.tokenizer.pad_token_id or 0)
    metric = flip_metric(batch)
    rows = torch.arange(batch.n)

    def metric_mean(logits):
        return metric(logits[rows, batch.ref_last].float(), rows).mean()

    def swept(result) -> torch.Tensor:
        """Our per-head mean patched metric on the reference's heads."""
        return (result.mean + result.metric_ref.mean()).flatten()[take]

    _, forward_s, _ = measure(lambda: model(batch.ref))
    _, forward_s, _ = measure(lambda: model(batch.ref))
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {batch.n} pairs of {batch.ref.shape[1]} tokens; "
        f"one forward {forward_s:.2f} s; {model.cfg.model_name}"
        f"{' (layers 10-19 on disk)' if args.placement == 'disk' else ''}; reference loops on "
        f"{len(cells)}/{L * H} heads; {args.rounds} alternating rounds per row",
        flush=True,
    )
    results, exact_all = [], None

    def row(name, reference, ours, floor_kind, ours_values=swept):
        out, times, peaks = alternate(reference, ours, args.rounds)
        floor = flop_floor(model, batch, floor_kind) if floor_kind else None
        values = ours_values(out["ours"])
        results.append(report(name, values, out["reference"], times, peaks, scale, floor))
        return out["ours"]

    if "all" not in args.skip:
        exact_all = row(
            "head z, all positions",
            lambda: tl_head_sweep(model, batch, metric_mean, cells, last_only=False),
            lambda: patch_heads(model, pairs, metric, position="all", batch_size=args.batch_size),
            "all",
        )
    if "last" not in args.skip:
        row(
            "head z, last position",
            lambda: tl_head_sweep(model, batch, metric_mean, cells, last_only=True),
            lambda: patch_heads(model, pairs, metric, position="last", batch_size=args.batch_size),
            "last",
        )
        if args.placement == "disk":
            # The hooked fallback on the same heads, scaled like the reference loops.
            fallback = lambda: patch_head_list(  # noqa: E731
                model, batch, metric, cells, engine="hooked", batch_size=args.batch_size
            ).mean(-1)
            row(
                "head z, last: hooked fallback",
                fallback,  # full hooked forwards on the reference's heads, as its side
                lambda: patch_heads(
                    model, pairs, metric, position="last", batch_size=args.batch_size
                ),
                None,
                ours_values=lambda r: r.mean.flatten()[take],
            )
    if "path" not in args.skip:
        row(
            "path patching -> logits",
            lambda: plain_path_loop(model, batch, metric_mean, cells),
            lambda: path_patch_heads(model, pairs, metric, batch_size=args.batch_size),
            "last",
        )
    if "attribution" not in args.skip:
        attr, s, mb = measure(
            lambda: attribution_patch_heads(
                model, pairs, metric, position="all", batch_size=batch.n
            )
        )
        line = (
            f"attribution patching (all)   {s:8.1f} s = {s / forward_s:.1f} forward-equivalents, "
            f"peak RSS +{mb:.0f} MiB"
        )
        if exact_all is not None:
            rho = spearman(attr.mean.flatten(), exact_all.mean.flatten())
            line += f", Spearman vs exact all-position patching {rho:.3f} over {L * H} heads"
        print(line, flush=True)
    print(pd.DataFrame(results).to_string(index=False, float_format="%.3g"))
    offload.cleanup()


if __name__ == "__main__":
    main()
