"""Decode steps captured as CUDA graphs, one per batch-size bucket (nano-vllm's ``capture_cudagraph``).

A bucket's graph reads the backend's metadata buffers and the caller's static inputs at fixed addresses.
Replaying it for a batch of b <= bucket sequences: :meth:`DecodeGraphs.run` plans the step into the same
buffers (padding rows get length 0 and slot -1, so they read and write nothing), copies the new inputs
in and replays. The kernels take lengths and block tables as data and derive their split plan on the
device, so one captured graph is correct for any lengths, and no kernel is compiled per batch size or
sequence length (Triton specializes integer arguments only on ``== 1`` and ``% 16 == 0``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch

from .._checks import check_int, value_checks_enabled
from .backend import MLABackend

__all__ = ["DecodeGraphs", "compiled_kernel_count", "default_batch_sizes"]


def default_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16, up to max_batch_size (which is always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size] + list(range(16, max_batch_size, 16))
    return sorted({*sizes, max_batch_size})


def compiled_kernel_count() -> dict[str, int]:
    """Compiled variants of each Triton kernel of ``triton_mla.kernels`` loaded so far: {name: count}.

    Reads each JIT function's per-device kernel cache (empty under the interpreter). A test compares
    these counts before and after capturing more buckets: they must not grow.
    """
    counts = {}
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("triton_mla.kernels.") or mod is None:
            continue
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", obj)  # autotune / heuristics wrappers hold the JITFunction in .fn
            caches = getattr(fn, "device_caches", None)
            if not isinstance(caches, dict):
                continue
            total = 0
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                total += len(cache) if isinstance(cache, dict) else 0
            counts[f"{mod_name.rsplit('.', 1)[-1]}.{name}"] = total
    return counts


@contextlib.contextmanager
def _value_checks_off():
    """TRITON_MLA_CHECK's value checks read device memory (a sync): not allowed while capturing."""
    if not value_checks_enabled():
        yield
        return
    saved = os.environ["TRITON_MLA_CHECK"]
    os.environ["TRITON_MLA_CHECK"] = "0"
    try:
        yield
    finally:
        os.environ["TRITON_MLA_CHECK"] = saved


class DecodeGraphs:
    """CUDA graphs of a decode step, one per batch-size bucket.

    backend: the :class:`MLABackend` whose buffers the step reads.
    step: ``step(plan, inputs) -> Tensor``: one decode step for ``plan.num_seqs`` sequences (a bucket);
    ``inputs`` maps names to the static input buffers cut to the bucket (first dimension). Whatever it
    launches is captured: layers, projections, the model's head.
    inputs: name -> static buffer with first dimension >= the largest bucket (token ids, hidden states).
    batch_sizes: the buckets (default: 1, 2, 4, 8, then multiples of 16 up to the backend's max batch).

    Example::

        graphs = DecodeGraphs(backend, lambda plan, x: layer(x["hidden"], plan, k_cache),
                              {"hidden": torch.zeros(64, hidden, dtype=torch.bfloat16, device="cuda")})
        graphs.capture()
        out = graphs.run(context_lens, block_tables, hidden=new_hidden)   # (b, hidden)
    """

    def __init__(self, backend: MLABackend, step, inputs: dict, batch_sizes=None):
        if not isinstance(backend, MLABackend):
            raise TypeError(f"backend: expected an MLABackend, got {type(backend).__name__}")
        if batch_sizes is None:
            sizes = default_batch_sizes(backend.max_batch_size)
        else:
            if isinstance(batch_sizes, (str, bytes)) or not hasattr(batch_sizes, "__iter__"):
                raise TypeError(f"batch_sizes: expected a sequence of ints, got {type(batch_sizes).__name__}")
            sizes = sorted({check_int(s, "batch_sizes", low=1, high=backend.max_batch_size) for s in batch_sizes})
            if not sizes:
                raise ValueError("batch_sizes: expected at least one batch size")
        if backend.device.type != "cuda":
            raise ValueError(f"backend: CUDA graphs need a CUDA device, the backend is on {backend.device}")
        for name, buf in inputs.items():
            if not isinstance(buf, torch.Tensor) or buf.shape[0] < sizes[-1]:
                raise ValueError(f"inputs: {name!r} must be a tensor with at least {sizes[-1]} rows (the largest "
                                 "bucket)")
            if buf.device != backend.device:
                raise ValueError(f"inputs: {name!r} is on {buf.device}, the backend on {backend.device}")
        self.backend, self.step, self.inputs, self.batch_sizes = backend, step, dict(inputs), sizes
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def _plan(self, context_lens, block_tables, bucket):
        return self.backend.plan([1] * len(context_lens), context_lens, block_tables, pad_to=bucket, mode="decode")

    def capture(self) -> float:
        """Warm up and capture every bucket, largest first, in one shared memory pool; returns seconds.

        The warm-up runs eagerly (it compiles what is not compiled yet); ``TRITON_MLA_CHECK``'s value checks,
        which sync, are off while capturing.
        """
        start = time.perf_counter()
        # the backend's GPU current throughout: graphs capture (and Triton launches) on the current device
        with torch.cuda.device(self.backend.device):
            self.pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(self.backend.device)
            for bs in reversed(self.batch_sizes):
                plan = self._plan([], [], bs)  # all padding rows: nothing read, nothing written
                views = {k: v[:bs] for k, v in self.inputs.items()}
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # compiles the kernels and warms the libraries outside the capture
                    self.step(plan, views)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with _value_checks_off(), torch.cuda.graph(graph, pool=self.pool):
                    out = self.step(plan, views)
                self.graphs[bs] = (graph, out)
            torch.cuda.synchronize(self.backend.device)
        return time.perf_counter() - start

    def bucket(self, batch_size: int) -> int:
        """The smallest captured bucket holding ``batch_size`` sequences."""
        for s in self.batch_sizes:
            if s >= batch_size:
                return s
        raise ValueError(f"batch_size: {batch_size} is more than the largest bucket {self.batch_sizes[-1]}")

    def run(self, context_lens, block_tables, **inputs) -> torch.Tensor:
        """Replay the decode step for b = len(context_lens) sequences; returns the step's output[:b].

        context_lens: (b,) tokens each sequence has in the cache before this step (the new token goes to
        position context_len). block_tables: as :meth:`MLABackend.plan` (pages for context_len + 1 tokens).
        inputs: new values for the static inputs, (b, ...) each (copied in; rows past b keep stale values,
        which only feed padding rows).
        """
        if not self.graphs:
            raise RuntimeError("run: call capture() first")
        b = len(context_lens)
        bs = self.bucket(max(b, 1))
        self._plan(context_lens, block_tables, bs)
        for name, value in inputs.items():
            if name not in self.inputs:
                raise ValueError(f"inputs: unknown input {name!r}; captured with {sorted(self.inputs)}")
            if value.shape[0] != b:
                raise ValueError(f"inputs: {name!r} has {value.shape[0]} rows for {b} sequences")
            self.inputs[name][:b].copy_(value, non_blocking=True)
        graph, out = self.graphs[bs]
        with torch.cuda.device(self.backend.device):  # (replayed on the current stream of the backend's GPU)
            graph.replay()
        return out[:b]
