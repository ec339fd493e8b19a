"""The KV cache of group sampling: one prefill row per group, repeated to the group's rows with room to decode.

Imported only when sampling (it needs transformers, whose import takes over a second).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


def full_attention(cache: Cache) -> bool:
    """Whether every layer of the (empty) cache attends over all past tokens (no sliding window or other kind)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def repeat_for_groups(cache: Cache, group_size: int, room: int) -> None:
    """Give each prefilled row `group_size` rows: full-attention layers in a buffer with `room` more tokens
    (GroupCacheLayer); any other kind of layer (e.g. sliding-window) by its own `batch_repeat_interleave`."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            cache.layers[i] = GroupCacheLayer(layer, group_size, room)
        else:
            layer.batch_repeat_interleave(group_size)


class GroupCacheLayer(DynamicLayer):
    """A prefilled layer of keys and values, repeated to each group's rows once, into a buffer with room for
    `room` more tokens that decoding fills in place.

    Written here because transformers' caches either copy the whole cache at every step (DynamicLayer's `cat`:
    most of the decode time at 128 rows x 800 tokens on CPU) or attend over their full preallocated length and
    allocate it zeroed (StaticLayer); this one returns a view of exactly the tokens so far.
    """

    def __init__(self, prefilled: DynamicLayer, group_size: int, room: int):
        super().__init__()
        keys, values = prefilled.keys, prefilled.values
        n, heads, length, _ = keys.shape
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._keys = keys.new_empty((n * group_size, heads, length + room, keys.shape[-1]))
        self._values = values.new_empty((n * group_size, heads, length + room, values.shape[-1]))
        for buffer, prefix in ((self._keys, keys), (self._values, values)):
            buffer[:, :, :length].view(n, group_size, heads, length, -1).copy_(prefix[:, None])
        self.keys, self.values = self._keys[:, :, :length], self._values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"group cache full: {end} tokens > {self._keys.shape[-2]}")
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values
