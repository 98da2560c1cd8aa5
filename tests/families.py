"""Tiny random models of each causal-LM family, saved as local folders (the family matrix's fixtures).

Each is a real transformers model (or, for ``remote``, a modelling file written here and loaded
with ``trust_remote_code``) with hidden size 32-64 and 2-4 layers, seeded, with the test
tokenizer's vocabulary, so real leaderboard prompts tokenize as they would for a real model.
Windows are short (32-48 tokens) so that 25-shot ARC prompts run far past them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Window shorter than every ARC/GSM8K prompt, and one longer than all of them.
SHORT_WINDOW = 40
LONG_WINDOW = 4000

REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class TinyQwenConfig(PretrainedConfig):
    model_type = "tiny_qwen_v1"

    def __init__(self, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 seq_length=4096, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        super().__init__(**kwargs)
'''

# A stand-in for Qwen v1's remote code: its own attention (rotary, fused qkv), its own tuple
# cache, no transformers attention registry, and a forward that ignores ``logits_to_keep``.
REMOTE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_qwen import TinyQwenConfig


def rotate(x, pos, dim):
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=x.device) / dim))
    ang = pos[..., None].float() * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None], torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    a, b = x[..., : dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-b, a], -1) * sin


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.dim = config.hidden_size // self.heads
        self.ln_1 = nn.LayerNorm(config.hidden_size)
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.ln_2 = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, 2 * config.hidden_size), nn.GELU(),
                                 nn.Linear(2 * config.hidden_size, config.hidden_size))

    def forward(self, x, pos, past, mask=None):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(x.shape[-1], dim=-1)
        q, k, v = (z.view(b, t, self.heads, self.dim).transpose(1, 2) for z in (q, k, v))
        q, k = rotate(q, pos, self.dim), rotate(k, pos, self.dim)
        if past is not None:
            k, v = torch.cat([past[0].expand(b, -1, -1, -1), k], 2), torch.cat([past[1].expand(b, -1, -1, -1), v], 2)
        n = k.shape[2]
        if mask is None:
            mask = torch.ones(t, n, dtype=torch.bool, device=x.device).tril(n - t)
        att = (q @ k.transpose(-1, -2)) / self.dim ** 0.5
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x)), (k, v)


class TinyQwenForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyQwenConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None, **kwargs):
        legacy = past_key_values if isinstance(past_key_values, tuple) and past_key_values else None
        start = 0 if legacy is None else legacy[0][0].shape[2]
        pos = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]
        x = self.wte(input_ids)
        presents = []
        for i, block in enumerate(self.h):
            x, kv = block(x, pos, None if legacy is None else legacy[i])
            presents.append(kv)
        logits = self.lm_head(self.ln_f(x))
        return CausalLMOutputWithPast(logits=logits, past_key_values=tuple(presents) if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, **kwargs):
        if isinstance(past_key_values, tuple) and past_key_values:
            input_ids = input_ids[:, past_key_values[0][0].shape[2]:]
        else:
            past_key_values = None
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": True}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs["past_key_values"] = outputs.past_key_values
        return model_kwargs
'''


# A stand-in for the Baichuan / InternLM generation of remote code: its own attention (fused
# projection, its own rotary, position ids and 4-D masks honoured) and its own cache format (a
# tuple of per-layer (keys, values)); a transformers ``Cache`` handed in is read through its
# layers, as such code reads a legacy tuple, so an empty one fails (``IndexError``) and the
# cache it is handed is never extended (it returns its own tuple).
REMOTE_CACHE_MODEL = REMOTE_MODEL.replace(
    "from transformers.modeling_outputs import CausalLMOutputWithPast",
    "from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast") + """

class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        past = past_key_values
        if past is not None and not isinstance(past, tuple):  # a transformers Cache: its layers as a tuple
            past = tuple((layer.keys, layer.values) for layer in past.layers)
        start = past[0][0].shape[2] if past is not None else 0
        if position_ids is None:
            position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None]
        mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        x = self.wte(input_ids)
        presents = []
        for i, block in enumerate(self.h):
            x, kv = block(x, position_ids, None if past is None else past[i], mask)
            presents.append(kv)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(x),
                                       past_key_values=tuple(presents) if use_cache else None)


class TinyCachedForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyQwenConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_decoder(self):
        return self.model

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), past_key_values=out.past_key_values)

    # generate() with its own tuple cache, as the Qwen v1 stand-in
    prepare_inputs_for_generation = TinyQwenForCausalLM.prepare_inputs_for_generation
    _update_model_kwargs_for_generation = TinyQwenForCausalLM._update_model_kwargs_for_generation
