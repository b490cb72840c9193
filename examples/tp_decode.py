"""Tensor-parallel MLA attention: heads split across ranks, each rank holding the whole latent cache.

    torchrun --nproc-per-node 2 examples/tp_decode.py                  # GPUs (NCCL), DeepSeek-V3's dims
    torchrun --nproc-per-node 2 examples/tp_decode.py --heads 24       # 12 heads per rank: no padding to 16
    torchrun --nproc-per-node 2 examples/tp_decode.py --cpu            # CPU (gloo), tiny dims, interpreter

Every rank builds the same full layer, keeps a copy as the single-GPU reference and shards the other
(``triton_mla.layers.shard_heads``). Both run a prefill, a mixed batch (decode and extend sequences
together) and, on GPUs, a decode step replayed as a CUDA graph (the all-reduce inside the graph); the
sharded outputs must match the single-GPU ones (rel err < 1e-2). On GPUs it then times the decode step at
batch 64, context 4096 (``--batch``, ``--context``), and the all-reduce alone, per rank.
"""

import argparse
import copy
import importlib.util
import math
import os
import sys

import torch

if "--cpu" in sys.argv or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch.distributed as dist  # noqa: E402

from triton_mla.layers import MLAAttention, shard_heads  # noqa: E402
from triton_mla.serving import DecodeGraphs, MLABackend  # noqa: E402

YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)
DSV3 = dict(hidden_size=7168, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
            v_head_dim=128)
TINY = dict(hidden_size=64, q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
            v_head_dim=16)


