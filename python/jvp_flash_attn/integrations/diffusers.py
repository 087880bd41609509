"""jvp_flash_attn's attention inside diffusers' Wan video transformer (WanTransformer3DModel).

``apply(transformer, mask_for)`` swaps the processor of every WanAttention module for one
that keeps diffusers' projections, q/k norms and RoPE tables and runs ``jfa.attention``:
masked in self-attention, unmasked in cross-attention (text, and image tokens for I2V). The
whole model is then differentiable by ``backward()``, ``torch.func.jvp`` and
``torch.autograd.forward_ad``. ``remove(transformer)`` puts diffusers' processors back.

diffusers' blocks call self-attention with ``attention_mask=None``, so the mask travels with
the RoPE pair instead: a forward hook on ``transformer.rope`` (which sees the latents' shape)
builds the mask once per forward and attaches it to the (cos, sin) pair that diffusers hands
to every self-attention call. Activation checkpointing keeps that pair for its recompute, so
the mask cannot go stale between forward and backward.

``teacher_forcing(transformer, clean, noisy, timestep, encoder_hidden_states)`` runs the
[clean | noisy] packing of causal video distillation: both copies along frames, the noisy copy
at the clean copy's RoPE positions, a timestep per token.
"""
from __future__ import annotations

import functools

import torch

try:
    from diffusers.models.transformers.transformer_wan import (
        WanAttention, WanRotaryPosEmbed, _get_added_kv_projections, _get_qkv_projections)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("jvp_flash_attn.integrations.diffusers needs diffusers >= 0.35 (its Wan "
                      "transformer): pip install 'jvp-flash-attn[diffusers]'") from e

from ..api import attention
from ..masks import SegmentMask

_ATTR = "_jvp_flash_attn"
_TEXT_TOKENS = 512  # diffusers' Wan I2V: the last 512 context tokens are text, the rest image


class _State:
    """What apply() installed on one transformer, and the mode of the call in flight."""

    def __init__(self, mask_for, backend, originals, hook):
        self.mask_for, self.backend = mask_for, backend
        self.originals, self.hook = originals, hook
        self.packed, self.call_mask_for = False, None


class _RotaryWithMask(tuple):
    """diffusers' (cos, sin) RoPE pair, carrying this forward's self-attention mask."""

    def __new__(cls, pair, mask):
        obj = super().__new__(cls, pair)
        obj.mask = mask
        return obj


