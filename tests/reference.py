"""Plain reference implementations that the fast paths are tested against.

Each ``reference_*`` function computes what a sycointerp fast path computes, the slow and obviously
correct way: one unpadded, unbatched forward per cell (layer, head or position, example), with
hand-written TransformerLens hooks and caches (``run_with_hooks`` / ``run_with_cache``) or plain
HuggingFace forwards. Nothing here uses the sycointerp patching engine, so a test that compares a
fast result with one of these checks batching, padding, caching and resumed forwards against
independent code. ``plain_last_logits``, ``plain_cache``, ``logit_diff`` and ``z_names`` are the
building blocks, also used directly by tests that spell out a single cell.

sycointerp is imported inside the few functions that need it, so that importing this module
depends on nothing but torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

HEAD_COMPONENTS = ("q", "k", "v", "z", "pattern")  # blocks.{l}.attn.hook_{c}, one cell per head
LAYER_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")  # blocks.{l}.hook_{c}, one cell per layer


# --------------------------------------------------------------------------- building blocks


def plain_last_logits(model, ids: Sequence[int], hooks: Iterable = ()) -> torch.Tensor:
    """Last-position logits of one unpadded prompt: a plain forward with the given forward hooks."""
    with torch.no_grad():
        return model.run_with_hooks(torch.tensor([ids]), fwd_hooks=list(hooks))[0, -1]


def plain_cache(model, ids: Sequence[int], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named activations of one unpadded prompt (no batch axis), keyed in ``names`` order."""
    names = list(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
    return {n: cache[n][0] for n in names}


def z_names(model) -> list[str]:
    """The ``hook_z`` name of every layer, in layer order."""
    return [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]


def logit_diff(logits_last: torch.Tensor, pair, metric: str, tokenizer=None) -> torch.Tensor:
    """A pair's metric read off its last-position logits (a 0-d tensor): ``"flip"`` is the gold
    minus the wrong answer token (``pair.answer_ids``), ``"apology"`` the sycophantic minus the firm
    apology token of ``tokenizer``."""
    if metric == "flip":
        g, w = pair.answer_ids
        return logits_last[g] - logits_last[w]
    if metric == "apology":
        from sycointerp.metrics import apology_token_ids

        s, f = apology_token_ids(tokenizer)
        return logits_last[s] - logits_last[f]
    raise ValueError(f"unknown reference metric {metric!r}")


def _base_and_source(pair, direction: str) -> tuple[list[int], list[int]]:
    """(run that is patched, run the patched values come from): denoise patches cf into ref."""
    if direction == "denoise":
        return pair.ref_ids, pair.cf_ids
    return pair.cf_ids, pair.ref_ids


# --------------------------------------------------------------------------- activation patching


def _index(component: str, unit: int | None, where) -> tuple:
    """Index into one example's hooked tensor (batch axis dropped) of ``unit`` at ``where``."""
    if component == "pattern":
        return (unit, where)  # [head, q_pos, k_pos]: whole query rows
    if unit is None:
        return (where,)  # [pos, d_model]
    return (where, unit)  # [pos, head, d_head]


def reference_activation(
    model, pairs, component: str, position: str, direction: str, metric: str = "flip"
) -> torch.Tensor:
    """Activation patching, one plain forward per (layer, unit, position, example), no batching, no
    padding; each cell is the patched run's metric minus the unpatched run's.

    ``component`` is a head hook (``HEAD_COMPONENTS``: one unit per head, per KV head for k/v) or a
    layer hook (``LAYER_COMPONENTS``: one unit); ``position`` is ``"last"``, ``"all"`` (every
    position at once) or ``"each"``. Returns ``[layer, unit, pos, example]`` (unit and pos of size 1
    where absent); positions past an example's end are left at 0.
    """
    L = model.cfg.n_layers
    if component in HEAD_COMPONENTS:
        names = [f"blocks.{l}.attn.hook_{component}" for l in range(L)]
        kv = component in ("k", "v")
        n_units = (model.cfg.n_key_value_heads or model.cfg.n_heads) if kv else model.cfg.n_heads
    elif component in LAYER_COMPONENTS:
        names = [f"blocks.{l}.hook_{component}" for l in range(L)]
        n_units = None
    else:
        raise ValueError(f"unknown reference component {component!r}")
    P = max(len(p.ref_ids) for p in pairs) if position == "each" else 1
    out = torch.zeros(L, n_units or 1, P, len(pairs))
    for e, pair in enumerate(pairs):
        base, src = _base_and_source(pair, direction)
        clean = float(logit_diff(plain_last_logits(model, base), pair, metric, model.tokenizer))
        src_acts = plain_cache(model, src, names)
        for l in range(L):
            for u in range(n_units or 1):
                for p in range(min(P, len(base))):
                    where = {"all": slice(None), "last": -1}.get(position, p)
                    idx = _index(component, u if n_units else None, where)

                    def patch(x, hook=None, s=src_acts[names[l]], idx=idx):
                        x = x.clone()
                        x[0][idx] = s[idx]
                        return x

                    logits = plain_last_logits(model, base, [(names[l], patch)])
                    patched = float(logit_diff(logits, pair, metric, model.tokenizer))
                    out[l, u, p, e] = patched - clean
    return out


# --------------------------------------------------------------------------- path patching


def reference_path(model, pairs, metric: str, freeze_mlps: bool) -> torch.Tensor:
    """Path patching of each head's last-position z (counterfactual into the reference run), one
    plain forward per (layer, head, example): every later layer's attention input (``ln1.hook_in``)
    is frozen at its reference value at the last position, and with ``freeze_mlps`` every MLP input
    (``ln2.hook_in``) from the sender's layer on too. Returns ``[layer, head, example]``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(L, H, len(pairs))
    for e, pair in enumerate(pairs):
        clean = float(
            logit_diff(plain_last_logits(model, pair.ref_ids), pair, metric, model.tokenizer)
        )
        ins = plain_cache(
            model, pair.ref_ids, [f"blocks.{l}.ln{i}.hook_in" for l in range(L) for i in (1, 2)]
        )
        attn_in = [ins[f"blocks.{l}.ln1.hook_in"][-1] for l in range(L)]
        mlp_in = [ins[f"blocks.{l}.ln2.hook_in"][-1] for l in range(L)]
        cf_z = plain_cache(model, pair.cf_ids, z_names(model))
        for l in range(L):
            z_cf = cf_z[f"blocks.{l}.attn.hook_z"][-1]
            for h in range(H):

                def patch(z, hook=None, h=h, z_cf=z_cf):
                    z = z.clone()
                    z[0, -1, h] = z_cf[h]
                    return z

                hooks = [(f"blocks.{l}.attn.hook_z", patch)]
                for later in range(l + 1, L):

                    def freeze(x, hook=None, v=attn_in[later]):
                        x = x.clone()
                        x[0, -1] = v
                        return x

                    hooks.append((f"blocks.{later}.ln1.hook_in", freeze))
                for later in range(l, L) if freeze_mlps else ():

                    def freeze_mlp(x, hook=None, v=mlp_in[later]):
                        x = x.clone()
                        x[0, -1] = v
                        return x

                    hooks.append((f"blocks.{later}.ln2.hook_in", freeze_mlp))
                logits = plain_last_logits(model, pair.ref_ids, hooks)
                out[l, h, e] = float(logit_diff(logits, pair, metric, model.tokenizer)) - clean
    return out


def reference_receivers(model, pairs, receivers, component: str, position: str) -> torch.Tensor:
    """Sender -> receiver path patching on the receivers' ``hook_{component}`` (q, k or v), two
    plain hooked forwards per (sender, example), the freezing rules written out.

    Pass one patches the sender's counterfactual z into the reference run at the patched positions
    (the last one, or all), freezes every later non-receiver layer's attention input and every MLP
    input from the sender's layer on, freezes the receiver layers' z, and records the receivers'
    component; pass two replays the recorded values into an otherwise clean reference run. Flip
    metric. Returns ``[layer, head, example]`` (senders at or after the receivers stay 0).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    recv_layers = sorted({l for l, _ in receivers})
    out = torch.zeros(L, H, len(pairs))
    for e, pair in enumerate(pairs):
        names = [
            f"blocks.{l}.{hook}"
            for l in range(L)
            for hook in ("attn.hook_z", "ln1.hook_in", "ln2.hook_in")
        ]
        ref, cf = plain_cache(model, pair.ref_ids, names), plain_cache(model, pair.cf_ids, names)
        pos = [len(pair.ref_ids) - 1] if position == "last" else list(range(len(pair.ref_ids)))
        clean = plain_last_logits(model, pair.ref_ids)
        for ls in range(L):
            for hs in range(H):
                recorded = {}

                def patch_sender(z, hook=None, ls=ls, hs=hs):
                    z = z.clone()
                    z[0, pos, hs] = cf[f"blocks.{ls}.attn.hook_z"][pos, hs]
                    return z

                def freeze(name):
                    def hook(x, hook=None):
                        x = x.clone()
                        x[0, pos] = ref[name][pos]
                        return x

                    return hook

                def capture(layer):
                    def hook(act, hook=None):
                        recorded[layer] = act[0, :, [h for l, h in receivers if l == layer]].clone()

                    return hook

                hooks = [(f"blocks.{ls}.attn.hook_z", patch_sender)]
                for l in range(ls + 1, L):
                    if l in recv_layers:
                        hooks += [
                            (f"blocks.{l}.attn.hook_z", freeze(f"blocks.{l}.attn.hook_z")),
                            (f"blocks.{l}.attn.hook_{component}", capture(l)),
                        ]
                    else:
                        hooks.append((f"blocks.{l}.ln1.hook_in", freeze(f"blocks.{l}.ln1.hook_in")))
                hooks += [
                    (f"blocks.{l}.ln2.hook_in", freeze(f"blocks.{l}.ln2.hook_in"))
                    for l in range(ls, L)
                ]
                with torch.no_grad():
                    model.run_with_hooks(torch.tensor([pair.ref_ids]), fwd_hooks=hooks)

                def replay(layer):
                    def hook(act, hook=None):
                        act = act.clone()
                        heads = [h for l, h in receivers if l == layer]
                        rows = torch.tensor(pos)[:, None]
                        act[0, rows, torch.tensor(heads)] = recorded[layer][pos]
                        return act

                    return hook

                logits = plain_last_logits(
                    model,
                    pair.ref_ids,
                    [(f"blocks.{l}.attn.hook_{component}", replay(l)) for l in recorded],
                )
                out[ls, hs, e] = logit_diff(logits, pair, "flip") - logit_diff(clean, pair, "flip")
    return out


# --------------------------------------------------------------------------- attribution patching


def _plain_grads(model, ids, pair, metric: str, resid=None) -> list[torch.Tensor]:
    """d metric / d hook_z of every layer for one unpadded prompt (``resid``, if given, replaces the
    residual entering layer 0): the parameters' own requires_grad builds the graph (no leaf hook, no
    frozen parameters) and ``autograd.grad`` leaves no ``.grad``."""
    zs = []

    def keep(z, hook=None):
        zs.append(z)
        return z

    hooks = [(n, keep) for n in z_names(model)]
    if resid is not None:
        hooks.append(("blocks.0.hook_resid_pre", lambda x, hook=None: resid[None]))
    logits = model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)
    return list(torch.autograd.grad(logit_diff(logits[0, -1], pair, metric, model.tokenizer), zs))


