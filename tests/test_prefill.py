"""MLA prefill in MHA mode (``mla_prefill_mha``) against ``reference.varlen_attention_ref``.

CPU runs use the Triton interpreter with fp16/fp32 and few tokens (small tiles are forced to get many
blocks per sequence); GPU runs use bf16, DeepSeek's 192/128 head dims and long sequences. Every case:
fresh random inputs, NaN in the packed tensors' rows outside [cu_seqlens[0], cu_seqlens[-1]) and in
their unused columns, the output poisoned with NaN before the call.
"""

import itertools

import pytest
import torch
from conftest import CPU_DTYPES, DEVICE, HAS_GPU, assert_close, gpu

from triton_mla import configs
from triton_mla.prefill import mla_prefill_mha
from triton_mla.reference import varlen_attention_ref

# tiles small enough that a few dozen tokens span several query and key blocks
SMALL_TILES = dict(BLOCK_M=16, BLOCK_N=16)


def _cu(lens, lead):
    return torch.tensor([lead + c for c in itertools.accumulate([0] + list(lens))], dtype=torch.int32)


def _packed(total, h, d, dtype, g, lead, tail, spare_cols=0, token_gap=1):
    """Random [total, h, d] rows between NaN rows (``lead`` before, ``tail`` after), seen through a
    view whose token stride is ``token_gap`` rows and whose head rows have ``spare_cols`` NaN columns."""
    n = lead + total + tail
    buf = torch.full((n * token_gap, h, d + spare_cols), float("nan"), dtype=dtype)
    x = buf[::token_gap, :, :d]
    x[lead:lead + total] = torch.randn(total, h, d, generator=g).to(dtype)
    return x


def make_case(lens_q, lens_k, h, d_qk=192, d_v=128, h_kv=None, dtype=torch.float16, seed=0, lead=3, tail=5,
              strided=False, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    h_kv = h_kv or h
    cu_q, cu_k = _cu(lens_q, lead), _cu(lens_k, lead)
    extra = dict(spare_cols=8, token_gap=2) if strided else {}
    q = _packed(sum(lens_q), h, d_qk, dtype, g, lead, tail, **extra)
    k = _packed(sum(lens_k), h_kv, d_qk, dtype, g, lead, tail, **extra)
    v = _packed(sum(lens_k), h_kv, d_v, dtype, g, lead, tail, **extra)
    return [t.to(device) for t in (q, k, v, cu_q, cu_k)]


def _reference(q, k, v, cu_q, cu_k, softmax_scale=None, causal=True):
    """float64 on the CPU; float32 on the GPU, where 128 heads of 3000 tokens would not fit the host's time."""
    if q.device.type == "cuda":
        return varlen_attention_ref(q, k, v, cu_q, cu_k, softmax_scale, causal, dtype=torch.float32)
    return varlen_attention_ref(q, k, v, cu_q, cu_k, softmax_scale, causal)


def check_prefill(lens_q, lens_k=None, h=2, d_qk=192, d_v=128, h_kv=None, dtype=torch.float16, causal=True,
                  softmax_scale=None, seed=0, strided=False, max_seqlen_q=None, **tiles):
    lens_k = lens_q if lens_k is None else lens_k
    q, k, v, cu_q, cu_k = make_case(lens_q, lens_k, h, d_qk, d_v, h_kv, dtype, seed, strided=strided)
    max_q = max(lens_q, default=0) if max_seqlen_q is None else max_seqlen_q
    with configs.overridden(**tiles):
        out, lse = mla_prefill_mha(q, k, v, cu_q, cu_k, max_q, max(lens_k, default=0), softmax_scale=softmax_scale,
                                   causal=causal)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == (q.shape[0], h, d_v) and lse.shape == (h, q.shape[0])
    ref_out, ref_lse = _reference(q, k, v, cu_q, cu_k, softmax_scale, causal)
    lo, hi = int(cu_q[0]), int(cu_q[-1])
    assert_close(out[lo:hi], ref_out[lo:hi], dtype)
    assert_close(lse[:, lo:hi], ref_lse[:, lo:hi], torch.float32 if dtype == torch.float32 else torch.float16,
                 "lse")
    return out, lse


# every floating torch.empty the library makes is NaN-filled (conftest.poison_empty)
pytestmark = pytest.mark.usefixtures("poison_empty")


# -- lengths and masks ------------------------------------------------------------------------------
LENGTHS = [
    ([1], None),
    ([0, 5], None),
    ([15, 16, 17], None),
    ([33, 1, 0, 48], None),
    ([20, 3], [45, 60]),  # a decompressed prefix: keys before the queries
    ([20, 9, 4], [7, 0, 4]),  # fewer keys than queries: the early rows see nothing (out 0, lse +inf)
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lens_q,lens_k", LENGTHS)
def test_lengths(lens_q, lens_k, causal, dtype):
    check_prefill(lens_q, lens_k, h=2, dtype=dtype, causal=causal, **SMALL_TILES)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (16, 32), (32, 16), (64, 16), (16, 64)])
