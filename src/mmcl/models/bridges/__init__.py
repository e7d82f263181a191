"""Bridges from mmcl's image towers into Hugging Face causal language models (LLaVA, BLIP-2...):
each wraps a `transformers.AutoModelForCausalLM` as it is, never a re-implementation."""
