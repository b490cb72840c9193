"""Rotary position embedding for MLA's rope dims, with DeepSeek's YaRN scaling, as Hugging Face computes it.

DeepSeek-V2/V3 rotate only the ``qk_rope_head_dim`` (64) dims of each query head and the one shared
rope key. Three layouts exist in Hugging Face's models, and a checkpoint must be run with the one its
model class uses (the dot products q.k are the same, the cached key vectors are not):

* ``"interleaved"`` (DeepseekV2): pairs ``(x0, x1), (x2, x3), ...`` are rotated and stay interleaved;
* ``"deinterleave"`` (DeepseekV3, ``rope_interleave=True``): the same pairs are rotated and written out
  as ``[rotated evens, rotated odds]``;
* ``"half"`` (DeepseekV3, ``rope_interleave=False``): pairs ``(x_i, x_{i + d/2})`` (``rotate_half``).

YaRN (``rope_type="yarn"``) blends interpolated and extrapolated frequencies and scales cos/sin by an
attention factor; DeepSeek also multiplies the softmax scale by ``mscale(factor, mscale_all_dim) ** 2``
(:func:`softmax_scale`).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

LAYOUTS = ("interleaved", "deinterleave", "half")

__all__ = ["LAYOUTS", "RotaryEmbedding", "apply_rope", "rope_frequencies", "softmax_scale", "yarn_get_mscale"]


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """DeepSeek's YaRN magnitude correction: 1 + 0.1 * mscale * ln(scale) for scale > 1."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _positive(value, key) -> float:
    """A rope parameter that must be a positive finite number (a negative YaRN factor gave NaN frequencies)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"rope_parameters: {key!r} must be a positive finite number, got {value!r}")
    return float(value)


def _yarn_factor(params: dict, max_position_embeddings: int | None) -> float:
    """YaRN's ``factor``, or max_position_embeddings / original_max_position_embeddings where it is absent."""
    factor = params.get("factor")
    if factor is not None:
        return factor
    original = params.get("original_max_position_embeddings") or max_position_embeddings
    if not original or not max_position_embeddings:
        raise ValueError("rope_parameters: YaRN needs 'factor', or max_position_embeddings and "
                         "'original_max_position_embeddings' to derive it")
    return max_position_embeddings / original


def softmax_scale(qk_head_dim: int, rope_parameters: dict | None, max_position_embeddings: int | None = None) -> float:
    """qk_head_dim ** -0.5, times mscale(factor, mscale_all_dim) ** 2 under YaRN (DeepSeek's correction).

    qk_head_dim is the naive head dim (qk_nope + qk_rope, 192); absorbed attention keeps this scale.
    max_position_embeddings: derives YaRN's factor where ``factor`` is absent, as :func:`rope_frequencies` does.
    """
    scale = qk_head_dim ** -0.5
    params = rope_parameters or {}
    if params.get("rope_type", params.get("type", "default")) != "default":
        mscale_all_dim = params.get("mscale_all_dim", 0)
        if mscale_all_dim:
            m = yarn_get_mscale(_yarn_factor(params, max_position_embeddings), mscale_all_dim)
            scale = scale * m * m
    return scale


def rope_frequencies(dim: int, rope_parameters: dict | None, max_position_embeddings: int | None = None):
    """Inverse frequencies (dim // 2,) float32 and the attention factor that scales cos and sin.

    rope_parameters: Hugging Face's dict: ``rope_theta`` and ``rope_type`` ("default" or "yarn"; YaRN takes
    ``factor``, ``original_max_position_embeddings``, optional ``beta_fast`` (32), ``beta_slow`` (1),
    ``mscale``, ``mscale_all_dim``, ``attention_factor``, ``truncate`` (True)).
    """
    params = dict(rope_parameters or {})
    base = _positive(params.get("rope_theta", 10000.0), "rope_theta")
    rope_type = params.get("rope_type", params.get("type", "default"))
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if rope_type == "default":
        return 1.0 / pos_freqs, 1.0
    if rope_type != "yarn":
        raise NotImplementedError(f"rope_parameters: rope_type {rope_type!r} is not supported (default, yarn)")
    original = params.get("original_max_position_embeddings") or max_position_embeddings
    if original is None:
        raise ValueError("rope_parameters: YaRN needs original_max_position_embeddings")
    factor = _positive(_yarn_factor(params, max_position_embeddings), "factor")
    original = _positive(original, "original_max_position_embeddings")
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1: keep the original frequency, 0: interpolate by ``factor``
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """Rotate the last dim of ``x`` (..., d) by angles whose cos/sin are (..., d // 2), broadcast over x.

    Computed in float32 (float64 for float64 x), returned in x's dtype. ``layout``: see the module docstring.
    """
    xf = x if x.dtype == torch.float64 else x.float()
    cos, sin = cos.to(xf.dtype), sin.to(xf.dtype)
    if layout == "half":
        x1, x2 = xf.chunk(2, dim=-1)
    else:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
    r1 = x1 * cos - x2 * sin
    r2 = x2 * cos + x1 * sin
    if layout == "interleaved":
        out = torch.stack((r1, r2), dim=-1).flatten(-2)
    else:
        out = torch.cat((r1, r2), dim=-1)
    return out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin of ``positions`` for the rope dims, computed on the fly (no table: any position works, and the
    arithmetic is a few element-wise kernels that a CUDA graph captures)."""

    def __init__(self, dim: int, rope_parameters: dict | None = None, max_position_embeddings: int | None = None,
                 layout: str = "deinterleave"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: rope dims come in pairs, got {dim}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        inv_freq, self.attention_factor = rope_frequencies(dim, rope_parameters, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dim, self.layout = dim, layout

    def forward(self, positions: torch.Tensor):
        """positions: (T,) int. Returns cos, sin: (T, dim // 2) float32, already times the attention factor."""
        freqs = positions[:, None].float() * self.inv_freq.float()
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, d) or (T, h, d); cos/sin from :meth:`forward`."""
        if x.dim() == 3:
            cos, sin = cos[:, None, :], sin[:, None, :]
        return apply_rope(x, cos, sin, self.layout)

    def extra_repr(self):
        return f"dim={self.dim}, layout={self.layout!r}, attention_factor={self.attention_factor:.4g}"