def test_tiles(block_m, block_n):
    """Query and key blocks of different heights, both ways round (the causal range split)."""
    check_prefill([63, 64, 65, 2], [63, 80, 65, 40], h=1, BLOCK_M=block_m, BLOCK_N=block_n, seed=block_m + block_n)


def test_shipped_cpu_config():
    """The interpreter's default tiles (the 99 KB family's), one sequence across block edges."""
    check_prefill([130, 1, 64], h=2)


@pytest.mark.parametrize("h", [1, 3, 8, 12, 16, 128])
def test_head_counts(h):
    check_prefill([9, 20], h=h, seed=h, **SMALL_TILES)


@pytest.mark.parametrize("d_qk,d_v", [(192, 128), (128, 128), (64, 64), (96, 64), (256, 256), (200, 100),
                                      (80, 48), (72, 8), (16, 1), (256, 128)])
def test_head_dims(d_qk, d_v):
    """Powers of two, a second QK part of 32/16/8 dims padded to 16, and v wider or narrower than 128."""
    check_prefill([19, 7], [30, 7], h=2, d_qk=d_qk, d_v=d_v, **SMALL_TILES)


def test_head_dims_fp32():
    check_prefill([19, 7], [30, 7], h=2, d_qk=96, d_v=40, dtype=torch.float32, **SMALL_TILES)


def test_grouped_kv_heads():
    check_prefill([17, 30], [40, 30], h=8, h_kv=2, **SMALL_TILES)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_strided_views(dtype):
    """Token strides of two rows and head rows wider than the head dim (views into bigger buffers)."""
    check_prefill([21, 4], [30, 4], h=3, dtype=dtype, strided=True, **SMALL_TILES)


def test_softmax_scale_and_larger_max_seqlen():
    check_prefill([10, 31], h=2, softmax_scale=0.3, max_seqlen_q=100, **SMALL_TILES)


@pytest.mark.parametrize("scale", [-0.4, 0.0])
def test_negative_and_zero_softmax_scale(scale):
    """The row max of unmasked tiles is taken before scaling: a negative scale must flip it to the row min."""
    check_prefill([40, 33], [40, 50], h=2, softmax_scale=scale, causal=False, **SMALL_TILES)
    check_prefill([40, 33], [40, 50], h=2, softmax_scale=scale, **SMALL_TILES)


@pytest.mark.parametrize("causal", [True, False])
def test_tensor_descriptors(causal):
    """The TMA path (host tensor descriptors; the interpreter runs them too), masks included."""
    check_prefill([40, 3, 0, 17], [55, 0, 2, 17], h=2, causal=causal, TMA=True, **SMALL_TILES)


