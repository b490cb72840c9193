"""triton-mla: MLA (Multi-head Latent Attention) inference kernels in Triton.

Public API (FlashMLA-compatible where FlashMLA has the function):
    get_mla_metadata, flash_mla_with_kvcache      decode over a paged latent cache
    PagedLatentCache, PageAllocator, write_kv_cache   the paged latent cache
"""

from .api import flash_mla_with_kvcache, get_mla_metadata
from .cache import PageAllocator, PagedLatentCache, write_kv_cache

__version__ = "0.1.0"

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "PageAllocator",
    "PagedLatentCache",
    "write_kv_cache",
    "__version__",
]
