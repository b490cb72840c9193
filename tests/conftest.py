"""Shared test setup: the Triton interpreter on CPU-only machines, tolerances, poisoning, comparison."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton.jit
os.environ.setdefault("TRITON_MLA_CHECK", "1")

import pytest  # noqa: E402

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"

# (dtype) -> max relative error ||out - ref|| / ||ref|| against the float32/float64 reference
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
# the interpreter computes bf16 wrongly, so CPU runs use fp16/fp32
CPU_DTYPES = [torch.float16, torch.float32]

gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")


# a whole bf16 model layer (several bf16 matmuls and norms before and after attention) against float64:
# the activations' rounding, not the attention kernels, sets this error (the kernels meet TOLERANCE alone)
LAYER_BF16_TOLERANCE = 5e-2


def assert_close(out, ref, dtype, name="out", tol=None):
    """Inf/NaN positions must match exactly; then relative error below the dtype's tolerance (or ``tol``)."""
    out = out.double().cpu()
    ref = ref.double().cpu()
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN at {torch.nonzero(torch.isnan(out))[:5].tolist()}"
    inf_out, inf_ref = torch.isinf(out), torch.isinf(ref)
    assert torch.equal(inf_out, inf_ref), f"{name}: inf positions differ"
    assert torch.equal(out[inf_out], ref[inf_ref]), f"{name}: inf signs differ"
    fin = ~inf_ref
    diff = (out[fin] - ref[fin]).norm()
    scale = ref[fin].norm()
    rel = (diff / scale).item() if scale > 0 else diff.item()
    limit = TOLERANCE[dtype] if tol is None else tol
    if rel >= limit:
        worst = (out - ref).abs().masked_fill(~fin, 0).argmax()
        idx = list(torch.unravel_index(worst, out.shape))
        raise AssertionError(f"{name}: rel err {rel:.3e} >= {limit:.0e}; worst at "
                             f"{[int(i) for i in idx]}: {out.flatten()[worst]:.6g} vs {ref.flatten()[worst]:.6g}")
    return rel


@pytest.fixture
def poison_empty(monkeypatch):
    """Every floating torch.empty the library makes is filled with NaN, so an element never written fails."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", poisoned)
