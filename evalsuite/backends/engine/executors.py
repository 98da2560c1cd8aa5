"""Executors: how one planned forward pass of packed rows below computed pasts runs on a model.

One interface, two implementations, chosen once when the engine is built (by
:mod:`.capabilities`, which probes them against the model's own forward):

* :class:`TreeAttentionExecutor` (CPU, models that dispatch attention through transformers'
  registry without extras it cannot reproduce): rows attend to their shared past in place
  through :mod:`.tree_attention`, nothing copied;
* :class:`CacheExecutor` (CUDA, or where tree attention is declined): the model's own
  attention over a ``DynamicCache`` holding each row's past.

Both apply each layer's sliding window (``windows``, per layer, from the capabilities) and
return the decoder's last hidden states (the output layer runs only where scored) and, for a
trunk, its past extended by the row. Where neither is exact the engine uses :mod:`.plain`.
"""
from __future__ import annotations

from typing import Any

import torch

from evalsuite import compat
from evalsuite.backends.engine import tree_attention
from evalsuite.backends.engine.planner import Row
from evalsuite.backends.engine.plain import PlainExecutor
from evalsuite.backends.engine.tree_attention import Past
from evalsuite.backends.engine.prefix_tree import PrefixTree



def past_length(past: Past | None) -> int:
    return 0 if past is None else int(past[0][0].shape[-2])


class Executor:
    """Runs planned forward passes on ``model``."""

    name = "abstract"
    #: whether each row gets its own copy of its past (the planner then bounds rows x past)
    copies_past = True

    def __init__(self, model: Any, windows: tuple[int | None, ...] = ()) -> None:
        self.model = model
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.device = next(model.parameters()).device
        #: per layer, the sliding window (None: full attention)
        self.windows = tuple(windows)

    def forward(self, rows: list[Row], pasts: list[Past | None], tree: PrefixTree, keep: bool) -> tuple[torch.Tensor, Past | None]:
        """Hidden states ``[rows, width, hidden]`` of the rows (positions = tree depth - 1) and,
        with ``keep`` (one chain row), the row's past extended by the row."""
        batch, width = len(rows), max(len(r.nodes) for r in rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        pos = torch.zeros(batch, width, dtype=torch.long)
        ends = torch.zeros(batch, width, dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row.nodes)
            ids[b, :n] = torch.tensor([tree.token[x] for x in row.nodes])
            pos[b, :n] = torch.tensor([tree.depth[x] - 1 for x in row.nodes])
            ends[b, :n] = torch.tensor(row.ends)
            if n < width:  # padding sees only itself and is seen by nobody else
                ends[b, n:] = torch.arange(n + 1, width + 1)
                pos[b, n:] = pos[b, n - 1] if n else 0
        local = None  # plain causal rows need no mask
        if not all(r.is_chain for r in rows):
            idx = torch.arange(width)
            # query i may see key j of the row iff j <= i < ends[j] (j is i or one of its ancestors)
            local = (idx[None, :, None] >= idx[None, None, :]) & (idx[None, :, None] < ends[:, None, :])
        return self._run(ids, pos, local, pasts, keep)

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, local: torch.Tensor | None, pasts: list[Past | None],
             keep: bool) -> tuple[torch.Tensor, Past | None]:
        raise NotImplementedError


class TreeAttentionExecutor(Executor):
    """Pasts attended in place by :func:`.tree_attention.tree_attention` (CPU)."""

    name = "tree"
    copies_past = False

    def __init__(self, model: Any, windows: tuple[int | None, ...] = ()) -> None:
        super().__init__(model, windows)
        compat.register_attention(tree_attention.NAME, tree_attention.tree_attention)

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, local: torch.Tensor | None, pasts: list[Past | None],
             keep: bool) -> tuple[torch.Tensor, Past | None]:
        by_past: dict[int, tuple[Past, list[int]]] = {}
        for b, past in enumerate(pasts):
            if past is not None:
                by_past.setdefault(id(past), (past, []))[1].append(b)
        groups = [(torch.tensor(members), past) for past, members in by_past.values()]
        mask = None
        if local is not None:
            mask = torch.zeros(local.shape, dtype=torch.float32).masked_fill_(~local, float("-inf"))[:, None]
        ctx = tree_attention.TreeContext(groups, mask, keep, windows=self.windows if any(self.windows) else (),
                                         positions=pos)
        with compat.attention(self.model, tree_attention.NAME):
            out = self.base(input_ids=ids, position_ids=pos, use_cache=False, evalsuite_tree=ctx)
        return out.last_hidden_state, (ctx.kept_past() if keep else None)


