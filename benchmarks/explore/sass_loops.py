"""Spill traffic inside the loops of one sm90 kernel's SASS, with no GPU: the spec named on the command line (as
``check-configs`` and ``ptxas_report.py`` name it) is compiled for sm_90a, disassembled with Triton's bundled
``nvdisasm``, and for every backward branch the instructions between its target and itself are counted: all, local
stores (STL) and loads (LDL, spill reloads) and HGMMAs. A pair loop of the ws decode shows up as a range with 44
HGMMAs.

    python benchmarks/explore/sass_loops.py "decode_sm90_ws(causal=False, tma=True)" [--dump FILE.sass]
"""
import argparse
import os
import re
import subprocess
import tempfile

import triton

from triton_mla.configs import check, load_family

ADDR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
BRANCH = re.compile(r"BRA\s.*?\((\.L_x_\d+)\)")


def sass_of(name):
    for section, entries in load_family("sm90").items():
        if section not in check.SECTIONS:
            continue
        for entry in entries:
            for spec_name, fn, types, constexprs, warps, stages in check.section_specs(section, entry):
                if spec_name == name:
                    kernel = check.compile_for(fn, types, constexprs, 90, warps, stages)
                    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                        f.write(kernel.asm["cubin"])
                    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
                    return subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout
    raise SystemExit(f"no spec named {name!r}")


def loops(sass):
    """(instructions as (address, text), [(first address, last address)] of each backward branch's range)."""
    labels, pending, ins = {}, [], []
    for line in sass.splitlines():
        m = LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = ADDR.search(line)
        if m:
            addr = int(m.group(1), 16)
            for label in pending:
                labels[label] = addr
            pending = []
            ins.append((addr, m.group(2)))
    ranges = []
    for addr, text in ins:
        m = BRANCH.search(text)
        if m and labels.get(m.group(1), addr + 1) < addr:
            ranges.append((labels[m.group(1)], addr))
    return ins, ranges


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--dump", help="write the SASS here")
    args = ap.parse_args()
    sass = sass_of(args.name)
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(sass)
    ins, ranges = loops(sass)

    def count(body, op):
        return sum(op in t for t in body)

    all_text = [t for _, t in ins]
    print(f"{args.name}: {len(ins)} instructions, STL {count(all_text, 'STL')}, LDL {count(all_text, 'LDL')}")
    for lo, hi in ranges:
        body = [t for a, t in ins if lo <= a <= hi]
        if len(body) > 8:
            print(f"  loop {lo:#x}-{hi:#x}: {len(body):5d} instructions, STL {count(body, 'STL'):3d}, "
                  f"LDL {count(body, 'LDL'):3d}, HGMMA {count(body, 'HGMMA')}")


if __name__ == "__main__":
    main()