def test_out_and_lse_buffers():
    q, k, v, cu_q, cu_k = make_case([12, 5], [12, 5], 2)
    out = torch.full((q.shape[0], 2, 128), float("nan"), dtype=q.dtype, device=q.device)
    lse = torch.full((2, q.shape[0]), float("nan"), device=q.device)
    with configs.overridden(**SMALL_TILES):
        got = mla_prefill_mha(q, k, v, cu_q, cu_k, 12, 12, out=out, lse=lse)
    assert got[0] is out and got[1] is lse
    ref_out, ref_lse = _reference(q, k, v, cu_q, cu_k)
    assert_close(out[3:20], ref_out[3:20], q.dtype)
    assert_close(lse[:, 3:20], ref_lse[:, 3:20], torch.float16, "lse")


@pytest.mark.parametrize("causal", [True, False])
def test_strided_cu_seqlens(causal):
    """cu_seqlens views with stride 2 (e.g. a column of a larger metadata tensor): the kernels read them densely,
    so they used to see every other offset."""
    q, k, v, cu_q, cu_k = make_case([9, 20, 5], [30, 20, 5], 2, d_qk=64, d_v=32)
    cu_q2 = torch.stack([cu_q, cu_q + 100], 1).reshape(-1)[::2]
    cu_k2 = torch.stack([cu_k, cu_k * 0], 1).reshape(-1)[::2]
    with configs.overridden(**SMALL_TILES):
        out, lse = mla_prefill_mha(q, k, v, cu_q2, cu_k2, 20, 30, causal=causal)
    ref_out, ref_lse = _reference(q, k, v, cu_q, cu_k, causal=causal)
    assert_close(out[3:37], ref_out[3:37], q.dtype)
    assert_close(lse[:, 3:37], ref_lse[:, 3:37], torch.float16, "lse")


def test_empty_batch():
    q, k, v, cu_q, cu_k = make_case([], [], 2)
    out, lse = mla_prefill_mha(q, k, v, cu_q[:1], cu_k[:1], 0, 0)
    assert out.shape == (q.shape[0], 2, 128) and lse.shape == (2, q.shape[0])


# -- bad input --------------------------------------------------------------------------------------
def _valid():
    q, k, v, cu_q, cu_k = make_case([10, 20], [10, 20], 2, d_qk=64, d_v=32, lead=0, tail=0)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=20, max_seqlen_k=20)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"].to(torch.int32)), TypeError, "q"),
        (lambda a: a.update(q=a["q"][0]), ValueError, "q"),
        (lambda a: a.update(q=a["q"][:, :, :8], k=a["k"][:, :, :8]), ValueError, "q"),
        (lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "q"),
        (lambda a: a.update(k=a["k"].float()), TypeError, "k"),
        (lambda a: a.update(k=a["k"][..., :48]), ValueError, "k"),
        (lambda a: a.update(v=a["v"][:-1]), ValueError, "v"),
        (lambda a: a.update(k=a["k"][:, :1], v=a["v"][:, :1]), None, None),  # one KV head for two: fine
        (lambda a: a.update(q=a["q"].repeat(1, 3, 1)[:, :3], k=a["k"][:, :2], v=a["v"][:, :2]), ValueError, "k"),
        (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].long()), TypeError, "cu_seqlens_q"),
        (lambda a: a.update(cu_seqlens_k=a["cu_seqlens_k"][:2]), ValueError, "cu_seqlens_k"),
        (lambda a: a.update(max_seqlen_q=20.0), TypeError, "max_seqlen_q"),
        (lambda a: a.update(max_seqlen_q=19), ValueError, "max_seqlen_q"),
        (lambda a: a.update(max_seqlen_k=-1), ValueError, "max_seqlen_k"),
        (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].flip(0).contiguous()), ValueError, "cu_seqlens_q"),
        (lambda a: a.update(cu_seqlens_k=a["cu_seqlens_k"] + 5), ValueError, "cu_seqlens_k"),
        (lambda a: a.update(softmax_scale="0.1"), TypeError, "softmax_scale"),
        (lambda a: a.update(softmax_scale=float("inf")), ValueError, "softmax_scale"),
        (lambda a: a.update(causal=1), TypeError, "causal"),
        (lambda a: a.update(causal="yes"), TypeError, "causal"),
        (lambda a: a.update(out=torch.empty(30, 2, 16, dtype=a["q"].dtype)), ValueError, "out"),
        (lambda a: a.update(lse=torch.empty(30, 2)), ValueError, "lse"),
    ],
)
def test_bad_input(mutate, exc, match):
    args = _valid()
    mutate(args)
    if exc is None:
        mla_prefill_mha(**args)
        return
    with pytest.raises(exc, match=match):
        mla_prefill_mha(**args)


