"""Tensor parallelism: a layer sharded over 2 ranks (gloo on the CPU, torch.multiprocessing) matches the full layer.

12 heads per rank (24 in all): not a multiple of 16, no padding. Each rank runs the full layer and its
shard on identical sequences and pages (two harnesses with the same seed) and compares.
GPU (NCCL, CUDA graphs, timings): ``torchrun --nproc-per-node 2 examples/tp_decode.py``.
"""

import copy
import importlib.util
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_layer import Harness, make_layer

from triton_mla.layers import shard_heads


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, num_heads):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = make_layer(num_heads, 24, torch.float32, device="cpu", seed=7)
        tp = shard_heads(copy.deepcopy(full))
        assert tp.num_heads == num_heads // world and tp.tp_size == world and tp.tp_rank == rank
        runs = [Harness(layer, device="cpu", seed=3) for layer in (full, tp)]
        steps = [([0, 1, 2], [5, 1, 9]), ([0, 1, 2], [1, 1, 1])]
        if importlib.util.find_spec("triton_mla.extend") is not None:
            steps.append(([0, 1, 2], [1, 4, 1]))  # mixed: decode and extend rows
        for sids, q_lens in steps:
            full_out, _ = runs[0].step(sids, q_lens)
            tp_out, _ = runs[1].step(sids, q_lens)
            err = ((tp_out - full_out).norm() / full_out.norm()).item()
            assert err < 1e-4, f"rank {rank}: rel err {err:.2e} for q_lens {q_lens}"
            # every rank ends with the same (all-reduced) output
            gathered = [torch.empty_like(tp_out) for _ in range(world)]
            dist.all_gather(gathered, tp_out)
            assert all(torch.equal(g, gathered[0]) for g in gathered)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_tp2_gloo_matches_full_layer():
    mp.spawn(_worker, args=(2, _free_port(), 24), nprocs=2, join=True)


def test_shard_heads_slices_each_projection():
    layer = make_layer(6, None, torch.float32, device="cpu")
    shard = shard_heads(copy.deepcopy(layer), rank=1, world_size=3)
    qk, v = layer.qk_head_dim, layer.v_head_dim
    torch.testing.assert_close(shard.q_proj.weight, layer.q_proj.weight[2 * qk: 4 * qk])
    torch.testing.assert_close(shard.kv_b_proj.weight, layer.kv_b_proj.weight[2 * (16 + v): 4 * (16 + v)])
    torch.testing.assert_close(shard.o_proj.weight, layer.o_proj.weight[:, 2 * v: 4 * v])
    torch.testing.assert_close(shard.kv_a_proj_with_mqa.weight, layer.kv_a_proj_with_mqa.weight)
    assert shard.absorbed_weights()[0].shape == (2, 16, 32)
    with_bias = make_layer(4, 24, torch.float32, device="cpu", attention_bias=True)
    assert shard_heads(copy.deepcopy(with_bias), rank=0, world_size=2).o_proj.bias is not None
    assert shard_heads(copy.deepcopy(with_bias), rank=1, world_size=2).o_proj.bias is None  # added once


def test_shard_heads_bad_input():
    layer = make_layer(6, 24, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="world_size"):
        shard_heads(copy.deepcopy(layer), rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        shard_heads(copy.deepcopy(layer), rank=2, world_size=2)
    with pytest.raises(TypeError, match="layer"):
        shard_heads(torch.nn.Linear(2, 2), rank=0, world_size=1)
    once = shard_heads(copy.deepcopy(layer), rank=0, world_size=2)
    with pytest.raises(ValueError, match="already sharded"):
        shard_heads(once, rank=0, world_size=2)
