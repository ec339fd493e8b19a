"""The group KV buffer: each prefilled row becomes group_size rows holding its keys/values, decoding appends in
place up to the room asked for, and layers of other kinds are repeated by their own method."""
import pytest
import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from hitchhiker import kv_cache


def _prefilled(layer: DynamicLayer, rows: int = 2, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = torch.randn(rows, 3, length, 4), torch.randn(rows, 3, length, 4)
    layer.update(keys, values)
    return keys, values


def test_rows_repeat_each_prefill_and_decoding_appends_up_to_the_room():
    cache = Cache(layers=[DynamicLayer()])
    keys, values = _prefilled(cache.layers[0])
    kv_cache.repeat_for_groups(cache, group_size=3, room=2)
    layer = cache.layers[0]
    assert isinstance(layer, kv_cache.GroupCacheLayer) and layer.get_seq_length() == 5
    assert torch.equal(layer.keys, keys.repeat_interleave(3, 0)) and torch.equal(layer.values, values.repeat_interleave(3, 0))
    step_k, step_v = torch.randn(6, 3, 1, 4), torch.randn(6, 3, 1, 4)
    k, v = layer.update(step_k, step_v)
    assert torch.equal(k, torch.cat([keys.repeat_interleave(3, 0), step_k], 2))
    assert torch.equal(v, torch.cat([values.repeat_interleave(3, 0), step_v], 2))
    assert layer.get_seq_length() == 6
    layer.update(step_k, step_v)
    with pytest.raises(RuntimeError, match="group cache full"):
        layer.update(step_k, step_v)


def test_other_layers_are_repeated_by_their_own_method_and_full_attention_says_so():
    sliding = DynamicSlidingWindowLayer(sliding_window=8)
    cache = Cache(layers=[DynamicLayer(), sliding])
    assert not kv_cache.full_attention(cache) and kv_cache.full_attention(Cache(layers=[DynamicLayer()]))
    _prefilled(cache.layers[0])
    keys, _ = _prefilled(sliding)
    kv_cache.repeat_for_groups(cache, group_size=2, room=4)
    assert isinstance(cache.layers[0], kv_cache.GroupCacheLayer) and cache.layers[1] is sliding
    assert torch.equal(sliding.keys, keys.repeat_interleave(2, 0))
