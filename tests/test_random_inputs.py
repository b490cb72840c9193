"""Seeded random draws over each entry point's documented input space, checked by the other test files' helpers.

The parametrized tests elsewhere pin the edge cases one at a time; these draw them together (several lengths,
page sizes, head counts, latent sizes, split plans and options in one call), the way a serving engine or an
unseen test would. Each seed is one case, so a failure names the draw that reproduces it. (A larger CPU fuzz run
of the same kind, about 7,800 cases in the eighteenth session, found bugs that the edge tests had missed.)
"""

import random

import pytest
import test_decode as dense
import test_extend as extend
import test_fp8 as fp8
import test_prefill as prefill
import test_sparse as sparse
import torch
from conftest import CPU_DTYPES, HAS_GPU

from triton_mla import configs

DTYPES = [torch.bfloat16, torch.float16] if HAS_GPU else CPU_DTYPES
HEADS = [1, 2, 3, 5, 8, 12, 16, 17, 32, 64, 128]  # what TP makes of 128 (and 64, 12) heads, and odd counts
LATENTS = [(64, 16), (32, 0), (100, 28), (16, 128), (48, 8)]  # (dv, rope dims); DeepSeek's 512 + 64 on the GPU


def _rng(seed, family):
    return random.Random(f"{family}-{seed}")


def _lengths(rng, b, page_size, most=200):
    """Lengths that mix zero, one, page edges and arbitrary values."""
    pick = [0, 1, page_size - 1, page_size, page_size + 1, 2 * page_size, rng.randint(0, most)]
    return [max(0, rng.choice(pick)) for _ in range(b)]


def _heads(rng, rows_cap=128):
    return rng.choice([h for h in HEADS if h <= rows_cap])


@pytest.mark.parametrize("seed", range(12))
def test_random_dense_decode(seed):
    rng = _rng(seed, "decode")
    page_size = rng.choice([1, 3, 16, 64])
    b = rng.randint(1, 5)
    s_q = rng.choice([1, 1, 2, 3])
    dv, dr = rng.choice(LATENTS)
    split = dense.SPLIT_HEAVY if rng.random() < 0.5 else {}
    with configs.overridden(**split):
        dense.check_decode(_lengths(rng, b, page_size), s_q, _heads(rng, 128 // s_q), dv, dr, page_size,
                           rng.choice(DTYPES), causal=rng.random() < 0.5, style=rng.choice(["old", "new", None]),
                           softmax_scale=rng.choice([None, 0.05, 0.3]), seed=seed)


@pytest.mark.parametrize("seed", range(6))
def test_random_fp8_decode(seed):
    rng = _rng(seed, "fp8")
    page_size = rng.choice([1, 16, 64])
    split = fp8.SPLIT_HEAVY if rng.random() < 0.5 else {}
    s_q = rng.choice([1, 2])
    with configs.overridden(**split):
        fp8.check_fp8_decode(_lengths(rng, rng.randint(1, 4), page_size, most=150), s_q, _heads(rng, 64 // s_q),
                             page_size, causal=rng.random() < 0.5, seed=seed, outliers=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(10))
def test_random_sparse_decode(seed):
    rng = _rng(seed, "sparse")
    b, s_q = rng.randint(1, 3), rng.randint(1, 4)
    h_q = _heads(rng)
    topk = rng.choice([1, 7, 63, 64, 65, rng.randint(1, 300)])
    page_size = rng.choice([1, 5, 16, 64])
    dv, dr = rng.choice(LATENTS)
    lens = sink = None
    if rng.random() < 0.5:
        lens = [rng.choice([0, 1, topk, topk + 5, rng.randint(0, topk)]) for _ in range(b)]
    if rng.random() < 0.5:
        sink = [rng.choice([-1.0, 0.5, 2.0, float("inf"), float("-inf")]) for _ in range(h_q)]
    split = sparse.SPLIT_HEAVY if rng.random() < 0.5 else {}
    with configs.overridden(**split):
        sparse.check_decode(b, s_q, h_q, topk, dv, dr, page_size, num_blocks=max(2, 200 // page_size),
                            dtype=rng.choice(DTYPES), seed=seed, pad=rng.choice([0, 3]), topk_length=lens,
                            sink=sink, softmax_scale=rng.choice([None, 0.1]), via_api=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(8))
def test_random_extend(seed):
    rng = _rng(seed, "extend")
    b = rng.randint(1, 4)
    page_size = rng.choice([1, 7, 16, 64])
    q_lens = [rng.choice([0, 1, 1, rng.randint(1, 40)]) for _ in range(b)]
    lens = [q + rng.choice([0, 1, page_size, rng.randint(0, 120)]) for q in q_lens]
    dv, dr = rng.choice(LATENTS)
    extend.check_extend(lens, q_lens, _heads(rng, 32), dv, dr, page_size, rng.choice(DTYPES), seed=seed,
                        softmax_scale=rng.choice([None, 0.2]),
                        max_seqlen_q=max(q_lens) + rng.choice([0, 0, 5]))


@pytest.mark.parametrize("seed", range(8))
def test_random_prefill(seed):
    rng = _rng(seed, "prefill")
    b = rng.randint(1, 4)
    lens_q = [rng.choice([0, 1, 15, 16, 17, rng.randint(1, 90)]) for _ in range(b)]
    lens_k = [n + rng.choice([0, 0, rng.randint(0, 40)]) for n in lens_q]  # a decompressed prefix makes k longer
    h_kv = rng.choice([1, 2])
    d_qk, d_v = rng.choice([(192, 128), (64, 32), (96, 40), (16, 1), (256, 256)])
    prefill.check_prefill(lens_q, lens_k, h=h_kv * rng.choice([1, 2, 3]), d_qk=d_qk, d_v=d_v, h_kv=h_kv,
                          dtype=rng.choice(DTYPES), causal=rng.random() < 0.5,
                          softmax_scale=rng.choice([None, 0.1]), seed=seed,
                          max_seqlen_q=max(lens_q) + rng.choice([0, 0, 7]), **prefill.SMALL_TILES)


@pytest.mark.parametrize("seed", range(8))
def test_random_sparse_prefill(seed):
    rng = _rng(seed, "sparse_prefill")
    s_q = rng.randint(1, 12)
    h_q = _heads(rng, 64 if not HAS_GPU else 128)
    topk = rng.choice([1, 7, 64, 65, rng.randint(1, 300)])
    dv, dr = rng.choice(LATENTS)
    lens = sink = None
    if rng.random() < 0.5:
        lens = [rng.choice([0, 1, topk, topk + 9, rng.randint(0, topk)]) for _ in range(s_q)]
    if rng.random() < 0.5:
        sink = [rng.choice([-1.0, 0.3, 2.0, float("inf"), float("-inf")]) for _ in range(h_q)]
    sparse.check_prefill(s_q, h_q, topk, s_kv=rng.randint(1, 200), dv=dv, dr=dr, dtype=rng.choice(DTYPES),
                         seed=seed, invalid_frac=rng.choice([0.0, 0.2, 0.9]), topk_length=lens, sink=sink,
                         sm_scale=rng.choice([0.05, 0.1, (dv + dr) ** -0.5]))