def _dot(z_src, z_base, grad, position: str) -> torch.Tensor:
    """Per-head sum((z_src - z_base) * grad) over d_head and the patched positions."""
    if position == "last":
        return ((z_src[-1] - z_base[-1]) * grad[0, -1]).sum(-1)
    return ((z_src - z_base) * grad[0]).sum((0, 2))


def reference_attribution(model, pairs, position: str, direction: str, ig_steps: int = 0):
    """Attribution patching of hook_z, one example at a time, no padding, no batching: the z change
    times plain autograd's gradient of the metric (flip for answer pairs, apology otherwise); with
    ``ig_steps`` the gradient is averaged over that many midpoints of the straight path between the
    two runs' layer-0 residuals. Returns ``[layer, head, example]``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = z_names(model) + ["blocks.0.hook_resid_pre"]
    out = torch.zeros(L, H, len(pairs))
    for e, pair in enumerate(pairs):
        metric = "flip" if pair.answer_ids is not None else "apology"
        base, src = _base_and_source(pair, direction)
        *z_src, x_src = plain_cache(model, src, names).values()
        *z_base, x_base = plain_cache(model, base, names).values()
        if ig_steps == 0:
            grads = _plain_grads(model, base, pair, metric)
        else:
            alphas = [(k + 0.5) / ig_steps for k in range(ig_steps)]
            runs = [
                _plain_grads(model, base, pair, metric, x_base + a * (x_src - x_base))
                for a in alphas
            ]
            grads = [sum(gs) / ig_steps for gs in zip(*runs)]
        for l in range(L):
            out[l, :, e] = _dot(z_src[l], z_base[l], grads[l], position)
    return out


# --------------------------------------------------------------------------- head knockout


def reference_head_means(model, prompts) -> list[torch.Tensor]:
    """Mean z per layer (float64, ``[head, d_head]``) over every position of every unpadded
    prompt, one loop step per token."""
    totals, count = [0.0] * model.cfg.n_layers, 0
    for ids in prompts:
        zs = list(plain_cache(model, ids, z_names(model)).values())
        for pos in range(len(ids)):
            totals = [t + z[pos].double() for t, z in zip(totals, zs)]
            count += 1
    return [t / count for t in totals]


def reference_knockout(model, pairs, heads, method: str) -> torch.Tensor:
    """Head knockout, one hand-hooked forward per example: the listed heads' z at every position
    set to zero, to their mean over the reference prompts (``"mean"``) or to the counterfactual
    run's (``"resample"``). Flip metric at the last position; returns ``[example]``."""
    means = reference_head_means(model, [p.ref_ids for p in pairs]) if method == "mean" else None
    out = []
    for pair in pairs:
        hooks, cf_zs = [], None
        if method == "resample":
            cf_zs = list(plain_cache(model, pair.cf_ids, z_names(model)).values())
        for layer in sorted({l for l, _ in heads}):
            cf_z = cf_zs and cf_zs[layer]

            def hook(z, hook=None, layer=layer, cf_z=cf_z):
                z = z.clone()
                for l, h in heads:
                    if l != layer:
                        continue
                    if method == "zero":
                        z[0, :, h] = 0.0
                    elif method == "mean":
                        z[0, :, h] = means[layer][h].float()
                    else:
                        z[0, :, h] = cf_z[:, h]
                return z

            hooks.append((f"blocks.{layer}.attn.hook_z", hook))
        logits = plain_last_logits(model, pair.ref_ids, hooks)
        out.append(float(logit_diff(logits, pair, "flip")))
    return torch.tensor(out)