def _rotate(x, cos, sin):
    """diffusers' Wan RoPE (interleaved pairs), written without in-place writes."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).type_as(x)


class JfaWanAttnProcessor:
    """WanAttnProcessor with ``jfa.attention`` in place of diffusers' attention dispatch."""

    def __init__(self, state: _State):
        self._state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        if attention_mask is not None:
            raise ValueError("attention_mask must be None: with jvp_flash_attn's processors the "
                             "self-attention mask comes from apply(transformer, mask_for)")
        backend = self._state.backend
        image = None
        if attn.add_k_proj is not None:  # I2V: image tokens first, then text
            n = encoder_hidden_states.shape[1] - _TEXT_TOKENS
            image, encoder_hidden_states = encoder_hidden_states[:, :n], encoder_hidden_states[:, n:]
        mask = None
        if encoder_hidden_states is None:
            mask = getattr(rotary_emb, "mask", None)
            if mask is None:
                raise RuntimeError("self-attention reached without its mask: call the transformer "
                                   "itself (its rope hook builds the mask), not its blocks alone")
        q, k, v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        if rotary_emb is not None:
            q, k = _rotate(q, *rotary_emb), _rotate(k, *rotary_emb)
        out = attention(q, k, v, mask=mask, backend=backend).flatten(2, 3).type_as(q)
        if image is not None:
            ki, vi = _get_added_kv_projections(attn, image)
            ki, vi = attn.norm_added_k(ki).unflatten(2, (attn.heads, -1)), vi.unflatten(2, (attn.heads, -1))
            out = out + attention(q, ki, vi, backend=backend).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _rope_hook(state: _State, rope, args, output):
    """Builds this forward's mask from the latents' shape and attaches it to the RoPE pair;
    for a packed [clean | noisy] call, gives both copies the clean copy's positions."""
    latents = args[0]
    p_t, p_h, p_w = rope.patch_size
    frames = latents.shape[2] // p_t
    tokens = (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
    if state.packed:
        frames //= 2
        half = rope.forward(latents[:, :, : latents.shape[2] // 2])
        output = tuple(torch.cat([f, f], dim=1) for f in half)
    mask_for = state.mask_for if state.call_mask_for is None else state.call_mask_for
    mask = mask_for(frames, tokens) if callable(mask_for) else mask_for
    n = output[0].shape[1]
    if not isinstance(mask, SegmentMask):
        raise TypeError(f"mask_for({frames}, {tokens}) must return a jvp_flash_attn.masks mask, "
                        f"got {type(mask).__name__}")
    if (mask.sq, mask.sk) != (n, n):
        packed = " (teacher forcing: [clean | noisy], each copy of num_frames frames)" if state.packed else ""
        raise ValueError(f"the self-attention mask for num_frames={frames}, tokens_per_frame={tokens} "
                         f"is {mask.sq} x {mask.sk}, but the transformer's sequence has {n} "
                         f"tokens{packed}")
    return _RotaryWithMask(output, mask)


def _check_mask_for(mask_for):
    if not (callable(mask_for) or isinstance(mask_for, SegmentMask)):
        raise TypeError("mask_for must be a callable (num_frames, tokens_per_frame) -> mask or a "
                        f"jvp_flash_attn.masks mask, got {type(mask_for).__name__}")


def apply(transformer, mask_for, backend=None):
    """Install jvp_flash_attn processors on every attention module of ``transformer``.

    mask_for: ``mask_for(num_frames, tokens_per_frame) -> mask`` for self-attention, called once
    per forward with the latent frames and tokens per frame after patching (for a
    ``teacher_forcing`` call: the frames of one copy, and the mask covers both copies); or one
    fixed mask. backend: as in ``jfa.attention``. Calling it again on the same transformer
    changes the mask and backend. Returns the transformer.
    """
    _check_mask_for(mask_for)
    state = getattr(transformer, _ATTR, None)
    if state is not None:
        state.mask_for, state.backend = mask_for, backend
        return transformer
    modules = [m for m in transformer.modules() if isinstance(m, WanAttention)]
    rope = getattr(transformer, "rope", None)
    if not modules or not isinstance(rope, WanRotaryPosEmbed):
        raise TypeError("transformer must be a diffusers WanTransformer3DModel (WanAttention modules "
                        f"and a WanRotaryPosEmbed `rope`), got {type(transformer).__name__}")
    state = _State(mask_for, backend, [(m, m.processor) for m in modules], None)
    state.hook = rope.register_forward_hook(functools.partial(_rope_hook, state))
    processor = JfaWanAttnProcessor(state)
    for m in modules:
        m.set_processor(processor)
    setattr(transformer, _ATTR, state)
    return transformer


def remove(transformer):
    """Restore the processors ``apply`` replaced and remove its hook. Returns the transformer."""
    state = getattr(transformer, _ATTR, None)
    if state is None:
        raise ValueError("transformer has no jvp_flash_attn processors: apply() was not called on it")
    for m, processor in state.originals:
        m.set_processor(processor)
    state.hook.remove()
    delattr(transformer, _ATTR)
    return transformer


def _per_token(name, t, batch, frames, tokens, like):
    """A timestep given per sample or per latent frame, repeated for every token of its frame."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() == 1 and t.shape[0] == batch:
        t = t[:, None].expand(batch, frames)
    if t.shape != (batch, frames):
        raise ValueError(f"{name} must be a number, shape ({batch},) or ({batch}, {frames}) (one per "
                         f"latent frame after patching), got shape {tuple(t.shape)}")
    return t.repeat_interleave(tokens, dim=1)


def teacher_forcing(transformer, clean, noisy, timestep, encoder_hidden_states, clean_timestep=0.0,
                    mask_for=None, **kwargs):
    """The transformer's output for the noisy copy of a [clean | noisy] teacher-forcing pack.

    clean, noisy: (B, C, F, H, W) latents of one shape, packed along frames. The noisy copy gets
    the clean copy's RoPE positions (frame f of either copy sits at frame position f).
    timestep / clean_timestep: the noisy / clean copy's times, each a number, (B,) or
    (B, F / p_t) per latent frame; the transformer receives them per token. mask_for: this
    call's mask (default: the one given to ``apply``), called with the frames of one copy and
    covering both, e.g. ``masks.teacher_forcing``. Other keyword arguments go to the
    transformer. Returns (B, C_out, F, H, W).
    """
    state = getattr(transformer, _ATTR, None)
    if state is None:
        raise ValueError("transformer has no jvp_flash_attn processors: call apply(transformer, mask_for) first")
    if mask_for is not None:
        _check_mask_for(mask_for)
    if clean.dim() != 5 or clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy must be (B, C, F, H, W) latents of one shape, got "
                         f"{tuple(clean.shape)} and {tuple(noisy.shape)}")
    p_t, p_h, p_w = transformer.config.patch_size
    b, _, f, h, w = clean.shape
    if f % p_t:
        raise ValueError(f"clean has {f} frames, not a multiple of the temporal patch size {p_t}")
    frames, tokens = f // p_t, (h // p_h) * (w // p_w)
    like = timestep if isinstance(timestep, torch.Tensor) else clean
    per_token = torch.cat([_per_token("clean_timestep", clean_timestep, b, frames, tokens, like),
                           _per_token("timestep", timestep, b, frames, tokens, like)], dim=1)
    state.packed, state.call_mask_for = True, mask_for
    try:
        out = transformer(torch.cat([clean, noisy], dim=2), per_token, encoder_hidden_states,
                          return_dict=False, **kwargs)[0]
    finally:
        state.packed, state.call_mask_for = False, None
    return out[:, :, f:]