"""
#: Where the length-switching rope family switches to its long factors: below every ARC,
#: HellaSwag and GSM8K prompt of the matrix, above the probe's default 64 tokens.
LONGROPE_SWITCH = 256


def _configs(tokenizer: Any) -> dict[str, Any]:
    import transformers as tf

    vocab, bos, eos = len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=False)
    llama_like = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, **common)
    return {
        "llama": tf.LlamaConfig(**llama_like),
        "mistral-short": tf.MistralConfig(sliding_window=SHORT_WINDOW, **llama_like),
        "mistral-long": tf.MistralConfig(sliding_window=LONG_WINDOW, **llama_like),
        "mixtral": tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=None, **llama_like),
        "qwen2": tf.Qwen2Config(**{**llama_like, "num_hidden_layers": 3}, use_sliding_window=True,
                                sliding_window=SHORT_WINDOW, max_window_layers=1),
        "qwen3": tf.Qwen3Config(head_dim=16, **llama_like),
        "gemma": tf.GemmaConfig(head_dim=16, hidden_activation="gelu_pytorch_tanh", **llama_like),
        "gemma2": tf.Gemma2Config(**{**llama_like, "num_hidden_layers": 4}, head_dim=16, sliding_window=SHORT_WINDOW,
                                  final_logit_softcapping=3.0, attn_logit_softcapping=5.0, query_pre_attn_scalar=16),
        "phi": tf.PhiConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                            partial_rotary_factor=0.5, max_position_embeddings=4096, **common),
        "phi3": tf.Phi3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, original_max_position_embeddings=4096,
                      sliding_window=None, **common),
        "falcon": tf.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=True,
                                  num_kv_heads=2, max_position_embeddings=4096, **common),
        "gpt2": tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=4096, **common),
        "gpt_neox": tf.GPTNeoXConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                     max_position_embeddings=4096, rotary_pct=0.5, **common),
        "opt": tf.OPTConfig(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
                            max_position_embeddings=4096, **common),
        "bloom": tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **common),
        "stablelm": tf.StableLmConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=4096, **common),
        "cohere": tf.CohereConfig(logit_scale=0.5, **{**llama_like, "tie_word_embeddings": True}),
        # Phi-3 longrope: short factors up to LONGROPE_SWITCH tokens, long ones for a longer input
        "phi3-longrope": tf.Phi3Config(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, original_max_position_embeddings=LONGROPE_SWITCH, sliding_window=None,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                             "long_factor": [1.0 + i for i in range(8)],
                             "original_max_position_embeddings": LONGROPE_SWITCH}, **common),
        # a state-space model: no attention, no key/value cache (its own recurrent state)
        "mamba": tf.MambaConfig(hidden_size=64, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4,
                                **{k: v for k, v in common.items() if k != "tie_word_embeddings"}),
    }


#: The slowest first (remote code generates without a cache), so a parallel test run starts it early.
FAMILIES = ("remote", "remote-cache", "mamba", "phi3-longrope", "llama", "mistral-short", "mistral-long", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi",
            "phi3", "falcon", "gpt2", "gpt_neox", "opt", "bloom", "stablelm", "cohere")


def _sharpen(model: Any, seed: int) -> None:
    """Larger-than-default weights make a random model's preferences sharp, so predictions and
    greedy texts are decided by clear margins rather than float noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def build_family(name: str, tokenizer: Any, folder: Path, seed: int = 0) -> Path:
    """Save the tiny ``name`` model with ``tokenizer`` to ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if name in ("remote", "remote-cache"):
        cls = "TinyQwenForCausalLM" if name == "remote" else "TinyCachedForCausalLM"
        (folder / "configuration_tiny_qwen.py").write_text(REMOTE_CONFIG)
        (folder / "modeling_tiny_qwen.py").write_text(REMOTE_MODEL if name == "remote" else REMOTE_CACHE_MODEL)
        (folder / "config.json").write_text(json.dumps({
            "architectures": [cls], "model_type": "tiny_qwen_v1",
            "auto_map": {"AutoConfig": "configuration_tiny_qwen.TinyQwenConfig",
                         "AutoModelForCausalLM": f"modeling_tiny_qwen.{cls}"},
            "vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "seq_length": 4096, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "torch_dtype": "float32",
        }))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    else:
        model = AutoModelForCausalLM.from_config(_configs(tokenizer)[name])
    _sharpen(model, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_family(folder: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