def build_layer(num_heads, dims, dtype, device, seed=0):
    """The same random full layer on every rank (seeded, made on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    layer = MLAAttention(num_heads=num_heads, rope_parameters=YARN, max_position_embeddings=163840, **dims)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "layernorm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(p.shape[-1])))
    return layer.to(device=device, dtype=dtype)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


class Runner:
    """One layer with its own cache and planner; sequences share page assignments across runners."""

    def __init__(self, layer, num_blocks, page_size, max_batch, max_tokens, max_pages, device):
        width = layer.kv_lora_rank + layer.qk_rope_head_dim
        dtype = layer.o_proj.weight.dtype
        self.layer = layer
        self.k_cache = torch.zeros(num_blocks, page_size, 1, width, dtype=dtype, device=device)
        self.backend = MLABackend(max_batch, max_tokens, max_pages, page_size, device=device)

    def step(self, x, q_lens, ctx, tables):
        plan = self.backend.plan(q_lens, ctx, tables)
        return self.layer(x, plan, self.k_cache)


def check(rank, world, args, device, dtype, dims):
    """Sharded vs full layer: prefill, mixed batch, (GPU) a CUDA-graph decode step. Returns the worst rel err."""
    full = build_layer(args.heads, dims, dtype, device)
    tp = shard_heads(copy.deepcopy(full), rank, world)
    page_size, max_pages = (64, 16) if device.type == "cuda" else (4, 12)
    runners = [Runner(m, 256, page_size, 16, 1024, max_pages, device) for m in (full, tp)]
    gen = torch.Generator().manual_seed(1)
    lens = [37, 1, 130, 9] if device.type == "cuda" else [7, 1, 13, 5]
    free = torch.randperm(256, generator=gen).tolist()
    pages = [[] for _ in lens]
    ctx = [0] * len(lens)

    def grow(q_lens):
        for i, q in enumerate(q_lens):
            while len(pages[i]) * page_size < ctx[i] + q:
                pages[i].append(free.pop())
        x = torch.randn(sum(q_lens), dims["hidden_size"], generator=gen).to(device=device, dtype=dtype)
        outs = [r.step(x, q_lens, ctx, pages) for r in runners]
        for i, q in enumerate(q_lens):
            ctx[i] += q
        return rel_err(outs[1], outs[0])

    worst = grow(lens)  # prefill (MHA)
    if importlib.util.find_spec("triton_mla.extend") is not None:
        worst = max(worst, grow([1, 6, 1, 3]))  # mixed: decode and extend rows together
    elif rank == 0:
        print("triton_mla.extend is not there: mixed batch skipped")
    if device.type == "cuda":
        for i in range(len(lens)):
            while len(pages[i]) * page_size < ctx[i] + 1:
                pages[i].append(free.pop())
        x = torch.randn(len(lens), dims["hidden_size"], generator=gen).to(device=device, dtype=dtype)
        static = torch.zeros(16, dims["hidden_size"], dtype=dtype, device=device)
        outs = []
        for r in runners:
            graphs = DecodeGraphs(r.backend, lambda plan, inp, r=r: r.layer(inp["hidden"], plan, r.k_cache),
                                  {"hidden": static}, batch_sizes=[4, 8])
            graphs.capture()
            outs.append(graphs.run(ctx, pages, hidden=x).clone())
        worst = max(worst, rel_err(outs[1], outs[0]))
    else:
        worst = max(worst, grow([1] * len(lens)))  # eager decode step
    return worst


def time_decode(rank, world, args, device, dtype):
    """Per-rank decode-step time (CUDA graph replay) at batch x context, and the all-reduce alone."""
    tp = shard_heads(build_layer(args.heads, DSV3, dtype, device), rank, world)
    page_size = 64
    pages_per_seq = math.ceil((args.context + 1) / page_size)
    num_blocks = args.batch * pages_per_seq
    k_cache = torch.randn(num_blocks, page_size, 1, 576, dtype=dtype, device=device)
    backend = MLABackend(args.batch, args.batch, pages_per_seq, page_size, device=device)
    static = torch.randn(args.batch, DSV3["hidden_size"], dtype=dtype, device=device)
    graphs = DecodeGraphs(backend, lambda plan, x: tp(x["hidden"], plan, k_cache), {"hidden": static},
                          batch_sizes=[args.batch])
    graphs.capture()
    tables = [list(range(i * pages_per_seq, (i + 1) * pages_per_seq)) for i in range(args.batch)]
    ctx = [args.context] * args.batch

    def timed(fn, reps=50):
        for _ in range(5):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps * 1e3  # us

    graphs.run(ctx, tables)  # plans the step into the captured buffers
    graph, _ = graphs.graphs[args.batch]
    step_us = timed(graph.replay)
    buf = torch.randn(args.batch, DSV3["hidden_size"], dtype=dtype, device=device)
    dist.all_reduce(buf)
    ar_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(ar_graph):
        dist.all_reduce(buf)
    ar_us = timed(ar_graph.replay)
    return step_us, ar_us


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=None, help="query heads (default 128 on GPUs, 24 on CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU, tiny dims, Triton interpreter")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    use_cuda = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        device, dtype, dims = torch.device("cuda", local), torch.bfloat16, DSV3
    else:
        device, dtype, dims = torch.device("cpu"), torch.float32, TINY
    args.heads = args.heads or (128 if use_cuda else 24)
    worst = check(rank, world, args, device, dtype, dims)
    errs = [None] * world
    dist.all_gather_object(errs, worst)
    ok = max(errs) < 1e-2
    if rank == 0:
        print(f"TP={world}, {args.heads} heads ({args.heads // world} per rank), {dtype}, {device.type}: "
              f"sharded vs single-device rel err per rank {[f'{e:.2e}' for e in errs]} -> {'OK' if ok else 'FAIL'}")
    if use_cuda and not args.no_timing:
        step_us, ar_us = time_decode(rank, world, args, device, dtype)
        rows = [None] * world
        dist.all_gather_object(rows, (step_us, ar_us, torch.cuda.get_device_name(device)))
        if rank == 0:
            for r, (s, a, name) in enumerate(rows):
                print(f"rank {r} ({name}): decode step batch {args.batch} context {args.context}: {s:.1f} us "
                      f"(CUDA graph), all-reduce of ({args.batch}, {DSV3['hidden_size']}) bf16 alone {a:.1f} us "
                      f"= {100 * a / s:.1f}% of the step")
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