class CacheExecutor(Executor):
    """The model's own attention over a ``DynamicCache`` of the rows' pasts (CUDA, sliding windows)."""

    name = "cache"

    def __init__(self, model: Any, windows: tuple[int | None, ...] = (), layer_types: list[str] | None = None) -> None:
        super().__init__(model, windows)
        self.float_mask = (compat.attention_implementation(model) or "sdpa") == "eager"
        self.cache_kw = compat.cache_keyword(self.base)
        #: the model's mask key per layer (config.layer_types): masks differ per window only
        #: through a {layer type: mask} mapping, which such models accept in place of one mask
        self.layer_types = layer_types
        if len(set(self.windows)) > 1 and not (layer_types and len(layer_types) == len(self.windows) and all(
                len({w for w, t in zip(self.windows, layer_types) if t == kind}) == 1 for kind in set(layer_types))):
            raise ValueError("per-layer windows need the model's layer_types to pass one mask per window")

    def _cache(self, pasts: list[Past | None], batch: int) -> tuple[Any, int]:
        """Rows below one past see it through broadcast views; rows below different pasts get
        them stacked, right-padded to the longest (the mask hides the padding)."""
        length = max(past_length(p) for p in pasts)
        if length == 0:
            return None, 0
        first = next(p for p in pasts if p is not None)
        same = all(p is first for p in pasts)
        layers = []
        for layer_idx, (keys, values) in enumerate(first):
            if same:
                keys, values = keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)
            else:
                shape = (batch, keys.shape[1], length, keys.shape[3])
                keys, values = keys.new_zeros(shape), values.new_zeros(shape)
                for b, past in enumerate(pasts):
                    if past is not None:
                        n = past_length(past)
                        keys[b, :, :n] = past[layer_idx][0][0]
                        values[b, :, :n] = past[layer_idx][1][0]
            layers.append((keys, values))
        return compat.cache_from_layers(layers), length

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, local: torch.Tensor | None, pasts: list[Past | None],
             keep: bool) -> tuple[torch.Tensor, Past | None]:
        batch, width = ids.shape
        cache, past = self._cache(pasts, batch)
        mask: Any = None
        windowed = any(w is not None and w < past + width for w in self.windows)
        if local is not None or (past > 0 and batch > 1) or windowed:
            if local is None:
                local = torch.ones(width, width, dtype=torch.bool).tril()[None].expand(batch, width, width)
            seen = torch.tensor([past_length(p) for p in pasts])
            visible = (torch.arange(past)[None, :] < seen[:, None])[:, None, :].expand(batch, width, past)
            full = torch.cat([visible, local], dim=2)
            if windowed:  # keys at positions 0..past-1 (the past), then the row's own positions
                key_pos = torch.cat([torch.arange(past)[None].expand(batch, past), pos], dim=1)
                masks = {w: full if w is None else full & ((pos[:, :, None] - key_pos[:, None, :]) < w)
                         for w in set(self.windows)}
                if len(masks) == 1:
                    mask = self._mask(next(iter(masks.values())))
                else:
                    assert self.layer_types is not None  # __init__ refuses several windows without them
                    mask = {kind: self._mask(masks[w]) for w, kind in zip(self.windows, self.layer_types)}
            else:
                mask = self._mask(full)
        # else: causal attention, which the model builds itself (fast kernels when nothing is
        # cached); right padding is harmless as no real token attends to a later position
        if keep and cache is None:
            cache = compat.new_cache()
        out = self.base(input_ids=ids.to(self.device), attention_mask=mask, position_ids=pos.to(self.device),
                        use_cache=cache is not None, **{self.cache_kw: cache})
        return out.last_hidden_state, (compat.cache_layers(cache) if keep else None)

    def _mask(self, visible: torch.Tensor) -> torch.Tensor:
        """``[batch, queries, keys]`` booleans -> the model's 4-D mask (additive floats for eager)."""
        mask = visible[:, None].to(self.device)
        if self.float_mask:
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask


def select_executor(model: Any, attention: str, windows: tuple[int | None, ...] = (),
                    layer_types: list[str] | None = None) -> Executor | PlainExecutor:
    """The executor named ``attention`` ("tree", "cache" or "plain"; :mod:`.capabilities` decides
    which one is exact for the model) applying ``windows`` (per layer)."""
    if attention == "tree":
        if not tree_attention.supported(model):
            raise ValueError("tree attention needs a CPU model in sdpa or eager mode and torch's CPU flash kernel")
        return TreeAttentionExecutor(model, windows)
    if attention == "cache":
        return CacheExecutor(model, windows, layer_types)
    if attention == "plain":
        return PlainExecutor(model)
    raise ValueError(f"unknown attention {attention!r}: tree, cache or plain")
