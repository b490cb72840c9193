"""What one step of a batch looks like to the attention layers (nano-vllm's ``Context``).

:class:`triton_mla.serving.MLABackend` builds an :class:`AttentionPlan` once per step; every layer then
runs with it. The tensors are views into buffers the backend allocated at construction, so a CUDA
graph captured with one plan reads the next plan's values at the same addresses.
"""

from __future__ import annotations

import dataclasses

import torch

MODES = ("decode", "prefill", "extend")


@dataclasses.dataclass
class AttentionPlan:
    """One step's batch: b sequences (``num_seqs``, padding rows included) and T tokens (``num_tokens``).

    Tokens are packed sequence after sequence: sequence i owns tokens ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]``,
    which are its positions ``context_len .. context_len + q_len - 1``.
    """

    mode: str  # "decode": one new token per sequence; "prefill": no sequence has a cached prefix; else "extend"
    num_seqs: int  # b, padding rows included (CUDA-graph buckets)
    num_tokens: int  # T, padding tokens included
    num_real_seqs: int  # sequences before the padding rows
    num_real_tokens: int  # tokens before the padding tokens
    max_seqlen_q: int  # longest q_len (host value, for the varlen kernels)
    max_seqlen_k: int  # longest context_len + q_len
    cu_seqlens_q: torch.Tensor  # (b + 1,) int32: token offsets of the sequences
    cu_seqlens_k: torch.Tensor  # (b + 1,) int32: cumulative cache_seqlens
    positions: torch.Tensor  # (T,) int64: position of each token in its sequence (0 for padding)
    slot_mapping: torch.Tensor  # (T,) int64: cache slot page * page_size + offset of each token, -1 for padding
    block_table: torch.Tensor  # (b, max_pages) int32: page ids of each sequence, in order
    cache_seqlens: torch.Tensor  # (b,) int32: context_len + q_len (0 for padding rows)
    page_size: int | None = None  # tokens per page the slots were computed with (the cache's shape[1]); None: unknown

