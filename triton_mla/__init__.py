"""triton-mla: MLA (Multi-head Latent Attention) inference kernels in Triton.

Public API (FlashMLA-compatible where FlashMLA has the function):
    get_mla_metadata, flash_mla_with_kvcache        decode over a paged latent cache (bf16/fp16/fp32 or FP8;
                                                    sparse with indices=...)
    flash_mla_sparse_fwd                            sparse (DSA) prefill
    mla_prefill_mha                                 MHA-mode varlen prefill (d_qk 192, d_v 128)
    mla_extend, decompress_kv                       absorbed chunked prefill over the paged cache; MHA-mode K/V
    PagedLatentCache, PageAllocator, write_kv_cache   the paged latent cache (dtype="fp8": 656 B/token)
    quantize_latent, dequantize_latent, tokens_that_fit   the FP8 layout and memory accounting
    MLAAttention, MLABackend                        the layer and the plan-once serving backend
Hugging Face: ``triton_mla.integrations.transformers.patch_model`` (needs transformers).
"""

from .api import FlashMLASchedMeta, MLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from .cache import PageAllocator, PagedLatentCache, write_kv_cache
from .extend import DecompressedKV, decompress_kv, mla_extend
from .fp8 import cache_bytes_per_token, dequantize_latent, quantize_latent, tokens_that_fit
from .layers import MLAAttention
from .prefill import mla_prefill_mha
from .serving import DecodeGraphs, MLABackend
from .sparse import flash_mla_sparse_fwd, sparse_decode

__version__ = "0.2.0"

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "FlashMLASchedMeta",
    "MLASchedMeta",
    "flash_mla_sparse_fwd",
    "sparse_decode",
    "mla_prefill_mha",
    "mla_extend",
    "decompress_kv",
    "DecompressedKV",
    "PageAllocator",
    "PagedLatentCache",
    "write_kv_cache",
    "quantize_latent",
    "dequantize_latent",
    "cache_bytes_per_token",
    "tokens_that_fit",
    "MLAAttention",
    "MLABackend",
    "DecodeGraphs",
    "__version__",
]
