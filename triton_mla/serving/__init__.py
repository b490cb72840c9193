"""Serving backend: plan a step's batch once on the GPU, run every layer with it, replay decode as CUDA graphs.

``MLABackend.plan(...)`` -> ``AttentionPlan`` (the layers' per-step metadata, views of preallocated buffers);
``DecodeGraphs`` captures a decode step per batch-size bucket and replays it with new lengths and block tables.
"""

from .backend import MLABackend
from .graphs import DecodeGraphs, compiled_kernel_count
from .plan import AttentionPlan

__all__ = ["AttentionPlan", "DecodeGraphs", "MLABackend", "compiled_kernel_count"]
