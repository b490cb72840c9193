"""Old combine (ea437ac: one part a step, 512 columns a program, loaded from git) against the new one, with and
without programmatic dependent launch (a ``COMBINE_PDL`` switch in ``kernels/decode.py`` during this session,
removed after this run: within noise); graph time and the combine kernel's time (torch.profiler). From the repo root:

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25n/ab2.py
"""
import functools
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import triton_mla as tm
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.kernels import decode as dk
from triton_mla.kernels import decode_sm90 as ds


def old_combine():
    """``_combine`` of ea437ac's kernels/decode.py (before this session), loaded from git as a package module."""
    src = subprocess.check_output(["git", "show", "ea437ac:triton_mla/kernels/decode.py"], text=True)
    path = Path(tempfile.mkdtemp()) / "decode_ea437ac.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("triton_mla.kernels.decode_ea437ac", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod._combine


new = dk._combine
old = old_combine()


def use(fn):
    dk._combine = fn
    ds._combine = fn

def combine_us(run):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            run()
        torch.cuda.synchronize()
    t = [e.device_time for e in prof.events()
         if e.device_type == torch.autograd.DeviceType.CUDA and "combine" in e.name]
    return sum(t) / max(len(t), 1)

print("shape | new+pdl graph, combine | new | old | new+pdl | new | old", flush=True)
for b, s_k, h, s_q in [(128, 4096, 128, 1), (128, 8192, 128, 1), (128, 4096, 32, 2), (128, 4096, 16, 1),
                       (128, 4096, 64, 2), (8, 8192, 128, 1), (32, 4096, 16, 1), (1, 8192, 128, 1), (1, 8192, 16, 1),
                       (64, 32768, 16, 1)]:
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, False)
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                            softmax_scale=D ** -0.5, causal=s_q > 1)
    cells = []
    for fn, pdl in ((new, True), (new, False), (old, False)) * 2:
        use(fn)
        dk.COMBINE_PDL = pdl
        o1, _ = run()
        cells.append((_time(run)[1] * 1e3, combine_us(run)))
    use(new)
    print(f"b{b} s_k{s_k} h{h} s_q{s_q} | " + " | ".join(f"{g:7.1f} {c:5.1f}" for g, c in cells), flush=True)
