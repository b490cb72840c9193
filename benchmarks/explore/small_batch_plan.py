"""Dense decode at small batch (b = 1 and 8, s_k = 8192): does another split plan help? CUDA-graph time of the
shipped entries and of plan overrides (``MIN_BLOCKS_PER_PART``: fewest 64-key tiles a part; ``PARTS_PER_SM``).

    PYTHONPATH=. python3 benchmarks/explore/small_batch_plan.py   # H100, ~1 min
"""
import functools

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.reference import decode_ref

VARIANTS = [dict(), dict(MIN_BLOCKS_PER_PART=2), dict(MIN_BLOCKS_PER_PART=1),
            dict(MIN_BLOCKS_PER_PART=1, PARTS_PER_SM=2), dict(MIN_BLOCKS_PER_PART=8)]


def main():
    for b, s_k, h in [(1, 8192, 128), (8, 8192, 128), (1, 8192, 16), (8, 8192, 16)]:
        q, k_cache, block_table, lens = make_decode_case(b, s_k, h, 1, False)
        ref, _ = decode_ref(q, k_cache, block_table, lens, DV, D ** -0.5, False)
        for var in VARIANTS:
            with configs.overridden(**var):
                md, num_splits = tm.get_mla_metadata(lens, h, 1)
                run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md,
                                        num_splits, softmax_scale=D ** -0.5)
                out, _ = run()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                ms, graph_ms = _time(run)
            print(f"b{b} s_k{s_k} h{h} {str(var):<50} parts {md.shape[0]:4d} err {err:.1e} eager {ms * 1e3:7.1f} "
                  f"graph {graph_ms * 1e3:7.1f} us", flush=True)


if __name__ == "__main__":
    main()
