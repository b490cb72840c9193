"""Compile every shipped launch config for its GPU family, with no GPU, and compare shared memory.

``python -m triton_mla check-configs`` runs this: for each family file and each kernel section in it
(``decode``, ``decode_fp8``, ``prefill``, ...) it compiles every entry with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))`` and reads
``metadata.shared``. A config that needs more shared memory than the family has would crash at launch
on that GPU (an sm89 L40S has 99 KB), so any such entry makes the check fail.

A section maps to the kernel module that owns it (``SECTIONS``); that module's
``compile_specs(entry)`` yields ``(name, fn, types, constexprs, num_warps, num_stages)`` for each kernel
one entry launches. ``types`` gives the Triton type of an argument (``"*bf16"``, ``"fp32"``); arguments
it does not name are ``*i32`` pointers if they end in ``_ptr`` and ``i32`` otherwise.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import sys

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

from ..kernels._common import FP_FUSION
from . import load_family, triton_at_least

# family -> (compute capability used to compile, shared memory per block, bytes)
TARGETS = {
    "sm80": (80, 166912),
    "sm86": (86, 101376),
    "sm89": (89, 101376),
    "sm90": (90, 232448),
    "sm120": (120, 101376),
}

# DeepSeek's latent: the shapes the configs are sized for
DV, DR = 512, 64

# config section -> the module whose compile_specs(entry) yields its kernels
SECTIONS = {
    "decode": "triton_mla.configs.check",  # decode_kernels below
    "decode_fp8": "triton_mla.kernels.decode_fp8",
    "prefill": "triton_mla.kernels.prefill",
    "extend": "triton_mla.kernels.extend",
    "sparse_decode": "triton_mla.kernels.sparse",
    "sparse_prefill": "triton_mla.kernels.sparse",
}


def _signature(fn, types, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        elif name.endswith("_ptr"):
            sig[name] = "*i32"
        elif name in ("qk_scale",):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _is_gluon(fn) -> bool:
    try:
        from triton.experimental.gluon._runtime import GluonJITFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, GluonJITFunction)


def source(fn, types, constexprs):
    """The kernel as ``triton.compile`` takes it (a Triton or Gluon AST source), specialized as a launch would be."""
    # a constexpr the launch leaves at its default is specialized on that default, as the JIT does
    constexprs = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **constexprs}
    sig = _signature(fn, types, constexprs)
    # as the JIT specializes a real launch: 16-byte aligned pointers and strides let Triton vectorize and
    # pipeline loads, which is what costs shared memory; without these hints the check would under-report
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name] != "constexpr" and (sig[name].startswith("*") or name.startswith("stride"))}
    if _is_gluon(fn):
        from triton.experimental.gluon._runtime import GluonASTSource

        return GluonASTSource(fn, sig, constexprs, attrs)
    return ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)


def compile_for(fn, types, constexprs, cap, num_warps, num_stages):
    """The compiled kernel for compute capability ``cap`` (no GPU needed)."""
    return compile(source(fn, types, constexprs), target=GPUTarget("cuda", cap, 32),
                   options=dict(num_warps=num_warps, num_stages=num_stages, **FP_FUSION))


def _compile(fn, types, constexprs, cap, num_warps, num_stages):
    return compile_for(fn, types, constexprs, cap, num_warps, num_stages).metadata.shared


def decode_kernels(entry, section="decode"):
    """(name, fn, pointer types, constexprs, warps, stages) for each kernel one decode entry launches."""
    from ..kernels import decode as k

    elem = "*fp32" if entry["dtype"] == "float32" else "*bf16"
    block_h, block_n = entry["BLOCK_H"], entry["BLOCK_N"]
    common = dict(DV=DV, BLOCK_DV=DV, BLOCK_H=block_h, BLOCK_N=block_n,
                  MIN_BLOCKS_PER_PART=entry["MIN_BLOCKS_PER_PART"], CHUNK_B=128)
    ptrs = dict(q_ptr=elem, k_ptr=elem, out_ptr=elem, lse_ptr="*fp32", o_part_ptr="*fp32",
                lse_part_ptr="*fp32")
    precision = "ieee" if entry["dtype"] == "float32" else "tf32"
    for causal in (False, True):
        yield (f"decode(causal={causal})", k._decode_kernel, ptrs,
               dict(common, DR=DR, BLOCK_DR=DR, CAUSAL=causal, DOT_PRECISION=precision,
                    ROWS_FIRST=bool(entry.get("ROWS_FIRST", False)),
                    LAZY_RESCALE=bool(entry.get("LAZY_RESCALE", False)),
                    PREFETCH_PAGES=bool(entry.get("PREFETCH_PAGES", False)), FUSED=k.fused_combine(entry)),
               entry["num_warps"], entry["num_stages"])
    yield from k.combine_specs(ptrs, DV, block_n, entry["MIN_BLOCKS_PER_PART"])
    if entry.get("WGMMA", False):
        # the Gluon kernel that serves this entry's 16-bit calls on sm90 (kernels/decode_sm90.py)
        from ..kernels import decode_sm90

        yield from decode_sm90.compile_specs(entry)
    from ..kernels import decode_invariant as inv

    chunk = max(1, inv.chunk_tokens(entry["max_rows"] or 128) // block_n)
    yield ("invariant", inv._invariant_kernel, ptrs,
           dict(DV=DV, BLOCK_DV=DV, BLOCK_H=block_h, BLOCK_N=block_n, DR=DR, BLOCK_DR=DR, CHUNK_BLOCKS=chunk,
                CAUSAL=True, DOT_PRECISION=precision), entry["num_warps"], entry["num_stages"])


def section_specs(section, entry):
    """The kernels one config entry of ``section`` launches (see ``SECTIONS``)."""
    if section == "decode":
        return decode_kernels(entry)
    return importlib.import_module(SECTIONS[section]).compile_specs(section, entry)


def entry_label(entry):
    tiles = " ".join(f"{k[len('BLOCK_'):]}{v}" for k, v in entry.items() if k.startswith("BLOCK_"))
    return (f"{entry.get('dtype', ''):>7} rows<={entry.get('max_rows') or 'any':<4} {tiles} "
            f"w{entry['num_warps']} s{entry['num_stages']}")


def _jobs(families):
    """Every (family, label, kernel name, spec) to compile, in a fixed order."""
    jobs = []
    for fam in families:
        doc = load_family(fam)
        for section in [s for s in SECTIONS if s in doc]:
            for entry in doc[section]:
                if not triton_at_least(entry.get("min_triton", "0.0")):
                    continue  # never picked under this Triton (configs.pick), and it may not build here
                label = f"{section:<14} {entry_label(entry)}"
                for spec in section_specs(section, entry):
                    jobs.append((fam, label, spec))
    return jobs


def _run_job(job):
    fam, _, (name, fn, types, consts, warps, stages) = job
    cap, limit = TARGETS[fam]
    if _is_gluon(fn) and cap != 90:
        # warpgroup MMA exists only on sm90: such an entry would never be used elsewhere, so it is a mistake
        return -1, "FAILED: a WGMMA (Gluon, sm90-only) entry in a non-sm90 family"
    try:
        shared = _compile(fn, types, consts, cap, warps, stages)
        return shared, ("ok" if shared <= limit else "EXCEEDS")
    except Exception as e:  # a config the compiler rejects fails the check too
        return -1, f"FAILED {type(e).__name__}: {str(e)[:120]}"


_JOBS: list = []


def _run_index(i):
    return _run_job(_JOBS[i])


def check(families=None, out=sys.stdout, workers=None) -> bool:
    """Compile every job (in parallel processes: compiling is CPU-bound) and report each in order."""
    global _JOBS
    _JOBS = _jobs(families or list(TARGETS))
    # entries that differ only in their bucket compile to the same kernel: compile each once
    keys = [_key(job) for job in _JOBS]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = sorted(first.values())
    workers = workers or max(1, min(len(unique), os.cpu_count() or 1))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = dict(zip(unique, pool.map(_run_index, unique), strict=True))
    else:
        done = {i: _run_index(i) for i in unique}
    return _report([done[first[key]] for key in keys], out)


def _key(job):
    fam, _, (_, fn, types, consts, warps, stages) = job
    return (fam, fn.__name__, tuple(sorted(types.items())), tuple(sorted((k, repr(v)) for k, v in consts.items())),
            warps, stages)


def _report(results, out) -> bool:
    ok = True
    for (fam, label, spec), (shared, verdict) in zip(_JOBS, results, strict=True):
        ok &= verdict == "ok"
        print(f"{fam:>6} {label:<50} {spec[0]:<25} shared {shared:>7} / {TARGETS[fam][1]} B  {verdict}",
              file=out, flush=True)
    return ok


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # interpreted kernels cannot be compiled: check in a process that compiles
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "triton_mla", "check-configs", *(argv or [])], env=env)
    fams = argv or None
    ok = check(fams)
    print("all configs fit" if ok else "some configs do not fit: see EXCEEDS/FAILED above")
    return 0 if ok else 1
