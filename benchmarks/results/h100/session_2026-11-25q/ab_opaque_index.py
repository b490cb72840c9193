"""The ws kernel with S's tile views indexed through an opaque zero (its shared-memory descriptors made in the pair
loop, not hoisted and spilled: 28 + 6 local loads a pair step -> 0) against the kernel at git HEAD~ (before),
both forced at every batch size, beside the lockstep kernel; CUDA-graph times, outputs checked.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25q/ab_opaque_index.py [rev]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25o"))
from ab_ws import ab_table, kernel_at  # noqa: E402
from cross import checked_graph_us  # noqa: E402

from triton_mla.kernels import decode_sm90_ws  # noqa: E402

SHAPES = [(128, 8192, 128, 1), (128, 4096, 128, 1), (128, 8192, 128, 2), (128, 8192, 64, 2), (64, 8192, 128, 1),
          (128, 8192, 64, 4)]

if __name__ == "__main__":
    ab_table(kernel_at(sys.argv[1] if len(sys.argv) > 1 else "HEAD"), decode_sm90_ws._decode_ws_kernel, SHAPES,
             checked_graph_us)
