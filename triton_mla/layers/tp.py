"""Tensor parallelism for MLAAttention, applied after construction and loading (gpt-fast's ``apply_tp``).

Heads are split across ranks: rank k keeps heads ``[k * h / n, (k + 1) * h / n)`` of ``q_b_proj`` (or
``q_proj``), ``kv_b_proj`` and ``o_proj``'s input columns. The latent path (``q_a_proj``,
``kv_a_proj_with_mqa``, both norms) is replicated, so every rank writes the same latents into its own
full latent cache (MLA has one KV head: there is nothing to split). Each rank's ``o_proj`` gives a partial
sum that ``MLAAttention.forward`` all-reduces over the group. Any head count per rank works (8, 12, ...):
the kernels need no padding to 16.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .mla import MLAAttention

__all__ = ["shard_heads"]


def _keep_rows(linear: nn.Linear, rows: slice):
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone(), requires_grad=linear.weight.requires_grad)
    linear.out_features = linear.weight.shape[0]


def shard_heads(layer: MLAAttention, rank: int | None = None, world_size: int | None = None,
                group=None) -> MLAAttention:
    """Keep this rank's heads of a full (loaded) layer, in place; returns the layer.

    rank, world_size: default to ``torch.distributed``'s for ``group`` (the default group if None).
    num_heads must be a multiple of world_size. o_proj's bias (if any) stays on rank 0 only, so the
    all-reduce adds it once.
    """
    if not isinstance(layer, MLAAttention):
        raise TypeError(f"layer: expected an MLAAttention, got {type(layer).__name__}")
    if layer.tp_size != 1:
        raise ValueError(f"layer: already sharded ({layer.tp_size} ranks)")
    if world_size is None:
        world_size = dist.get_world_size(group)
    if rank is None:
        rank = dist.get_rank(group)
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size}), got {rank!r}")
    if layer.num_heads % world_size:
        raise ValueError(f"world_size: {layer.num_heads} heads do not split evenly over {world_size} ranks")
    h = layer.num_heads // world_size
    lo, hi = rank * h, (rank + 1) * h
    with torch.no_grad():
        q_out = layer.q_proj if layer.q_lora_rank is None else layer.q_b_proj
        _keep_rows(q_out, slice(lo * layer.qk_head_dim, hi * layer.qk_head_dim))
        kv_per_head = layer.qk_nope_head_dim + layer.v_head_dim
        _keep_rows(layer.kv_b_proj, slice(lo * kv_per_head, hi * kv_per_head))
        o = layer.o_proj
        o.weight = nn.Parameter(o.weight.detach()[:, lo * layer.v_head_dim: hi * layer.v_head_dim].clone(),
                                requires_grad=o.weight.requires_grad)
        o.in_features = o.weight.shape[1]
        if o.bias is not None and rank != 0:
            o.bias = None
    layer.num_heads = h
    layer.tp_size, layer.tp_rank, layer.tp_group = world_size, rank, group
    return layer