def test_grid_limits_rejected_before_launch():
    """Heads and sequences sit on grid axes 1 and 2, which CUDA caps at 65535: a clear error, not a failed launch."""
    n = 65536
    cu = torch.arange(n + 1, dtype=torch.int32, device=DEVICE)
    q = torch.randn(n, 1, 16, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        mla_prefill_mha(q, q, q, cu, cu, 1, 1)
    q = torch.randn(1, n, 16, dtype=torch.float16, device=DEVICE)
    k = q[:, :1]
    cu = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="q: at most 65535 heads"):
        mla_prefill_mha(q, k, k, cu, cu, 1, 1)


def test_bad_device():
    if not HAS_GPU:
        pytest.skip("needs a CUDA device beside the CPU")
    args = _valid()
    args["k"] = args["k"].cpu()
    with pytest.raises(ValueError, match="k"):
        mla_prefill_mha(**args)


def test_out_of_range_offsets_clamped_without_checks(monkeypatch):
    """Without TRITON_MLA_CHECK, offsets beyond the tensors must not read or write out of bounds."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k, v, cu_q, cu_k = make_case([10, 20], [10, 20], 2, lead=0, tail=0)
    cu_q = torch.tensor([0, 10, 10**6], dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([-50, 10**6, 5], dtype=torch.int32, device=q.device)
    with configs.overridden(**SMALL_TILES):
        out, lse = mla_prefill_mha(q, k, v, cu_q, cu_k, 32, 32)
    assert not torch.isnan(out.float()).any() and not torch.isnan(lse).any()


# -- GPU -------------------------------------------------------------------------------------------
def _gpu_lens(seed, n, hi):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, hi, (n,), generator=g).tolist()


# the sm90 Gluon kernel (kernels/prefill_sm90.py) in each of its forms, and the tl.dot kernel; off sm90 every
# entry runs the tl.dot kernel
SM90_VARIANTS = {
    "tl.dot": dict(WGMMA=False),
    "wgmma-n128": dict(WGMMA=True, WGMMA_BLOCK_N=128, WGMMA_STAGES=2),
    "wgmma-n64": dict(WGMMA=True, WGMMA_BLOCK_N=64, WGMMA_STAGES=3),
}


@gpu
@pytest.mark.parametrize("variant", list(SM90_VARIANTS))
@pytest.mark.parametrize("h", [1, 8, 12, 16, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_bf16_deepseek(h, causal, variant):
    lens_q = [0, 1, 63, 64, 65, 127, 128, 129, 1000] + _gpu_lens(h, 5, 3000)
    lens_k = [n + extra for n, extra in zip(lens_q, [5, 0, 0, 1, 64, 300, 0, 2, 24] + [0, 7, 1000, 3, 0],
                                            strict=True)]
    check_prefill(lens_q, lens_k, h=h, dtype=torch.bfloat16, causal=causal, seed=h, **SM90_VARIANTS[variant])


@gpu
@pytest.mark.parametrize("variant", list(SM90_VARIANTS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_grouped_heads_and_short_keys(variant, dtype):
    """Grouped K/V heads, keys fewer than queries (rows that see nothing), a sequence of no keys."""
    check_prefill([200, 130, 7, 129], [260, 3, 0, 129], h=8, h_kv=2, dtype=dtype, **SM90_VARIANTS[variant])
    check_prefill([200, 130, 7, 129], [260, 3, 0, 129], h=8, h_kv=2, dtype=dtype, causal=False,
                  **SM90_VARIANTS[variant])
    check_prefill([300, 64], [400, 64], h=4, dtype=dtype, softmax_scale=-0.05, **SM90_VARIANTS[variant])


@gpu
@pytest.mark.parametrize("tma", [False, True])
def test_gpu_tma_and_pointer_paths(tma):
    """Both load paths (TMA needs sm90+; elsewhere the flag falls back to pointers)."""
    check_prefill([300, 1, 77, 2048], [300, 9, 100, 2048], h=16, dtype=torch.bfloat16, TMA=tma)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_other_dtypes(dtype):
    check_prefill([513, 70, 1], [600, 70, 1], h=4, dtype=dtype)


@gpu
@pytest.mark.parametrize("d_qk,d_v", [(128, 128), (64, 64), (256, 256), (96, 64), (200, 100)])
def test_gpu_head_dims(d_qk, d_v):
    check_prefill([300, 129], [400, 129], h=4, d_qk=d_qk, d_v=d_v, dtype=torch.bfloat16)


@gpu
def test_gpu_long_sequence():
    check_prefill([16384], h=2, dtype=torch.bfloat16)


@gpu
def test_gpu_strided_views():
    check_prefill([700, 33], [900, 33], h=8, dtype=torch.bfloat16, strided=True)


@gpu
def test_gpu_cuda_graph_replay_new_lengths(monkeypatch):
    """Captured once, replayed with new cu_seqlens (same total, max_seqlen_q fixed) in the same buffers."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")  # value checks sync, which a capture forbids
    q, k, v, cu_q, cu_k = make_case([300, 5, 1000], [300, 5, 1000], 16, dtype=torch.bfloat16, lead=0, tail=0)
    run = lambda: mla_prefill_mha(q, k, v, cu_q, cu_k, 1305, 1305)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run()
    for step, lens in enumerate([[1000, 300, 5], [0, 1305, 0], [1, 1, 1303]]):
        cu = _cu(lens, 0).to("cuda")
        cu_q.copy_(cu)
        cu_k.copy_(cu)
        q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(step)).to(q.dtype))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = _reference(q, k, v, cu_q, cu_k)
        assert_close(out, ref_out, torch.bfloat16)
        assert_close(lse, ref_lse, torch.bfloat16, "lse")


