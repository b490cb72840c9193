"""A varlen prefill batch through each form of the sm90 Gluon kernel, for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 benchmarks/explore/memcheck_prefill_sm90.py

Queries 300 / 1 / 130 / 0 / 77 against keys 300 / 9 / 200 / 5 / 77 (longer prefixes, an empty sequence, a last
tile past the keys), 8 query heads on 2 K/V heads, causal and not.
"""

import torch

from triton_mla import configs
from triton_mla.prefill import mla_prefill_mha

FORMS = [dict(WGMMA_BLOCK_N=128, WGMMA_STAGES=2), dict(WGMMA_BLOCK_N=64, WGMMA_STAGES=3)]


def main():
    torch.manual_seed(0)
    lens_q, lens_k = [300, 1, 130, 0, 77], [300, 9, 200, 5, 77]
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens_q), 8, 192, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(sum(lens_k), 2, 192, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(sum(lens_k), 2, 128, device="cuda", dtype=torch.bfloat16)
    for form in FORMS:
        for causal in (True, False):
            with configs.overridden(WGMMA=True, **form):
                mla_prefill_mha(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal)
    torch.cuda.synchronize()
    print("memcheck case done")


if __name__ == "__main__":
    main()
