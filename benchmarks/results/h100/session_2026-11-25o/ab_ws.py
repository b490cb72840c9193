"""The ws decode before this session (edcf273: one extra pair step a segment) against the new one (the last pair
finished after the loop), both forced at every batch size, beside the lockstep kernel; CUDA-graph times, each output
checked against the reference first. From the repo root (the old kernel comes from git):

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/ab_ws.py

(The run on the device imported the old file from a copy placed in the package; same code.)
"""
import importlib
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
from cross import checked_graph_us  # noqa: E402

import triton_mla.kernels as kernels_pkg  # noqa: E402
from triton_mla import configs  # noqa: E402
from triton_mla.bench import make_decode_case  # noqa: E402
from triton_mla.kernels import decode_sm90, decode_sm90_ws  # noqa: E402


def kernel_at(rev):
    """``_decode_ws_kernel`` of kernels/decode_sm90_ws.py at git revision ``rev``, imported beside the package's
    modules (its relative imports resolve there; the file is removed again after the import)."""
    name = f"decode_sm90_ws_{rev}"
    path = Path(kernels_pkg.__file__).parent / f"{name}.py"
    path.write_text(subprocess.check_output(["git", "show", f"{rev}:triton_mla/kernels/decode_sm90_ws.py"], text=True))
    try:
        return importlib.import_module(f"triton_mla.kernels.{name}")._decode_ws_kernel
    finally:
        path.unlink()


def ab_table(old_kernel, new_kernel, shapes, checked_graph_us):
    """Graph times of the call with ``old_kernel`` and ``new_kernel`` as the ws kernel (alternated twice, both
    forced at every batch size) and with the lockstep kernel; ``checked_graph_us(case, s_q, h)`` checks the output
    and times the call."""
    print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | {'old':>8} {'new':>8} {'old':>8} {'new':>8} {'lock':>8} | "
          "new/old new/lock", flush=True)
    try:
        for b, s_k, h, s_q in shapes:
            case = make_decode_case(b, s_k, h, s_q, False)
            res = []
            for kern in (old_kernel, new_kernel, old_kernel, new_kernel, None):
                decode_sm90._decode_ws_kernel = kern or new_kernel
                with configs.overridden(**(dict(WS=False) if kern is None else dict(WS_MIN_TILES_PER_PART=0))):
                    res.append(checked_graph_us(case, s_q, h)[0])
            old, new = min(res[0], res[2]), min(res[1], res[3])
            print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | " + " ".join(f"{r:8.1f}" for r in res) +
                  f" | {new / old:7.3f} {new / res[4]:7.3f}", flush=True)
    finally:
        decode_sm90._decode_ws_kernel = decode_sm90_ws._decode_ws_kernel


SHAPES = [(1, 8192, 128, 1), (8, 8192, 128, 1), (8, 8192, 64, 2), (16, 8192, 128, 1), (32, 8192, 128, 1),
          (64, 8192, 128, 1), (128, 8192, 128, 1), (128, 8192, 128, 2), (128, 4096, 128, 1), (128, 8192, 64, 2),
          (128, 8192, 64, 4)]

if __name__ == "__main__":
    ab_table(kernel_at("edcf273"), decode_sm90_ws._decode_ws_kernel, SHAPES, checked_graph_us)
