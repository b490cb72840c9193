"""Plan once per step, run every layer with the plan (FlashInfer's plan()/run(), nano-vllm's Context).

:class:`MLABackend` is sized at construction (max batch, max tokens, max pages per sequence) and owns the
metadata buffers. :meth:`MLABackend.plan` takes the step's host-side description (new tokens and cached
tokens per sequence, their pages), sends it to the GPU in one pinned, non-blocking copy and derives
``cu_seqlens``, ``positions``, ``slot_mapping``, ``block_table`` and ``cache_seqlens`` there, writing into
those buffers: no host sync, no device allocation. The layers (``triton_mla.layers.MLAAttention``) read
the :class:`AttentionPlan` it returns.
"""

from __future__ import annotations

import torch

from .._checks import check_device, check_int, check_tensor
from .plan import MODES, AttentionPlan

__all__ = ["MLABackend"]


def _as_int_list(values, name):
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point():
            raise TypeError(f"{name}: expected a 1-D integer sequence, got a {values.dtype} tensor of shape "
                            f"{list(values.shape)}")
        return [int(v) for v in values.tolist()]
    if not hasattr(values, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(values).__name__}")
    # Python and NumPy integers alike (a scheduler's arrays hand out np.int64), as Python ints
    return [check_int(v, name) for v in values]


