"""FlashMLA calling conventions around the kernels: metadata styles and argument checks."""

import pytest
import torch
from conftest import DEVICE, assert_close
from test_decode import make_case

import triton_mla as tm
from triton_mla import configs
from triton_mla import fp8 as fp8_layout
from triton_mla.api import MLASchedMeta
from triton_mla.reference import decode_ref

pytestmark = pytest.mark.usefixtures("poison_empty")


def test_metadata_with_no_arguments_is_accepted():
    """Newest FlashMLA (and the sparse yardstick) call get_mla_metadata() with nothing."""
    md, num_splits = tm.get_mla_metadata()
    assert isinstance(md, MLASchedMeta) and num_splits is None
    q, k_cache, block_table, cache_seqlens = make_case([5, 17], 1, 3)
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, md, None)
    ref_out, _ = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), 64,
                            dtype=torch.float64)
    assert_close(out, ref_out, q.dtype)


def test_flashmla_names_and_keywords():
    """Names and keywords of FlashMLA's releases that engines and FlashMLA's own test helpers use: a
    caller-built FlashMLASchedMeta, the first release's num_heads_per_head_k, the newer enable_batch_invariant,
    and the extra_* cache keywords passed as None (a tensor there is refused, naming it)."""
    q, k_cache, block_table, cache_seqlens = make_case([5, 17], 2, 3)
    want = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, causal=True)
    got = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, tm.FlashMLASchedMeta(), None,
                                    causal=True, extra_k_cache=None, extra_indices_in_kvcache=None,
                                    extra_topk_length=None, enable_batch_invariant=False)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    md, ns = tm.get_mla_metadata(cache_seqlens, num_heads_per_head_k=6, num_heads_k=1)
    got = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, md, ns, causal=True)
    assert torch.equal(want[0], got[0])
    inv = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, causal=True,
                                    enable_batch_invariant=True)
    assert torch.equal(inv[0], tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, causal=True,
                                                         batch_invariant=True)[0])
    with pytest.raises(ValueError, match="extra_k_cache"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, extra_k_cache=k_cache)
    with pytest.raises(TypeError, match="enable_batch_invariant"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, batch_invariant=True,
                                  enable_batch_invariant=True)
    with pytest.raises(TypeError, match="num_heads_per_head_k"):
        tm.get_mla_metadata(cache_seqlens, 6, num_heads_per_head_k=6)


def test_metadata_of_a_wrong_type_is_rejected():
    q, k_cache, block_table, cache_seqlens = make_case([5], 1, 2)
    with pytest.raises(TypeError, match="tile_scheduler_metadata"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, "plan", None)


def test_sparse_only_arguments_need_indices():
    q, k_cache, block_table, cache_seqlens = make_case([5], 1, 2)
    sink = torch.zeros(2, device=DEVICE)
    with pytest.raises(ValueError, match="attn_sink"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, attn_sink=sink)


def test_fp8_bytes_without_the_flag_are_rejected():
    q, _, block_table, cache_seqlens = make_case([5], 1, 2)
    k_cache = torch.zeros(2, 16, 1, 656, dtype=torch.uint8, device=DEVICE)
    with pytest.raises(TypeError, match="is_fp8_kvcache"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64)


@pytest.mark.parametrize("s_q,h_q,causal", [(1, 3, False), (2, 16, True)])
def test_batch_invariant_matches_reference_and_is_bitwise_stable(s_q, h_q, causal):
    lens = [0, 1, 45, 16, 100, 33]
    q, k_cache, block_table, cache_seqlens = make_case(lens, s_q, h_q, seed=3)
    with configs.overridden(INVARIANT_CHUNK_TOKENS=32, BLOCK_N=16):  # several chunks on short inputs
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, causal=causal,
                                             batch_invariant=True)
        ref_out, ref_lse = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), 64,
                                      causal=causal, dtype=torch.float64)
        assert_close(out, ref_out, q.dtype)
        assert_close(lse, ref_lse, q.dtype, "lse")
        # each sequence alone, and inside a batch in another order, gives the same bits
        for i in (2, 4):
            o1, l1 = tm.flash_mla_with_kvcache(q[i:i + 1], k_cache, block_table[i:i + 1], cache_seqlens[i:i + 1],
                                               64, causal=causal, batch_invariant=True)
            assert torch.equal(o1[0], out[i]) and torch.equal(l1[0], lse[i])
        perm = torch.tensor([4, 0, 2], device=q.device)
        o2, _ = tm.flash_mla_with_kvcache(q[perm], k_cache, block_table[perm], cache_seqlens[perm], 64,
                                          causal=causal, batch_invariant=True)
        assert torch.equal(o2[0], out[4]) and torch.equal(o2[2], out[2])


