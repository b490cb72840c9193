"""Model layers over the functional core: DeepSeek MLA attention (``MLAAttention``), its rope, tensor parallelism.

Layers know nothing of Triton: they call the library's public functions (decode, extend, prefill,
cache writes) with the per-step :class:`triton_mla.serving.AttentionPlan`.
"""

from .mla import MLAAttention, RMSNorm
from .rope import RotaryEmbedding, apply_rope, rope_frequencies, softmax_scale, yarn_get_mscale
from .tp import shard_heads

__all__ = [
    "MLAAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rope",
    "rope_frequencies",
    "shard_heads",
    "softmax_scale",
    "yarn_get_mscale",
]
