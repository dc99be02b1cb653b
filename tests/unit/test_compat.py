"""The transformers 5.23 / 5.24 cache-argument bridge (sycointerp._compat). Its behaviour (a KV
cache that is really used) is tested by every cached path's equality test, run on both releases
(scripts/check_transformers.sh); these check the version logic it rests on."""

import inspect

from transformers.models.llama.modeling_llama import LlamaModel

from sycointerp._compat import CACHE_ARG, _release, install_cache_compat, output_cache


def test_release_numbers_by_hand():
    assert _release("5.24.0") == (5, 24, 0)
    assert _release("5.24.0.dev0") == (5, 24, 0)
    assert _release("5.9.1rc1") == (5, 9, 1)
    assert _release("5.23") < (5, 24) <= _release("5.24.0") < _release("5.100.0")


def test_the_cache_argument_name_is_the_installed_models_own():
    assert CACHE_ARG in inspect.signature(LlamaModel.forward).parameters


def test_install_is_idempotent_and_output_cache_reads_either_name():
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    install_cache_compat()
    once = AttentionBridge._update_kv_cache
    install_cache_compat()
    assert AttentionBridge._update_kv_cache is once

    class Old:
        past_key_values = "old"

    class New:
        cache = "new"

    assert output_cache(Old()) == "old" and output_cache(New()) == "new"
