"""FlashMLA calling conventions around the kernels: metadata styles and argument checks."""

import pytest
import torch
from conftest import DEVICE, assert_close
from test_decode import make_case

import triton_mla as tm
from triton_mla.api import MLASchedMeta
from triton_mla.reference import decode_ref


def test_metadata_with_no_arguments_is_accepted():
    """Newest FlashMLA (and the sparse yardstick) call get_mla_metadata() with nothing."""
    md, num_splits = tm.get_mla_metadata()
    assert isinstance(md, MLASchedMeta) and num_splits is None
    q, k_cache, block_table, cache_seqlens = make_case([5, 17], 1, 3)
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, md, None)
    ref_out, _ = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), 64,
                            dtype=torch.float64)
    assert_close(out, ref_out, q.dtype)


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
