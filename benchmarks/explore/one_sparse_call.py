"""One sparse FP8 decode shape (b = 128, s_q = 1, topk = 2048) called a few times, for ncu
(``ncu_sparse_keys_on_m.sh``).

    PYTHONPATH=. python3 benchmarks/explore/one_sparse_call.py [h_q]
"""
import sys

import torch

from triton_mla import bench_sparse as bs


def main():
    h_q = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    q, cache, indices = bs.make_decode_case(128, 1, h_q, 2048, 32768, True, seed=0)
    run = bs._decode_run(q, cache, indices, True)
    for _ in range(4):
        run()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
