"""DeepSeek-V2/V3 Multi-head Latent Attention as an ``nn.Module`` over the paged latent cache.

Parameter names are Hugging Face's (``q_a_proj``, ``q_a_layernorm``, ``q_b_proj`` or ``q_proj``,
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``), so the state dict of a
``DeepseekV3Attention`` / ``DeepseekV2Attention`` loads as is (``MLAAttention.from_config(config)``).

Per step, each token's latent (``kv_c``, 512, and the rotated rope key ``k_pe``, 64) is written to the
cache, then one of three paths runs (``plan.mode``, from :class:`triton_mla.serving.MLABackend`):

* ``"decode"`` (one new token per sequence): absorbed. ``W_UK`` is folded into the query, so attention
  is MQA over the 576-dim latent (``triton_mla.flash_mla_with_kvcache``), and ``W_UV`` is applied to
  the 512-dim latent output.
* ``"extend"`` (some sequences have a cached prefix and several new tokens): absorbed too, over the
  prefix and the new tokens (``triton_mla.extend.mla_extend``).
* ``"prefill"`` (no prefix): MHA. The new tokens' keys and values are decompressed with ``kv_b_proj``
  (192-dim K, 128-dim V per head) and attend causally (``triton_mla.prefill.mla_prefill_mha``): cheaper
  than absorbed attention when every query sees only new tokens.

The absorbed weights (``W_UK`` as (h, d_nope, r), ``W_UV`` as (h, r, d_v)) are derived from
``kv_b_proj.weight`` on first use and again whenever that weight changes (loading, ``.to()``), never per
step. This module imports only the library's public Python functions, no Triton.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from .. import flash_mla_with_kvcache
from .. import fp8 as _fp8
from ..cache import write_kv_cache
from .rope import LAYOUTS, RotaryEmbedding, softmax_scale

__all__ = ["MLAAttention", "RMSNorm"]

PREFILL_MODES = ("auto", "mha", "absorbed")


def _mha_dims_ok(d_qk, d_v):
    """Whether ``mla_prefill_mha`` takes these head dims."""
    from ..prefill import MAX_HEAD_DIM, MIN_HEAD_DIM_QK

    return MIN_HEAD_DIM_QK <= d_qk <= MAX_HEAD_DIM and d_v <= MAX_HEAD_DIM


class RMSNorm(nn.Module):
    """Hugging Face's DeepSeek RMSNorm: normalize in float32, cast back, then scale by ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _rope_parameters(config) -> dict:
    """The rope dict of a Hugging Face config: ``rope_parameters`` (transformers 5) or ``rope_theta`` +
    ``rope_scaling`` (transformers 4)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


class MLAAttention(nn.Module):
    """DeepSeek MLA attention over a paged latent cache.

    hidden_size: model width (7168 for DeepSeek-V3). num_heads: query heads (128).
    kv_lora_rank: r, latent width (512). qk_nope_head_dim (128), qk_rope_head_dim (64), v_head_dim (128).
    q_lora_rank: low-rank query (1536), or None for a plain ``q_proj`` (DeepSeek-V2-Lite).
    rope_parameters: Hugging Face's dict (``rope_theta``, ``rope_type`` "default" or "yarn", YaRN's
    ``factor``, ``mscale``, ``mscale_all_dim``, ...); YaRN also scales the softmax (``self.scaling``).
    max_position_embeddings: used by YaRN when ``factor`` or ``original_max_position_embeddings`` is absent.
    rope_layout: "deinterleave" (DeepseekV3, rope_interleave=True), "half" (V3, rope_interleave=False) or
    "interleaved" (DeepseekV2): see ``triton_mla.layers.rope``.
    attention_bias: biases on q_a_proj, kv_a_proj_with_mqa and o_proj (as Hugging Face's config).
    prefill_mode: "mha" runs prefill steps in MHA mode, "absorbed" runs them as an extend, "auto" runs MHA where
    its kernel takes the head dims (qk_nope + qk_rope in [16, 256], v_head_dim <= 256), else absorbed.
    The absorbed paths (decode, extend) take kv_lora_rank <= 512 and qk_rope_head_dim <= 128.

    ``forward(hidden_states (T, hidden_size), plan, k_cache) -> (T, hidden_size)``; see :meth:`forward`.
    """

    def __init__(self, hidden_size: int, num_heads: int, kv_lora_rank: int = 512, qk_nope_head_dim: int = 128,
                 qk_rope_head_dim: int = 64, v_head_dim: int = 128, q_lora_rank: int | None = 1536,
                 rope_parameters: dict | None = None, max_position_embeddings: int | None = None,
                 rope_layout: str = "deinterleave", attention_bias: bool = False, norm_eps: float = 1e-6,
                 layer_idx: int = 0, prefill_mode: str = "auto", dtype=None, device=None):
        super().__init__()
        for name, value in dict(hidden_size=hidden_size, num_heads=num_heads, kv_lora_rank=kv_lora_rank,
                                qk_nope_head_dim=qk_nope_head_dim, v_head_dim=v_head_dim).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(qk_rope_head_dim, int) or qk_rope_head_dim < 2 or qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim: expected a positive even int, got {qk_rope_head_dim!r}")
        if q_lora_rank is not None and (isinstance(q_lora_rank, bool) or not isinstance(q_lora_rank, int)
                                        or q_lora_rank < 1):
            raise ValueError(f"q_lora_rank: expected a positive int or None, got {q_lora_rank!r}")
        if prefill_mode not in PREFILL_MODES:
            raise ValueError(f"prefill_mode: expected one of {PREFILL_MODES}, got {prefill_mode!r}")
        if rope_parameters is not None and not isinstance(rope_parameters, Mapping):
            raise TypeError(f"rope_parameters: expected a dict or None, got {type(rope_parameters).__name__}")
        if rope_layout not in LAYOUTS:
            raise ValueError(f"rope_layout: expected one of {LAYOUTS}, got {rope_layout!r}")
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, numbers.Real) or not 0 < norm_eps < math.inf:
            raise ValueError(f"norm_eps: expected a positive finite float, got {norm_eps!r}")
        # the absorbed kernels' latent limits (decode and extend run every config): fail here, not at the first step
        from ..extend import MAX_HEAD_DIM_V, MAX_ROPE_DIM

        if kv_lora_rank > MAX_HEAD_DIM_V:
            raise ValueError(f"kv_lora_rank: at most {MAX_HEAD_DIM_V} is supported, got {kv_lora_rank}")
        if qk_rope_head_dim > MAX_ROPE_DIM:
            raise ValueError(f"qk_rope_head_dim: at most {MAX_ROPE_DIM} is supported, got {qk_rope_head_dim}")
        if prefill_mode == "mha" and not _mha_dims_ok(qk_nope_head_dim + qk_rope_head_dim, v_head_dim):
            from ..prefill import MAX_HEAD_DIM, MIN_HEAD_DIM_QK

            raise ValueError(f"prefill_mode: 'mha' takes qk_nope_head_dim + qk_rope_head_dim in [{MIN_HEAD_DIM_QK}, "
                             f"{MAX_HEAD_DIM}] and v_head_dim <= {MAX_HEAD_DIM}, got "
                             f"{qk_nope_head_dim + qk_rope_head_dim} and {v_head_dim}")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.kv_lora_rank, self.q_lora_rank = kv_lora_rank, q_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.layer_idx, self.prefill_mode = layer_idx, prefill_mode
        self.rope_parameters = dict(rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.max_position_embeddings = max_position_embeddings
        self.scaling = softmax_scale(self.qk_head_dim, self.rope_parameters, max_position_embeddings)
        # tensor parallelism (triton_mla.layers.tp.shard_heads): this rank's heads, o_proj summed over the group
        self.tp_size, self.tp_rank, self.tp_group = 1, 0, None

        kw = dict(dtype=dtype, device=device)
        if q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, num_heads * self.qk_head_dim, bias=False, **kw)
        else:
            self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, bias=attention_bias, **kw)
            self.q_a_layernorm = RMSNorm(q_lora_rank, norm_eps, **kw)
            self.q_b_proj = nn.Linear(q_lora_rank, num_heads * self.qk_head_dim, bias=False, **kw)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, bias=attention_bias, **kw)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, norm_eps, **kw)
        self.kv_b_proj = nn.Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False, **kw)
        self.o_proj = nn.Linear(num_heads * v_head_dim, hidden_size, bias=attention_bias, **kw)
        self.rotary_emb = RotaryEmbedding(qk_rope_head_dim, self.rope_parameters, max_position_embeddings, rope_layout)
        if device is not None:
            self.rotary_emb.to(device)

    @classmethod
    def from_config(cls, config, layer_idx: int = 0, **kwargs) -> MLAAttention:
        """Build from a Hugging Face DeepseekV3Config / DeepseekV2Config (or any object with its fields)."""
        model_type = getattr(config, "model_type", "deepseek_v3")
        if model_type == "deepseek_v2":
            layout = "interleaved"
        else:
            layout = "deinterleave" if getattr(config, "rope_interleave", True) else "half"
        args = dict(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads, kv_lora_rank=config.kv_lora_rank,
            qk_nope_head_dim=config.qk_nope_head_dim, qk_rope_head_dim=config.qk_rope_head_dim,
            v_head_dim=config.v_head_dim, q_lora_rank=config.q_lora_rank, rope_parameters=_rope_parameters(config),
            max_position_embeddings=getattr(config, "max_position_embeddings", None), rope_layout=layout,
            attention_bias=bool(getattr(config, "attention_bias", False)), layer_idx=layer_idx,
        )
        args.update(kwargs)
        return cls(**args)

    # -- weights ----------------------------------------------------------------------------------------------
    def absorbed_weights(self):
        """(W_UK (h, d_nope, r), W_UV (h, r, d_v)): views of ``kv_b_proj.weight``, made at each call.

        Views, not copies kept beside the weight: whatever changes the weight (a load, ``.data.copy_``, an update
        under ``inference_mode``, which leaves no version counter to notice it by) changes them, and a CUDA graph
        captured over a step reads the weight's own memory. ``torch.bmm`` takes both as they are (W_UK row-major,
        W_UV column-major matrices at a batch stride): no copy.
        """
        w = self.kv_b_proj.weight.detach()
        wk = w.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        return wk[:, : self.qk_nope_head_dim], wk[:, self.qk_nope_head_dim:].transpose(1, 2)

    # -- forward ----------------------------------------------------------------------------------------------
    def _check(self, hidden_states, plan, k_cache):
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(f"hidden_states: expected a torch.Tensor, got {type(hidden_states).__name__}")
        if hidden_states.dim() != 2 or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(f"hidden_states: expected shape [T, {self.hidden_size}], got {list(hidden_states.shape)}")
        wdtype = self.kv_a_proj_with_mqa.weight.dtype
        if hidden_states.dtype != wdtype:
            raise TypeError(f"hidden_states: expected dtype {wdtype} (the weights'), got {hidden_states.dtype}")
        for name in ("mode", "num_tokens", "num_seqs", "positions", "slot_mapping", "block_table", "cache_seqlens"):
            if not hasattr(plan, name):
                raise TypeError(f"plan: expected an AttentionPlan (triton_mla.serving), got {type(plan).__name__}")
        if hidden_states.shape[0] != plan.num_tokens:
            raise ValueError(f"hidden_states: the plan has {plan.num_tokens} tokens, got {hidden_states.shape[0]} rows")
        if not isinstance(k_cache, torch.Tensor):
            raise TypeError(f"k_cache: expected a torch.Tensor, got {type(k_cache).__name__}")
        width = self.kv_lora_rank + self.qk_rope_head_dim
        fp8 = k_cache.dtype in (torch.uint8, torch.float8_e4m3fn)
        if k_cache.dim() != 4 or k_cache.shape[2] != 1 or (not fp8 and k_cache.shape[3] != width):
            raise ValueError(f"k_cache: expected [num_blocks, page_size, 1, {width}] (or the FP8 layout), got "
                             f"{list(k_cache.shape)}")
        if not fp8 and k_cache.dtype != hidden_states.dtype:
            raise TypeError(f"k_cache: expected dtype {hidden_states.dtype} (or the FP8 layout), got {k_cache.dtype}")
        if fp8 and (self.kv_lora_rank, self.qk_rope_head_dim) != (_fp8.NOPE_DIM, _fp8.ROPE_DIM):
            raise ValueError(f"k_cache: the FP8 layout holds kv_lora_rank {_fp8.NOPE_DIM} + qk_rope_head_dim "
                             f"{_fp8.ROPE_DIM}, the layer has {self.kv_lora_rank} + {self.qk_rope_head_dim}")
        if fp8 and hidden_states.dtype == torch.float32:
            # checked here, before the step writes the cache: the kernels refuse float32 queries over it
            raise TypeError("k_cache: the FP8 layout is read with bfloat16/float16 queries; the layer is float32 "
                            "(run it in bfloat16 or float16, or use a float32 cache)")
        page_size = getattr(plan, "page_size", None)
        if page_size is not None and k_cache.shape[1] != page_size:
            # slots and block-table pages would address other tokens than the ones attention reads
            raise ValueError(f"k_cache: pages of {k_cache.shape[1]} tokens, but the plan was made for page_size "
                             f"{page_size} (MLABackend's page_size must be the cache's k_cache.shape[1])")
        if k_cache.device != hidden_states.device:
            raise ValueError(f"k_cache: on {k_cache.device}, hidden_states on {hidden_states.device}")
        if plan.mode == "decode" and plan.num_tokens != plan.num_seqs:
            raise ValueError(f"plan: a decode step has one token per sequence, got {plan.num_tokens} tokens for "
                             f"{plan.num_seqs} sequences")
        return fp8

    def forward(self, hidden_states: torch.Tensor, plan, k_cache: torch.Tensor) -> torch.Tensor:
        """One step of attention for a packed batch.

        hidden_states: (T, hidden_size), the weights' dtype; tokens packed as ``plan`` says.
        plan: :class:`triton_mla.serving.AttentionPlan` of this step (positions, slots, block table, lengths).
        k_cache: this layer's cache, (num_blocks, page_size, 1, kv_lora_rank + qk_rope_head_dim) in the
        weights' dtype, or the FP8 layout (num_blocks, page_size, 1, 656) uint8. The new tokens' latents are
        written into it (slot -1: skipped), then attention reads it.
        Returns (T, hidden_size): ``o_proj`` of the attention output (summed over tensor-parallel ranks).
        """
        fp8 = self._check(hidden_states, plan, k_cache)
        T = hidden_states.shape[0]
        if T == 0:
            return hidden_states.new_zeros(0, self.hidden_size)
        h, r, dn, dr = self.num_heads, self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim

        # -- projections --------------------------------------------------------------------------------
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(T, h, self.qk_head_dim)
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        cos, sin = self.rotary_emb(plan.positions)
        q_pe = self.rotary_emb.rotate(q_pe, cos, sin)
        kv_c, k_pe = self._latents(hidden_states, cos, sin)

        # -- attention ----------------------------------------------------------------------------------
        mha = self.prefill_mode == "mha" or (self.prefill_mode == "auto"
                                             and _mha_dims_ok(self.qk_head_dim, self.v_head_dim))
        if plan.mode == "prefill" and mha:
            write_kv_cache(k_cache, kv_c, k_pe, plan.slot_mapping)
            out = self._prefill_mha(q_nope, q_pe, kv_c, k_pe, plan)  # (T, h, d_v)
        else:
            w_uk, w_uv = self.absorbed_weights()
            # q_lat[t, h] = q_nope[t, h] @ W_UK[h]: (h, T, d_nope) @ (h, d_nope, r)
            q_lat = torch.bmm(q_nope.transpose(0, 1), w_uk)
            q_abs = torch.cat((q_lat.transpose(0, 1), q_pe), dim=-1)  # (T, h, r + d_rope)
            # written right before attention reads it: cache write, attention and combine run back to back
            write_kv_cache(k_cache, kv_c, k_pe, plan.slot_mapping)
            if plan.mode == "decode":
                o_lat, _ = flash_mla_with_kvcache(q_abs.view(T, 1, h, r + dr), k_cache, plan.block_table,
                                                  plan.cache_seqlens, r, softmax_scale=self.scaling,
                                                  is_fp8_kvcache=fp8)
            else:
                from ..extend import mla_extend

                o_lat, _ = mla_extend(q_abs, k_cache, plan.block_table, plan.cache_seqlens, plan.cu_seqlens_q,
                                      plan.max_seqlen_q, softmax_scale=self.scaling, is_fp8_kvcache=fp8,
                                      head_dim_v=r)
            # out[t, h] = o_lat[t, h] @ W_UV[h]: (h, T, r) @ (h, r, d_v)
            out = torch.bmm(o_lat.view(T, h, r).transpose(0, 1), w_uv).transpose(0, 1)
        out = self.o_proj(out.reshape(T, h * self.v_head_dim))
        if self.tp_size > 1:
            dist.all_reduce(out, group=self.tp_group)
        return out

    def _latents(self, hidden_states, cos, sin):
        latent = self.kv_a_proj_with_mqa(hidden_states)
        kv_c = self.kv_a_layernorm(latent[:, : self.kv_lora_rank])
        return kv_c, self.rotary_emb.rotate(latent[:, self.kv_lora_rank:], cos, sin)

    def latents(self, hidden_states: torch.Tensor, positions: torch.Tensor):
        """What this layer caches for tokens: (kv_c (T, kv_lora_rank), k_pe (T, qk_rope_head_dim), rotated).

        hidden_states: (T, hidden_size); positions: (T,) int. For filling a cache outside a step.
        """
        for name, x in (("hidden_states", hidden_states), ("positions", positions)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if hidden_states.dim() != 2 or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(f"hidden_states: expected shape [T, {self.hidden_size}], got {list(hidden_states.shape)}")
        wdtype = self.kv_a_proj_with_mqa.weight.dtype
        if hidden_states.dtype != wdtype:
            raise TypeError(f"hidden_states: expected dtype {wdtype} (the weights'), got {hidden_states.dtype}")
        # a (T, 1) or float tensor broadcast into wrong latents without an error
        if positions.is_floating_point() or positions.is_complex() or positions.shape != (hidden_states.shape[0],):
            raise ValueError(f"positions: expected an integer tensor of shape [{hidden_states.shape[0]}], got "
                             f"{positions.dtype} {list(positions.shape)}")
        cos, sin = self.rotary_emb(positions)
        return self._latents(hidden_states, cos, sin)

    def _prefill_mha(self, q_nope, q_pe, kv_c, k_pe, plan):
        """MHA over the new tokens only (no sequence has a prefix): decompress K and V with kv_b_proj."""
        from ..prefill import mla_prefill_mha

        T, h, dn, dv = q_nope.shape[0], self.num_heads, self.qk_nope_head_dim, self.v_head_dim
        kv = self.kv_b_proj(kv_c).view(T, h, dn + dv)
        k = torch.cat((kv[..., :dn], k_pe[:, None, :].expand(T, h, -1)), dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1)
        v = kv[..., dn:]  # token and head strides are free
        out, _ = mla_prefill_mha(q, k, v, plan.cu_seqlens_q, plan.cu_seqlens_q, plan.max_seqlen_q,
                                 plan.max_seqlen_q, softmax_scale=self.scaling, causal=True)
        return out

    def extra_repr(self):
        return (f"heads={self.num_heads}, kv_lora_rank={self.kv_lora_rank}, qk_head_dim={self.qk_nope_head_dim}+"
                f"{self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}, scaling={self.scaling:.4g}, "
                f"tp={self.tp_rank}/{self.tp_size}")