# --------------------------------------------------------------------------- attention


def reference_attention_rows(model, ids: Sequence[int], heads) -> torch.Tensor:
    """Last-position attention rows ``[head, key]`` (float64), recomputed by hand as
    softmax(q k^T / sqrt(d_head)) from the cached (rotated, where rotary) queries and keys."""
    _, cache = model.run_with_cache(
        torch.tensor([ids]),
        names_filter=lambda n: n.endswith(("hook_q", "hook_k", "rot_q", "rot_k")),
    )
    rows = []
    for layer, head in heads:
        rotary = f"blocks.{layer}.attn.hook_rot_q" in cache
        q = cache[f"blocks.{layer}.attn.hook_{'rot_q' if rotary else 'q'}"][0, -1, head]  # [d_head]
        k = cache[f"blocks.{layer}.attn.hook_{'rot_k' if rotary else 'k'}"][0]  # [pos, kv, d_head]
        # Grouped-query attention: consecutive query heads share a KV head.
        kv_head = head // (model.cfg.n_heads // k.shape[1])
        # The last query sees every position: no causal mask to apply.
        scores = (k[:, kv_head] @ q).double() / model.cfg.d_head**0.5
        rows.append(torch.softmax(scores, -1))
    return torch.stack(rows)


# --------------------------------------------------------------------------- generation and metrics


