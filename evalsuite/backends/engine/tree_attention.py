"""Attention for the engine's packed rows on the CPU: a shared past attended without copies.

Why: with transformers' own cache, every row of a batch gets its own copy of the keys and
values it attends to (the cache concatenates past and new per row, then repeats the key/value
heads for grouped-query attention). Below a 1,000-token ARC context or a 500-token MMLU preamble
those copies cost more than the few answer tokens computed, and a chain with anything cached
loses the causal kernel. Here attention is split in two and merged exactly by log-sum-exp:

* the rows' own tokens attend to each other (causal kernel, or the row's tree mask);
* all rows below one past attend to it in a single kernel call: the queries of those rows (and
  of the query heads sharing a key/value head) are laid end to end as one long query sequence
  against the one stored past, so nothing is copied or repeated.

It plugs into transformers through its attention-function registry (models that dispatch
attention through it: Llama, Mistral, Qwen2, Mixtral, ...). The per-forward :class:`TreeContext`
reaches the attention function as a keyword argument of the model's forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from evalsuite import compat

NAME = "evalsuite_tree"

#: Computed keys and values of one path of the tree, per layer ``(keys, values)`` shaped
#: ``[1, kv_heads, length, head_dim]``; never modified once made, so any number of rows may
#: attend to it.
Past = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TreeContext:
    """What one forward's attention needs besides the model's own tensors.

    ``groups``: the rows (batch indices) below each past; rows in no group have none.
    ``local_mask``: additive ``[batch, 1, width, width]`` mask of the rows' own tokens, or None
    for plain causal rows. With ``keep`` (one row) each layer's past extended by the row's keys
    and values is collected in ``kept``. ``windows``: per layer, the sliding window (a query at
    position p sees keys at positions > p - window, as transformers' sliding masks) or None;
    ``positions`` ``[batch, width]``: the rows' token positions (a past holds positions 0..n-1).
    """

    groups: list[tuple[torch.Tensor, Past]]
    local_mask: torch.Tensor | None
    keep: bool = False
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    windows: tuple[int | None, ...] = ()
    positions: torch.Tensor | None = None
    _window_masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def kept_past(self) -> Past:
        return [self.kept[i] for i in sorted(self.kept)]

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if layer < len(self.windows) else None

    def local_window_mask(self, window: int) -> torch.Tensor:
        """The additive mask of the rows' own tokens with the window applied (made once per forward)."""
        if window not in self._window_masks:
            pos = self.positions
            assert pos is not None  # tree_attention asks for a window mask only with positions
            width = pos.shape[1]
            near = (pos[:, :, None] - pos[:, None, :]) < window
            if self.local_mask is None:
                near &= torch.ones(width, width, dtype=torch.bool).tril()[None]
                mask = torch.zeros(near.shape, dtype=torch.float32).masked_fill_(~near, float("-inf"))[:, None]
            else:
                mask = self.local_mask.masked_fill(~near[:, None], float("-inf"))
            self._window_masks[window] = mask
        return self._window_masks[window]


def supported(model: Any) -> bool:
    """CPU models in sdpa or eager mode where torch has the CPU flash kernel with lse. Whether the
    model's layers look attention up in transformers' registry (and pass the engine's context
    on) is what :mod:`.capabilities` checks, by watching and probing them."""
    device = next(model.parameters()).device
    return (
        device.type == "cpu"
        and compat.attention_implementation(model) in ("sdpa", "eager")
        and compat.cpu_flash_attention() is not None
    )


def _merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Softmax attention over keys A and B together, from the attention over each and its lse."""
    top = torch.maximum(lse_a, lse_b)
    wa = torch.exp(lse_a - top).unsqueeze(-1)
    wb = torch.exp(lse_b - top).unsqueeze(-1)
    return (out_a * wa + out_b * wb) / (wa + wb)


def tree_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    evalsuite_tree: TreeContext | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` ``[batch, heads, width, dim]``; ``key``/``value`` ``[batch, kv_heads, width, dim]``
    are the rows' own tokens only (no cache is passed to the model)."""
    ctx = evalsuite_tree
    if ctx is None:
        raise RuntimeError(f"the {NAME!r} attention needs the engine's TreeContext")
    flash = compat.cpu_flash_attention()
    assert flash is not None  # supported() chose this kernel only where torch has the op
    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    dtype = query.dtype
    if ctx.keep:
        layer = module.layer_idx
        if ctx.groups:
            past_k, past_v = ctx.groups[0][1][layer]
            ctx.kept[layer] = (torch.cat([past_k, key], dim=2), torch.cat([past_v, value], dim=2))
        else:
            ctx.kept[layer] = (key, value)
    local_k = key.repeat_interleave(group, dim=1) if group > 1 else key
    local_v = value.repeat_interleave(group, dim=1) if group > 1 else value
    window = ctx.window(module.layer_idx)
    mask: torch.Tensor | None
    if window is not None and ctx.positions is not None:
        mask = ctx.local_window_mask(window).to(dtype)
    else:
        window = None
        mask = None if ctx.local_mask is None else ctx.local_mask.to(dtype)
    out, lse = flash(query, local_k, local_v, 0.0, mask is None, attn_mask=mask, scale=scaling)[:2]
    if ctx.groups:
        out = out.clone()
        for rows, past in ctx.groups:
            past_k, past_v = past[module.layer_idx]
            n = rows.numel()
            past_mask = None
            if window is not None:  # past keys sit at positions 0..n-1; a query sees those > p - window
                assert ctx.positions is not None  # a window is kept above only with positions
                qpos = ctx.positions[rows][:, None, :].expand(n, group, width).reshape(-1)
                near = (qpos[:, None] - torch.arange(past_k.shape[2])[None, :]) < window
                if not bool(near.any()):
                    continue
                past_mask = torch.zeros(near.shape, dtype=dtype).masked_fill_(~near, float("-inf"))[None, None]
            # [n, heads, width, dim] -> [1, kv_heads, n * group * width, dim]: one long query sequence per key/value head
            q = query[rows].view(n, kv_heads, group, width, dim).transpose(0, 1).reshape(1, kv_heads, n * group * width, dim)
            past_out, past_lse = flash(q, past_k, past_v, 0.0, False, attn_mask=past_mask, scale=scaling)[:2]
            if past_mask is not None:  # queries that see no past key (the kernel gives them lse 0): weight 0
                seen = near.any(dim=1)[None, None]
                past_out = torch.where(seen[..., None], past_out, torch.zeros((), dtype=past_out.dtype))
                past_lse = torch.where(seen, past_lse, torch.full((), float("-inf"), dtype=past_lse.dtype))
            past_out = past_out.view(kv_heads, n, group, width, dim).transpose(0, 1).reshape(n, heads, width, dim)
            past_lse = past_lse.view(kv_heads, n, group, width).transpose(0, 1).reshape(n, heads, width)
            out[rows] = _merge(out[rows], lse[rows], past_out, past_lse).to(out.dtype)
    return out.transpose(1, 2).contiguous(), None
