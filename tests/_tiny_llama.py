"""A tiny random-weight Llama for fast code-path checks of the LLM parts (adapt, causal and grad features).

Real architecture and code paths, no download: three layers of width 32 by default, so top-layer adapters sit
over a frozen prefix, and weights large enough (``initializer_range=0.2``) that a few LoRA steps move the logits.
"""

from __future__ import annotations


def tiny_llama(vocab_size: int, *, layers: int = 3, seed: int = 0):
    """``LlamaForCausalLM`` in eval mode, weights drawn from ``seed`` in a forked torch RNG."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()
