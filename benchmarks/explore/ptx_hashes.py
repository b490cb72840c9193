"""A hash of each sm90 spec's PTX (less its debug lines and sections), so a refactor can show that it left the
compiled code of the shipped kernels unchanged, with no GPU:

    python benchmarks/explore/ptx_hashes.py [name-substring ...] > before.txt   # then edit, re-run, diff

Specs: ``ptxas_report.sm90_specs`` (every shipped sm90 entry, as check-configs compiles them)."""

import hashlib
import sys

from ptxas_report import sm90_specs

from triton_mla.configs import check


def ptx_hash(fn, types, constexprs, num_warps, num_stages):
    ptx = check.compile_for(fn, types, constexprs, 90, num_warps, num_stages).asm["ptx"]
    debug = ptx.find(".section\t.debug")  # (the DWARF sections hold source line numbers too)
    ptx = ptx[:debug] if debug >= 0 else ptx
    # ($L__tmp labels mark source locations for the debug sections; branches go to $L__BB labels)
    body = "\n".join(line for line in ptx.splitlines()
                     if not line.lstrip().startswith((".loc", ".file", "$L__tmp")))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def main(argv):
    for section, name, *spec in sm90_specs(argv):
        print(f"{section:14s} {name:70s} {ptx_hash(*spec)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