@pytest.mark.parametrize("s_q,h_q,causal", [(1, 3, False), (2, 16, True)])
def test_batch_invariant_fp8_cache(s_q, h_q, causal):
    """The FP8 cache takes batch_invariant too: the invariant kernel's chunks read through decode_fp8's tile read."""
    from test_fp8 import DV, make_fp8_case

    q, k_cache, block_table, cache_seqlens = make_fp8_case([0, 1, 45, 16, 100, 33], s_q, h_q, seed=5)
    with configs.overridden(INVARIANT_CHUNK_TOKENS=32, BLOCK_N=16):  # several chunks on short inputs
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, causal=causal,
                                             is_fp8_kvcache=True, batch_invariant=True)
        kv = fp8_layout.dequantize_latent(k_cache.cpu()).double()
        ref_out, ref_lse = decode_ref(q.cpu(), kv, block_table.cpu(), cache_seqlens.cpu(), DV, causal=causal,
                                      dtype=torch.float64)
        assert_close(out, ref_out, q.dtype)
        assert_close(lse, ref_lse, q.dtype, "lse")
        perm = torch.tensor([4, 0, 2], device=q.device)
        for rows in (torch.tensor([2], device=q.device), perm):
            o, l_ = tm.flash_mla_with_kvcache(q[rows], k_cache, block_table[rows], cache_seqlens[rows], DV,
                                              causal=causal, is_fp8_kvcache=True, batch_invariant=True)
            for j, i in enumerate(rows.tolist()):
                assert torch.equal(o[j], out[i]) and torch.equal(l_[j], lse[i]), (rows, i)


def test_batch_invariant_from_the_environment(monkeypatch):
    from triton_mla.kernels import decode_invariant

    calls = []
    real = decode_invariant.decode_invariant
    monkeypatch.setattr(decode_invariant, "decode_invariant", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("TRITON_MLA_BATCH_INVARIANT", "1")
    q, k_cache, block_table, cache_seqlens = make_case([7, 20], 1, 2)
    tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64)
    assert calls == [1]


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_gpu_batch_invariant_bf16_deepseek():
    """bf16, DeepSeek's latent, varied lengths: a sequence's bits do not depend on its batch."""
    from triton_mla.bench import make_decode_case

    q, k_cache, block_table, lens = make_decode_case(64, 8192, 16, 1, varlen=True, seed=5)
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, batch_invariant=True)
    ref_out, _ = decode_ref(q[:4].cpu(), k_cache.cpu(), block_table[:4].cpu(), lens[:4].cpu(), 512)
    assert_close(out[:4], ref_out, torch.bfloat16)
    for idx in ([0], [3, 1, 0], list(range(63, -1, -2))):
        i = torch.tensor(idx, device=q.device)
        o, l_ = tm.flash_mla_with_kvcache(q[i], k_cache, block_table[i], lens[i], 512, batch_invariant=True)
        assert torch.equal(o, out[i]) and torch.equal(l_, lse[i])


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("h_q,s_q", [(16, 1), (128, 2)])
def test_gpu_batch_invariant_fp8_deepseek(h_q, s_q):
    """bf16 queries over the FP8 cache (quantized from a bf16 one), varied lengths: bits independent of the batch."""
    from triton_mla.bench import make_decode_case

    q, k_bf16, block_table, lens = make_decode_case(16, 4096, h_q, s_q, varlen=True, seed=6)
    k_cache = fp8_layout.quantize_latent(k_bf16[..., :512], k_bf16[..., 512:])
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, causal=True, is_fp8_kvcache=True,
                                         batch_invariant=True)
    kv = fp8_layout.dequantize_latent(k_cache)
    ref_out, _ = decode_ref(q[:2], kv, block_table[:2], lens[:2], 512, causal=True)
    assert_close(out[:2], ref_out, torch.bfloat16)
    for idx in ([0], [3, 1, 0], list(range(15, -1, -2))):
        i = torch.tensor(idx, device=q.device)
        o, l_ = tm.flash_mla_with_kvcache(q[i], k_cache, block_table[i], lens[i], 512, causal=True,
                                          is_fp8_kvcache=True, batch_invariant=True)
        assert torch.equal(o, out[i]) and torch.equal(l_, lse[i])


