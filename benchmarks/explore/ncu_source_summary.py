"""Summarize ncu's per-instruction (SASS) source page: where the warps stall, which instructions cause
shared-memory excess wavefronts, samples by opcode and by stall reason (``ncu_source.sh`` writes the CSV).

    python3 benchmarks/explore/ncu_source_summary.py NAME.csv [top-N] [--range LO-HI ...]

``--range`` (hex SASS addresses, low 20 bits) adds the share of samples between two addresses, e.g. a copy
issue found in the top list.
"""

import collections
import csv
import sys


def num(row, ix, key):
    try:
        return float(row[ix[key]])
    except (KeyError, ValueError):
        return 0.0


def main(path, top=40, ranges=()):
    rows = list(csv.reader(open(path)))
    hdr, data = rows[1], rows[2:]
    ix = {h: i for i, h in enumerate(hdr)}
    samples = "Warp Stall Sampling (All Samples)"
    excess = "L1 Wavefronts Shared Excessive"
    total = sum(num(r, ix, samples) for r in data) or 1.0
    print(f"{path}: {len(data)} SASS instructions, {total:.0f} samples, "
          f"{sum(num(r, ix, excess) for r in data):.0f} shared excess wavefronts")
    print("--- most shared excess wavefronts (wavefronts / ideal per executed instruction)")
    for r in sorted(data, key=lambda r: -num(r, ix, excess))[:12]:
        if num(r, ix, excess) == 0:
            break
        n = num(r, ix, "Instructions Executed") or 1.0
        print(f"{r[0][-5:]} {num(r, ix, 'L1 Wavefronts Shared') / n:5.1f} / "
              f"{num(r, ix, 'L1 Wavefronts Shared Ideal') / n:4.1f}  {r[1].strip()[:90]}")
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    by_op, executed, by_stall = collections.Counter(), collections.Counter(), collections.Counter()
    for r in data:
        words = r[1].strip().split()
        op = (words[1] if words and words[0].startswith("@") else words[0] if words else "?").split(".")[0]
        by_op[op] += num(r, ix, samples)
        executed[op] += num(r, ix, "Instructions Executed")
        for s in stalls:
            by_stall[s] += num(r, ix, s)
    print("--- samples by opcode (share; instructions executed)")
    for op, v in by_op.most_common(20):
        print(f"{op:10s} {v / total * 100:5.1f}%  {executed[op]:.0f}")
    print("--- samples by stall reason")
    for s, v in by_stall.most_common(10):
        print(f"{s[6:]:20s} {v / total * 100:5.1f}%")
    for lo, hi in ranges:
        share = sum(num(r, ix, samples) for r in data if lo <= int(r[0], 16) & 0xFFFFF < hi) / total
        print(f"--- samples in [{lo:x}, {hi:x}): {share * 100:.1f}%")
    print(f"--- top {top} instructions by samples (the two leading stall reasons)")
    for r in sorted(data, key=lambda r: -num(r, ix, samples))[:top]:
        lead = sorted(((num(r, ix, s), s[6:]) for s in stalls), reverse=True)[:2]
        print(f"{r[0][-5:]} {num(r, ix, samples) / total * 100:5.2f}% {lead[0][1]}={lead[0][0]:.0f} "
              f"{lead[1][1]}={lead[1][0]:.0f}  {r[1].strip()[:90]}")


if __name__ == "__main__":
    args = sys.argv[1:]
    ranges = []
    while "--range" in args:
        i = args.index("--range")
        lo, hi = args[i + 1].split("-")
        ranges.append((int(lo, 16), int(hi, 16)))
        del args[i:i + 2]
    main(args[0], int(args[1]) if len(args) > 1 else 40, ranges)
