"""Shared memory, registers and spills of the sm90 Gluon kernels, with no GPU: each spec of a config section
compiled for sm_90a, its PTX assembled by Triton's bundled ptxas with -v (and its warnings, e.g. serialized wgmma).

    python benchmarks/explore/ptxas_report.py [name-substring ...]

Specs come from ``configs.check`` (every shipped sm90 entry, as check-configs compiles them). ptxas's warning about
``maxnreg`` on warp-specialized kernels is Triton's register hint, harmless; it is not printed."""

import os
import re
import subprocess
import sys
import tempfile

import triton

from triton_mla.configs import check, load_family


def ptxas_path():
    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        if os.path.exists(os.path.join(base, name)):
            return os.path.join(base, name)
    raise FileNotFoundError(base)


def report(fn, types, constexprs, num_warps, num_stages):
    k = check.compile_for(fn, types, constexprs, 90, num_warps, num_stages)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    out = subprocess.run([ptxas_path(), "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                         text=True)
    text = out.stdout + out.stderr
    regs = re.findall(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill stores", text)
    warn = sorted({m.strip() for m in re.findall(r"warning.*", text) if "maxnreg" not in m})
    return k.metadata.shared, regs, spill, warn


def sm90_specs(names):
    """(section, name, fn, types, constexprs, warps, stages) of every shipped sm90 spec, each once, whose name
    holds one of ``names`` (all if none)."""
    seen = set()
    for section, entries in load_family("sm90").items():
        if section not in check.SECTIONS:
            continue
        for entry in entries:
            for name, fn, types, constexprs, warps, stages in check.section_specs(section, entry):
                key = (name, repr(sorted(constexprs.items())))
                if key in seen or (names and not any(a in name for a in names)):
                    continue
                seen.add(key)
                yield section, name, fn, types, constexprs, warps, stages


def main(argv):
    for section, name, *spec in sm90_specs(argv):
        shared, regs, spill, warn = report(*spec)
        print(f"{section:14s} {name:60s} smem {shared:7d}  regs {','.join(regs):10s} spill "
              f"{','.join(spill)}", flush=True)
        for w in warn:
            print("    ", w[:200])


if __name__ == "__main__":
    main(sys.argv[1:])
