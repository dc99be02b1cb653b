"""KV caches across transformers 5.23 and >= 5.24, which renamed the cache argument.

transformers 5.24 renamed the KV-cache argument of models, decoder layers and attention modules
from ``past_key_values`` to ``cache`` (the old name is still accepted by the decorated ``forward``
methods, with a deprecation warning, until 5.40). TransformerLens 4.3's attention bridge, which
replaces every HF attention module, reads the cache from ``past_key_values`` only; under 5.24 the HF
decoder layer hands it ``cache=`` instead, the bridge skips the cache update, and every cached
forward (generation, teacher forcing on a prompt's cache, resumed patching) silently attends to
its new tokens alone. :func:`install_cache_compat` wraps that update so it reads either name;
:data:`CACHE_ARG` is the name to pass a cache under when calling HF modules directly, and
:func:`output_cache` reads a returned cache under either name.
"""

import re
from typing import Any

import transformers

__all__ = [
    "CACHE_ARG",
    "CACHE_RENAMED",
    "install_cache_compat",
    "output_cache",
    "quiet_transformers",
]


def _release(version: str) -> tuple[int, ...]:
    """``"5.24.0.dev0"`` -> ``(5, 24, 0)``: the leading numeric release, for comparisons."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


CACHE_RENAMED = _release(transformers.__version__) >= (5, 24)
CACHE_ARG = "cache" if CACHE_RENAMED else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a HF forward returned (``output.cache`` from 5.24, ``past_key_values``
    before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def install_cache_compat() -> None:
    """Let TransformerLens's attention bridge find the cache under either name (idempotent).

    A no-op before transformers 5.24, where HF passes ``past_key_values`` as the bridge expects.
    """
    if not CACHE_RENAMED:
        return
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if original.__qualname__.startswith(install_cache_compat.__qualname__):
        return  # already wrapped

    def update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    AttentionBridge._update_kv_cache = update_kv_cache


def quiet_transformers() -> None:
    """Turn off transformers' own progress bars (a job's ``-q``)."""
    transformers.utils.logging.disable_progress_bar()
