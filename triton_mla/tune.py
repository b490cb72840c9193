"""python -m triton_mla tune [--out FILE] [--rows 16,32,64,128] [--seqlen 4096] [--batch 128]

Times candidate decode configs on this GPU, one shape bucket (rows = s_q * h_q) at a time, and writes
a config file for the device: the family file with each bucket's entry replaced by the fastest
candidate. Finished timings go to ``FILE.partial.jsonl`` as they come, so an interrupted run resumes
where it stopped. The package loads the file from ``TRITON_MLA_TUNED_DIR`` (default
``~/.cache/triton_mla``) when its device name matches, and logs which file it loaded.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import sys
from pathlib import Path

import torch

from . import configs

# the search space per bucket, pruned by what ran on an H100: 4 warps starve 64-row tiles,
# 8 warps waste 16-row tiles, and more than 64 x 64 x 576 of K and Q spills
SPACE = {
    16: dict(BLOCK_H=(16,), BLOCK_N=(32, 64), num_warps=(4,), num_stages=(2, 3), PARTS_PER_SM=(2, 4),
             PREFETCH_PAGES=(False, True)),
    32: dict(BLOCK_H=(16, 32), BLOCK_N=(32, 64), num_warps=(4, 8), num_stages=(2, 3), PARTS_PER_SM=(2,)),
    64: dict(BLOCK_H=(32, 64), BLOCK_N=(32, 64), num_warps=(4, 8), num_stages=(2, 3), PARTS_PER_SM=(1, 2)),
    128: dict(BLOCK_H=(64, 128), BLOCK_N=(16, 32, 64), num_warps=(8,), num_stages=(1, 2), PARTS_PER_SM=(1,),
              ROWS_FIRST=(False, True)),
}


# the Gluon warpgroup-MMA kernel (kernels/decode_sm90.py, sm90 only, 32+ rows): 64 rows and 8 warps are fixed
WGMMA_SPACE = dict(BLOCK_N=((64, 2), (32, 3)), ROWS_FIRST=(False, True))


def candidates(rows: int, sm90: bool = False):
    space = SPACE[min((r for r in SPACE if r >= rows), default=max(SPACE))]
    names = list(space)
    for values in itertools.product(*space.values()):
        cand = dict(zip(names, values, strict=True))
        if cand["BLOCK_H"] >= 64 and cand["num_warps"] == 4:
            continue
        yield dict(max_rows=None, dtype="16bit", **cand, MIN_BLOCKS_PER_PART=max(1, 256 // cand["BLOCK_N"]),
                   WGMMA=False)
    if sm90 and rows >= 32:
        for (block_n, num_buf), rows_first in itertools.product(*WGMMA_SPACE.values()):
            yield dict(max_rows=None, dtype="16bit", BLOCK_H=64, BLOCK_N=block_n, num_warps=8, num_stages=1,
                       PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=256 // block_n, WGMMA=True, NUM_BUF=num_buf,
                       ROWS_FIRST=rows_first)


def _key(rows, cand):
    return json.dumps([rows, {k: cand[k] for k in sorted(cand)}])


def time_candidate(rows, cand, batch, seqlen):
    import triton

    from .api import flash_mla_with_kvcache
    from .bench import make_decode_case

    q, k_cache, block_table, lens = make_decode_case(batch, seqlen, rows, 1, False)
    with configs.overridden(**cand):
        run = functools.partial(flash_mla_with_kvcache, q, k_cache, block_table, lens, 512)
        run()
        torch.cuda.synchronize()
        return triton.testing.do_bench(run, warmup=10, rep=60, return_mode="median") * 1e3


def tuned_path(device_name: str) -> Path:
    return configs.tuned_dir() / (configs.sanitize(device_name) + ".json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m triton_mla tune")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default="16,32,64,128")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=4096)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune needs a CUDA GPU")
        return 1
    name = torch.cuda.get_device_name()
    out = Path(args.out) if args.out else tuned_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.jsonl")
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            rec = json.loads(line)
            done[rec["key"]] = rec["us"]
    bucket_rows = [int(r) for r in args.rows.split(",")]
    best = {}
    with partial.open("a") as log:
        for rows in bucket_rows:
            cands = list(candidates(rows, sm90=torch.cuda.get_device_capability()[0] == 9))
            for i, cand in enumerate(cands):
                key = _key(rows, cand)
                if key not in done:
                    try:
                        done[key] = time_candidate(rows, cand, args.batch, args.seqlen)
                    except Exception as e:  # out of shared memory or registers: not a candidate here
                        done[key] = float("inf")
                        print(f"\n  skipped {cand}: {type(e).__name__}", file=sys.stderr)
                    log.write(json.dumps(dict(key=key, us=done[key])) + "\n")
                    log.flush()
                bar = "#" * (30 * (i + 1) // len(cands))
                print(f"\rrows {rows:>4} [{bar:<30}] {i + 1}/{len(cands)}", end="", flush=True)
                if done[key] < best.get(rows, (float("inf"), None))[0]:
                    best[rows] = (done[key], cand)
            print(f"  best {best[rows][0]:.1f} us: {best[rows][1]}")
    family = configs.family_of(torch.cuda.current_device())
    doc = copy.deepcopy(configs.load_family(family))
    entries = [e for e in doc["decode"] if e["dtype"] != "16bit"]
    bounds = sorted(best)
    for j, rows in enumerate(bounds):
        entries.append(dict(best[rows][1], max_rows=None if j == len(bounds) - 1 else rows))
    doc.update(decode=entries, device=name, tuned_on=f"{name}, b={args.batch}, s_k={args.seqlen}")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
