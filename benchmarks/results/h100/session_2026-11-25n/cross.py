"""Graph time of the shipped entry (the ws kernel from 32 key tiles a part), the ws kernel forced and the lockstep
kernel, h = 128 and h = 64 s_q = 2 at s_k = 8192, by batch size (outputs checked against the reference first).

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25n/cross.py
"""
import functools

import triton_mla as tm
from triton_mla.bench import DV, D, _time
from triton_mla.reference import decode_ref


def checked_graph_us(case, s_q, h):
    """The decode call's CUDA-graph time (us) after checking its first two sequences against the reference, and
    the plan's metadata."""
    q, k_cache, block_table, lens = case
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                            softmax_scale=D ** -0.5, causal=s_q > 1)
    out, _ = run()
    sub = min(q.shape[0], 2)
    ref, _ = decode_ref(q[:sub], k_cache, block_table[:sub], lens[:sub], DV, D ** -0.5, s_q > 1)
    err = ((out[:sub].float() - ref).norm() / ref.norm()).item()
    assert err < 1e-2, (q.shape, err)
    return _time(run)[1] * 1e3, md


def main():
    from triton_mla import configs
    from triton_mla.bench import make_decode_case

    print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | {'shipped':>9} {'ws':>9} {'lock':>9} | shipped/lock ws/lock",
          flush=True)
    for h, s_q in [(128, 1), (64, 2)]:
        for s_k in (8192,):
            for b in (1, 8, 16, 32, 64):
                case = make_decode_case(b, s_k, h, s_q, False)
                res = []
                for var in (dict(), dict(WS_MIN_TILES_PER_PART=0), dict(WS=False)):
                    with configs.overridden(**var):
                        us, md = checked_graph_us(case, s_q, h)
                        res.append(us)
                tiles = b * s_k // 64 / md.shape[0]
                print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | {res[0]:9.1f} {res[1]:9.1f} {res[2]:9.1f} | "
                      f"{res[0] / res[2]:12.2f} {res[1] / res[2]:7.2f} (tiles a part {tiles:.1f})", flush=True)


if __name__ == "__main__":
    main()