def reference_greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens: an argmax loop, one full forward per step (no KV cache, no padding)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt) :].tolist()


def reference_logprob(model, prompt: Sequence[int], cont: Sequence[int]) -> float:
    """log p(cont | prompt) by teacher forcing, one unpadded forward of prompt + cont."""
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([list(prompt) + list(cont)]))[0], -1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))


def reference_kl(hf_p, hf_q, tok, texts, max_tokens: int) -> tuple[torch.Tensor, float]:
    """KL(p || q) on text, a plain loop: one unpadded forward per passage and HuggingFace model (the
    first ``max_tokens`` tokens), KL per position in float64, then its mean per passage and over
    all positions. Returns (per-passage means, position-weighted mean)."""
    per, counts = [], []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"][:max_tokens]])
            lp = F.log_softmax(hf_p(ids).logits[0].double(), -1)
            lq = F.log_softmax(hf_q(ids).logits[0].double(), -1)
            per.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
            counts.append(ids.shape[1])
    return torch.tensor(per), sum(p * c for p, c in zip(per, counts)) / sum(counts)


def reference_letters(model, questions) -> list[str]:
    """For each multiple-choice question, the label with the highest next-token logit after the
    letter stem, one unpadded HuggingFace forward per question."""
    from sycointerp.chat import DEFAULT_SYSTEM, chat_prompt_ids
    from sycointerp.evaluate import LETTER_STEM

    tok, out = model.tokenizer, []
    for q in questions:
        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM},
            {"role": "user", "content": q.user_text()},
        ]
        ids = chat_prompt_ids(tok, messages, LETTER_STEM)
        with torch.no_grad():
            logits = model.original_model(torch.tensor([ids])).logits[0, -1]
        label_ids = [tok(label, add_special_tokens=False)["input_ids"][0] for label in q.labels]
        out.append(q.labels[int(logits[label_ids].argmax())])
    return out


