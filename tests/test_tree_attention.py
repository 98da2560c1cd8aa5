"""The engine's tree (slot) attention on the CPU: rows below a shared past equal plain causal
attention, and each branch sees only its own trunk."""
from __future__ import annotations

import math

import pytest


# ---------------------------------------------------------------------------- tree (slot) attention
def _plain_causal(q, k, v):
    """Reference: softmax(q k^T / sqrt(d)) v over the whole sequence, causal, GQA heads repeated."""
    import torch

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n, m = q.shape[2], k.shape[2]  # queries are the last n of m positions
    allowed = torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.fixture(scope="module")
def attention_layer():
    """A real Llama attention layer: the tree attention only reads its ``layer_idx``."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    from evalsuite import compat

    if compat.cpu_flash_attention() is None:
        pytest.skip("this torch has no CPU flash attention: the engine uses plain attention")
    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1)
    return LlamaAttention(config, layer_idx=0)


def test_rows_below_a_shared_past_equal_plain_causal_attention(attention_layer):
    """Two rows share one 5-token past (attended in one kernel call, merged by log-sum-exp); each
    row's 3 own tokens must get exactly the causal attention over past + own tokens."""
    import torch

    from evalsuite.backends.engine.tree_attention import TreeContext, tree_attention

    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, past_len, width = 4, 2, 8, 5, 3
    past_k, past_v = (torch.randn(1, kv_heads, past_len, dim, generator=gen) for _ in range(2))
    q = torch.randn(2, heads, width, dim, generator=gen)
    k, v = (torch.randn(2, kv_heads, width, dim, generator=gen) for _ in range(2))
    ctx = TreeContext(groups=[(torch.tensor([0, 1]), [(past_k, past_v)])], local_mask=None)
    out, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5, evalsuite_tree=ctx)
    assert out.shape == (2, width, heads, dim)  # [batch, width, heads, dim], as transformers expects
    for row in range(2):
        full_k = torch.cat([past_k[0], k[row]], dim=1)[None]
        full_v = torch.cat([past_v[0], v[row]], dim=1)[None]
        expected = _plain_causal(q[row:row + 1], full_k, full_v)[0].transpose(0, 1)
        torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-5)
    # with keep, the layer's past extended by the row's own keys is what a later call attends to
    keep = TreeContext(groups=[(torch.tensor([0]), [(past_k, past_v)])], local_mask=None, keep=True)
    tree_attention(attention_layer, q[:1], k[:1], v[:1], None, scaling=dim ** -0.5, evalsuite_tree=keep)
    (kept_k, kept_v), = keep.kept_past()
    torch.testing.assert_close(kept_k, torch.cat([past_k, k[:1]], dim=2))
    torch.testing.assert_close(kept_v, torch.cat([past_v, v[:1]], dim=2))


def test_slot_mask_lets_each_branch_see_only_its_trunk(attention_layer):
    """One packed row: a 3-token trunk, then two 2-token branches (continuations of one context).
    With the tree mask each branch equals plain causal attention over trunk + that branch alone;
    a plain causal row would let the second branch see the first."""
    import torch

    from evalsuite.backends.engine.tree_attention import TreeContext, tree_attention

    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    trunk, first, second = [0, 1, 2], [3, 4], [5, 6]
    width = 7
    q = torch.randn(1, heads, width, dim, generator=gen)
    k, v = (torch.randn(1, kv_heads, width, dim, generator=gen) for _ in range(2))
    allowed = torch.zeros(width, width, dtype=torch.bool)
    for branch in (first, second):
        for i, pos in enumerate(trunk + branch):
            allowed[pos, (trunk + branch)[:i + 1]] = True
    mask = torch.zeros(width, width).masked_fill_(~allowed, float("-inf"))[None, None]
    out, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5,
                            evalsuite_tree=TreeContext(groups=[], local_mask=mask))
    for branch in (first, second):
        idx = torch.tensor(trunk + branch)
        expected = _plain_causal(q[:, :, idx], k[:, :, idx], v[:, :, idx])[0].transpose(0, 1)
        torch.testing.assert_close(out[0, idx], expected, atol=1e-5, rtol=1e-5)
    causal, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5,
                               evalsuite_tree=TreeContext(groups=[], local_mask=None))
    torch.testing.assert_close(causal[0], _plain_causal(q, k, v)[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(causal[0, second], out[0, second], atol=1e-3)  # the mask did something


