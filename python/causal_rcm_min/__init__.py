"""Minimal causal-rCM: a synthetic video world, a causal video DiT on ``jfa.attention``,
flow-matching teachers, a streaming KV-cache sampler and download-free metrics."""