def reference_set_patch(model, pairs, heads):
    """``patch_head_set``'s reference: plain hooked runs, one pair at a time; the counterfactual
    run's ``hook_z`` at its last position written into the listed heads at the reference run's
    last position; returns the apology logit difference per pair."""
    from sycointerp.metrics import apology_logit_diff_metric

    syc, firm = apology_logit_diff_metric(model.tokenizer).token_ids
    out = []
    for pair in pairs:
        names = sorted({f"blocks.{l}.attn.hook_z" for l, _ in heads})
        cache = plain_cache(model, pair.cf_ids, names)

        def hook(z, hook, heads=heads, cache=cache):
            layer = int(hook.name.split(".")[1])
            z = z.clone()
            for l, h in heads:
                if l == layer:
                    z[0, -1, h] = cache[hook.name][-1, h]
            return z

        logits = plain_last_logits(model, pair.ref_ids, [(n, hook) for n in names])
        out.append(float(logits[syc] - logits[firm]))
    return torch.tensor(out)


def steered_greedy(
    model, prompt: Sequence[int], n: int, hook: str, delta: torch.Tensor, steered: Sequence[int]
) -> tuple[list[int], list[int]]:
    """``n`` greedy tokens, one full forward per step (no KV cache), with ``delta`` added to
    ``hook``'s activation at the positions in ``steered`` and at every position from the prompt's
    last token on: what KV-cached generation under "last"-position steering computes, since a
    token's keys/values are made in the forward where it is the last position. Returns the
    tokens and the steered positions (``steered`` plus the new ones), for a next turn."""
    ids = torch.tensor([prompt])
    mark = sorted(set(steered) | {len(prompt) - 1})

    def add(x, hook):
        x[:, mark] += delta.to(x.dtype)
        return x

    with torch.no_grad():
        for _ in range(n):
            with model.hooks(fwd_hooks=[(hook, add)]):
                nxt = model(ids)[:, -1:].argmax(-1)
            ids = torch.cat([ids, nxt], dim=1)
            mark.append(ids.shape[1] - 1)
    return ids[0, len(prompt) :].tolist(), mark[:-1]


def steered_values(
    model, ids: Sequence[int], hook: str, delta: torch.Tensor, steered: Sequence[int]
) -> list[torch.Tensor]:
    """Every layer's cached values (``[n_kv_heads, len(ids), d_head]``) of one unpadded forward
    of the HuggingFace model over ``ids``, with ``delta`` added to ``hook``'s activation at the
    positions in ``steered`` only: what a dialogue's keys/values hold if exactly those positions
    were computed under steering."""
    from transformers import DynamicCache

    from sycointerp._compat import CACHE_ARG

    hf = model.original_model
    cache = DynamicCache(config=hf.config)
    mark = sorted(set(steered))

    def add(x, hook):
        x[:, mark] += delta.to(x.dtype)
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, add)]):
        hf(input_ids=torch.tensor([list(ids)]), use_cache=True, **{CACHE_ARG: cache})
    return [layer.values[0] for layer in cache.layers]