@gpu
def test_gpu_no_host_sync(monkeypatch):
    q, k, v, cu_q, cu_k = make_case([100, 200], [100, 200], 16, dtype=torch.bfloat16)
    mla_prefill_mha(q, k, v, cu_q, cu_k, 200, 200)
    torch.cuda.synchronize()
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    torch.cuda.set_sync_debug_mode("error")
    try:
        mla_prefill_mha(q, k, v, cu_q, cu_k, 200, 200)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
def test_gpu_beyond_2_31_elements():
    """A packed tensor whose element offsets overflow int32 (about 4.5 GB of bf16 per tensor)."""
    h, d = 128, 192
    total = (1 << 31) // (h * d) + 300
    q = torch.zeros(total, h, d, dtype=torch.bfloat16, device="cuda")
    k = torch.zeros(total, h, d, dtype=torch.bfloat16, device="cuda")
    v = torch.zeros(total, h, 128, dtype=torch.bfloat16, device="cuda")
    lo = total - 200
    for t in (q, k, v):
        t[lo:] = torch.randn(200, h, t.shape[2], dtype=torch.bfloat16, device="cuda")
    # one sequence of 200 tokens that starts past 2**31 elements
    cu = torch.tensor([lo, total], dtype=torch.int32, device="cuda")
    out, lse = mla_prefill_mha(q, k, v, cu, cu, 200, 200)
    local = torch.tensor([0, 200], dtype=torch.int32, device="cuda")
    ref_out, ref_lse = _reference(q[lo:], k[lo:], v[lo:], local, local)
    assert_close(out[lo:], ref_out, torch.bfloat16)
    assert_close(lse[:, lo:], ref_lse, torch.bfloat16, "lse")