ENTRY_POINTS = [  # (function, the argument whose GPU the kernels must launch on, its position)
    (tm.get_mla_metadata, "cache_seqlens", 0),
    (tm.flash_mla_with_kvcache, "q", 0),
    (tm.sparse_decode, "q", 0),
    (tm.flash_mla_sparse_fwd, "q", 0),
    (tm.mla_prefill_mha, "q", 0),
    (tm.mla_extend, "q", 0),
    (tm.decompress_kv, "k_cache", 0),
    (tm.write_kv_cache, "k_cache", 0),
]


@pytest.mark.parametrize("fn, name, position", ENTRY_POINTS, ids=[f[0].__name__ for f in ENTRY_POINTS])
@pytest.mark.parametrize("by_keyword", [False, True])
def test_kernels_launch_on_the_tensors_gpu(fn, name, position, by_keyword, monkeypatch):
    """Triton launches on the current CUDA device, so each entry point first makes its tensors' GPU current
    (a model spread over GPUs in one process calls layers on cuda:1 while cuda:0 is current). Faked here: the
    tensors count as on GPU 1 while GPU 0 is current; the call itself fails on its other (missing) arguments,
    after the switch; with GPU 1 current there is no switch."""
    from triton_mla import _checks

    entered = []

    class FakeDeviceContext:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(_checks, "_cuda_index", lambda t: 1 if isinstance(t, torch.Tensor) else None)
    monkeypatch.setattr(torch.cuda, "device", FakeDeviceContext)
    t = torch.zeros(2, dtype=torch.int32)
    args, kwargs = ((None,) * position + (t,), {}) if not by_keyword else ((), {name: t})
    for current, want in ((0, [1]), (1, [])):
        entered.clear()
        monkeypatch.setattr(torch.cuda, "current_device", lambda current=current: current)
        with pytest.raises((TypeError, ValueError)):
            fn(*args, **kwargs)
        assert entered[:1] == want, (current, entered)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_gpu_tensors_on_another_gpu_than_the_current_one():
    """Decode, its plan and a cache write on cuda:1 while cuda:0 is current: right answers, and nothing runs on
    cuda:0 (the kernels would read cuda:1's pointers there)."""
    torch.cuda.set_device(0)
    q, k_cache, block_table, cache_seqlens = make_case([5, 70, 300], 2, 16, device="cuda:1", dtype=torch.bfloat16)
    slots = block_table[1, :2].long() * k_cache.shape[1]  # tokens 0 and 16 of sequence 1
    tm.write_kv_cache(k_cache, torch.randn(2, 64, device="cuda:1", dtype=q.dtype),
                      torch.randn(2, 16, device="cuda:1", dtype=q.dtype), slots)
    md, ns = tm.get_mla_metadata(cache_seqlens, 2 * 16, 1)
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, md, ns, causal=True)
    assert torch.cuda.current_device() == 0 and out.device == torch.device("cuda:1")
    ref_out, ref_lse = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), 64, causal=True,
                                  dtype=torch.float64)
    assert_close(out, ref_out, q.dtype)
    assert_close(lse, ref_lse, q.dtype, "lse")