class MLABackend:
    """Metadata planner for paged MLA attention; one per model (all layers share a plan).

    max_batch_size: most sequences in one step (CUDA-graph buckets included).
    max_num_tokens: most tokens in one step (>= max_batch_size).
    max_pages_per_seq: width of the block table; max_pages_per_seq * page_size bounds a sequence's length.
    page_size: tokens per cache page (the cache's ``k_cache.shape[1]``).
    num_blocks: pages in the cache, if known: page ids given as lists are then checked against it.

    Example::

        backend = MLABackend(max_batch_size=8, max_num_tokens=256, max_pages_per_seq=16, page_size=64)
        plan = backend.plan(query_lens=[5, 1], context_lens=[0, 37], block_tables=[[3], [0]])
        out = layer(hidden_states, plan, cache.k_cache(layer_idx))   # hidden_states: (6, hidden)
    """

    def __init__(self, max_batch_size: int, max_num_tokens: int, max_pages_per_seq: int, page_size: int = 64,
                 device="cuda", num_blocks: int | None = None):
        max_batch_size = check_int(max_batch_size, "max_batch_size", low=1)
        max_num_tokens = check_int(max_num_tokens, "max_num_tokens", low=max_batch_size)
        max_pages_per_seq = check_int(max_pages_per_seq, "max_pages_per_seq", low=1)
        page_size = check_int(page_size, "page_size", low=1)
        if num_blocks is not None:
            num_blocks = check_int(num_blocks, "num_blocks", low=1)
        self.max_batch_size, self.max_num_tokens = max_batch_size, max_num_tokens
        self.max_pages_per_seq, self.page_size, self.num_blocks = max_pages_per_seq, page_size, num_blocks
        self.device = check_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        B, T, P = max_batch_size, max_num_tokens, max_pages_per_seq
        i32, i64, dev = torch.int32, torch.int64, self.device
        # what the layers read (plans hand out views of these)
        self.cu_seqlens_q = torch.zeros(B + 1, dtype=i32, device=dev)
        self.cu_seqlens_k = torch.zeros(B + 1, dtype=i32, device=dev)
        self.cache_seqlens = torch.zeros(B, dtype=i32, device=dev)
        self.block_table = torch.zeros(B, P, dtype=i32, device=dev)
        self.positions = torch.zeros(T, dtype=i64, device=dev)
        self.slot_mapping = torch.full((T,), -1, dtype=i64, device=dev)
        # scratch: the host's description lands in _stage ([q_lens | context_lens | block table rows])
        self._stage = torch.zeros(2 * B + B * P, dtype=i64, device=dev)
        self._cu_q64 = torch.zeros(B + 1, dtype=i64, device=dev)
        self._seq = torch.zeros(T, dtype=i64, device=dev)
        self._tmp = torch.zeros(T, dtype=i64, device=dev)
        self._tmp32 = torch.zeros(T, dtype=i32, device=dev)
        self._tokens = torch.arange(T, dtype=i64, device=dev)
        self._pin = self.device.type == "cuda"

    # -- host side ------------------------------------------------------------------------------------------
    def _check(self, q, c, rows, b, pad_to, mode, table_width=None):
        """``rows``: the block tables as lists, or None for a tensor table of ``table_width`` columns."""
        if len(c) != b:
            raise ValueError(f"context_lens: expected {b} values (one per sequence of query_lens), got {len(c)}")
        if any(v < 0 for v in q):
            raise ValueError(f"query_lens: lengths must be >= 0, got {min(q)}")
        if any(v < 0 for v in c):
            raise ValueError(f"context_lens: lengths must be >= 0, got {min(c)}")
        if b > self.max_batch_size:
            raise ValueError(f"query_lens: {b} sequences, more than max_batch_size {self.max_batch_size}")
        if pad_to is not None:
            pad_to = check_int(pad_to, "pad_to", low=b, high=self.max_batch_size)
            if any(v != 1 for v in q):
                raise ValueError("pad_to: only decode steps (every query_len 1) are padded to a batch bucket")
            if mode not in (None, "decode"):
                # extend's checks refuse the padding rows (a token, no key); prefill gives them non-zero output
                raise ValueError(f"pad_to: only decode steps are padded to a batch bucket, got mode {mode!r}")
        total = sum(q) + ((pad_to or b) - b)
        if total > self.max_num_tokens:
            raise ValueError(f"query_lens: {total} tokens, more than max_num_tokens {self.max_num_tokens}")
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES} or None, got {mode!r}")
        if mode == "decode" and any(v != 1 for v in q):
            raise ValueError("mode: 'decode' needs one new token per sequence (every query_len 1)")
        if mode == "prefill" and any(v != 0 for v in c):
            raise ValueError("mode: 'prefill' needs sequences with no cached prefix (every context_len 0)")
        ps, P = self.page_size, self.max_pages_per_seq
        # whatever form the table takes: a position past it would be clamped onto another token's slot
        for i in range(b):
            if q[i] + c[i] > P * ps:
                raise ValueError(f"context_lens: sequence {i} holds {q[i] + c[i]} tokens, more than "
                                 f"max_pages_per_seq * page_size = {P * ps}")
        if rows is None:
            # columns past the tensor's are zeroed: a token there would get a slot in page 0
            for i in range(b):
                if q[i] + c[i] > table_width * ps:
                    raise ValueError(f"block_tables: sequence {i} holds {q[i] + c[i]} tokens, more than the "
                                     f"table's {table_width} pages of {ps}")
            return
        if len(rows) != b:
            raise ValueError(f"block_tables: expected {b} rows (one per sequence), got {len(rows)}")
        for i, row in enumerate(rows):
            need = -(-(q[i] + c[i]) // ps)
            if len(row) < need:
                raise ValueError(f"block_tables: sequence {i} needs {need} pages for {q[i] + c[i]} tokens, "
                                 f"got {len(row)}")
            if len(row) > P:
                raise ValueError(f"block_tables: sequence {i} lists {len(row)} pages, more than max_pages_per_seq "
                                 f"{P}")
            high = self.num_blocks if self.num_blocks is not None else float("inf")
            if any(not 0 <= p < high for p in row[:need]):
                # checked even with num_blocks unknown: a negative page gives negative slots (-1: never written)
                bad = next(p for p in row[:need] if not 0 <= p < high)
                raise ValueError(f"block_tables: page id {bad} of sequence {i} out of range [0, {high})")

    def plan(self, query_lens, context_lens, block_tables, *, pad_to: int | None = None,
             mode: str | None = None) -> AttentionPlan:
        """Plan one step; returns an :class:`AttentionPlan` of views into this backend's buffers.

        query_lens: (b,) new tokens per sequence (host ints, a list or a CPU tensor); they are packed in
        this order, so the step's hidden states are (sum(query_lens), hidden).
        context_lens: (b,) tokens each sequence already has in the cache (its prefix).
        block_tables: b lists of page ids (each covering context_len + query_len tokens), or a (b, w) int32
        tensor with w <= max_pages_per_seq (on the device: copied as is, not checked).
        pad_to: decode steps only (mode None or "decode"): pad the batch with empty rows up to this bucket size
        (CUDA graphs).
        Padding rows have one token each, cache_seqlens 0 (their attention output is 0) and slot -1.
        mode: None picks "decode" when every query_len is 1, "prefill" when every context_len is 0,
        "extend" otherwise; "extend" can be forced (it handles every batch).

        The previous plan's tensors are overwritten: run the layers of a step before planning the next.
        """
        q = _as_int_list(query_lens, "query_lens")
        c = _as_int_list(context_lens, "context_lens")
        b = len(q)
        table_tensor = isinstance(block_tables, torch.Tensor)
        rows = None
        if table_tensor:
            check_tensor(block_tables, "block_tables", ndim=2, dtype=torch.int32)
            if block_tables.shape[0] != b or block_tables.shape[1] > self.max_pages_per_seq:
                raise ValueError(f"block_tables: expected shape [{b}, <= {self.max_pages_per_seq}], got "
                                 f"{list(block_tables.shape)}")
        else:
            if not hasattr(block_tables, "__iter__"):
                raise TypeError(f"block_tables: expected b lists of page ids or a tensor, got "
                                f"{type(block_tables).__name__}")
            rows = [_as_int_list(r, "block_tables") for r in block_tables]
        self._check(q, c, rows, b, pad_to, mode, block_tables.shape[1] if table_tensor else None)
        if mode is None:
            mode = "decode" if all(v == 1 for v in q) else "prefill" if all(v == 0 for v in c) else "extend"
        b_pad = b if pad_to is None else pad_to
        n_pad = b_pad - b
        T = sum(q)
        T_pad = T + n_pad
        P = self.max_pages_per_seq

        # -- one host -> device copy: [q_lens | context_lens | block table rows] ---------------------------
        host = q + [1] * n_pad + c + [0] * n_pad
        if rows is not None:
            for row in rows:
                host.extend(row)
                host.extend([0] * (P - len(row)))
            host.extend([0] * (n_pad * P))
        if b_pad:
            staged = torch.tensor(host, dtype=torch.int64)
            if self._pin:
                staged = staged.pin_memory()
            self._stage[: len(host)].copy_(staged, non_blocking=True)
        if table_tensor and b:
            self.block_table[:b, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
            self.block_table[:b, block_tables.shape[1]:].zero_()
            self.block_table[b:b_pad].zero_()
        self._derive(b, b_pad, T, T_pad, from_stage=rows is not None)
        return AttentionPlan(
            mode=mode, num_seqs=b_pad, num_tokens=T_pad, num_real_seqs=b, num_real_tokens=T,
            max_seqlen_q=max(q + [1] * min(n_pad, 1), default=0),
            max_seqlen_k=max((x + y for x, y in zip(q, c, strict=True)), default=0),
            cu_seqlens_q=self.cu_seqlens_q[: b_pad + 1], cu_seqlens_k=self.cu_seqlens_k[: b_pad + 1],
            positions=self.positions[:T_pad], slot_mapping=self.slot_mapping[:T_pad],
            block_table=self.block_table[:b_pad], cache_seqlens=self.cache_seqlens[:b_pad], page_size=self.page_size,
        )

    # -- device side ----------------------------------------------------------------------------------------
    def _derive(self, b, b_pad, T, T_pad, from_stage):
        """cu_seqlens, cache_seqlens, positions and slots from the staged lengths; in place, no allocation."""
        if b_pad == 0:
            return
        P, ps = self.max_pages_per_seq, self.page_size
        q_lens = self._stage[:b_pad]
        ctx = self._stage[b_pad: 2 * b_pad]
        if from_stage:
            self.block_table[:b_pad].copy_(self._stage[2 * b_pad: 2 * b_pad + b_pad * P].view(b_pad, P))
        seqlens = self.cache_seqlens[:b_pad]
        seqlens.copy_(q_lens)
        seqlens.add_(ctx)
        seqlens[b:].zero_()  # padding rows see no keys
        torch.cumsum(seqlens, 0, out=self.cu_seqlens_k[1: b_pad + 1])
        torch.cumsum(q_lens, 0, out=self._cu_q64[1: b_pad + 1])
        self.cu_seqlens_q[1: b_pad + 1].copy_(self._cu_q64[1: b_pad + 1])
        if T_pad == 0:
            return
        tokens = self._tokens[:T_pad]
        seq = self._seq[:T_pad]
        tmp = self._tmp[:T_pad]
        pos = self.positions[:T_pad]
        slot = self.slot_mapping[:T_pad]
        # token t belongs to the sequence whose [cu_q[i], cu_q[i + 1]) holds it
        torch.searchsorted(self._cu_q64[1: b_pad + 1], tokens, right=True, out=seq)
        seq.clamp_(max=b_pad - 1)
        torch.index_select(ctx, 0, seq, out=pos)
        torch.index_select(self._cu_q64, 0, seq, out=tmp)
        pos.add_(tokens).sub_(tmp)  # position = context_len + (t - first token of the sequence)
        # slot = block_table[seq, pos // page_size] * page_size + pos % page_size
        torch.div(pos, ps, rounding_mode="floor", out=tmp)
        tmp.clamp_(max=P - 1)
        torch.add(tmp, seq, alpha=P, out=tmp)
        torch.index_select(self.block_table.view(-1), 0, tmp, out=self._tmp32[:T_pad])
        slot.copy_(self._tmp32[:T_pad])
        slot.mul_(ps)
        torch.remainder(pos, ps, out=tmp)
        slot.add_(tmp)
        if T_pad > T:
            slot[T:].fill_(-1)  # padding tokens are never written to the cache
            pos[T:].zero_()
