"""Shipped launch configs fit the shared memory of every GPU family (compiled here, no GPU needed).

The compile runs in a child process: the test session may run kernels in the Triton interpreter,
whose kernels cannot be compiled.
"""

import os
import subprocess
import sys

import pytest
import torch

from triton_mla import configs

TARGETS = ("sm80", "sm86", "sm89", "sm90", "sm120")
LIMITS = {"sm80": 166912, "sm86": 101376, "sm89": 101376, "sm90": 232448, "sm120": 101376}


def _compiling_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run_compiling(code, *args):
    """``code`` (with ``args``) run by a fresh interpreter that compiles (the tests' interpreter mode off)."""
    return subprocess.run([sys.executable, "-c", code, *args], env=_compiling_env(), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("family", TARGETS)
def test_every_shipped_config_fits(family):
    res = subprocess.run([sys.executable, "-m", "triton_mla", "check-configs", family], env=_compiling_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all configs fit" in res.stdout and f"{family:>6}" in res.stdout
    if family == "sm90":  # the Gluon warpgroup-MMA decode of the 64+ row entries is compiled too
        assert "decode_sm90(causal=True, page_tile=False)" in res.stdout


def test_oversized_config_is_caught():
    """An L40S's 99 KB must reject a tile that only an H100 could hold, and the check must say so."""
    code = (
        "from triton_mla.configs import check\n"
        "e = dict(max_rows=None, dtype='16bit', BLOCK_H=64, BLOCK_N=64, num_warps=8, num_stages=3,"
        " PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=4)\n"
        "name, fn, ptrs, consts, w, s = next(check.decode_kernels(e))\n"
        "print(check._compile(fn, ptrs, consts, 89, w, s))\n"
    )
    res = _run_compiling(code)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) > LIMITS["sm89"]


def test_families_cover_targets():
    from triton_mla.configs import check

    assert set(configs.family_names()) == set(TARGETS) == set(check.TARGETS)
    for fam in TARGETS:
        doc = configs.load_family(fam)
        assert doc["smem_limit"] == LIMITS[fam] == check.TARGETS[fam][1]
        kinds = {e["dtype"] for e in doc["decode"]}
        assert kinds == {"16bit", "float32"}
        for kind in kinds:  # every bucket list ends in a catch-all
            assert [e for e in doc["decode"] if e["dtype"] == kind][-1]["max_rows"] is None


def test_pick_buckets():
    entries = configs.load_family("sm90")["decode"]
    assert configs.pick(entries, 16, torch.bfloat16)["BLOCK_H"] == 16
    assert configs.pick(entries, 17, torch.bfloat16)["max_rows"] == 32
    assert configs.pick(entries, 1000, torch.bfloat16)["max_rows"] is None
    assert configs.pick(entries, 8, torch.float32)["dtype"] == "float32"


def test_pick_skips_entries_for_a_newer_triton(monkeypatch):
    """An entry with ``min_triton`` is taken only from that Triton version on; older ones fall through to the next
    entry of the bucket (sm90: the warp-specialized decode above 64 rows needs Triton 3.7+)."""
    entries = [dict(max_rows=64, dtype="16bit", name="small"), dict(max_rows=None, dtype="16bit", min_triton="3.7",
               name="new"), dict(max_rows=None, dtype="16bit", name="old")]
    assert configs.triton_at_least("3.7", "3.9.0") and configs.triton_at_least("3.7", "3.10.1+git")
    assert not configs.triton_at_least("3.7", "3.6.0") and not configs.triton_at_least("3.7", "2.9")
    for version, want in (("3.9.0", "new"), ("3.6.0", "old")):
        monkeypatch.setattr(configs.triton, "__version__", version)
        assert configs.pick(entries, 32, torch.bfloat16)["name"] == "small"
        assert configs.pick(entries, 256, torch.bfloat16)["name"] == want
    sm90 = configs.load_family("sm90")["decode"]
    ws = [e for e in sm90 if e.get("WS")]
    assert ws and all(e.get("min_triton") for e in ws)
    assert any(e["max_rows"] is None and "min_triton" not in e and e["dtype"] == "16bit" for e in sm90)


def test_check_configs_skips_entries_for_a_newer_triton(monkeypatch):
    """check-configs compiles what this Triton can pick: an entry whose ``min_triton`` is newer is left out (the
    warp-specialized decode does not build under Triton 3.6), and compiled from that version on."""
    from triton_mla.configs import check

    def ws_jobs():
        return [job for job in check._jobs(["sm90"]) if job[2][0].startswith("decode_sm90_ws")]

    monkeypatch.setattr(configs.triton, "__version__", "3.9.0")
    assert ws_jobs()
    monkeypatch.setattr(configs.triton, "__version__", "3.6.0")
    assert not ws_jobs() and check._jobs(["sm90"])


def test_sparse_prefill_takes_the_ws_kernel_where_triton_builds_it(monkeypatch):
    """The sm90 sparse prefill entry above 32 heads asks for the warp-specialized kernel (16-bit cache: faster than
    the lockstep kernel at every kv size measured), sparse decode does not (its keys are gathered from HBM: slower;
    benchmarks/NOTES.md, fifteenth session); check-configs compiles the kernel that runs: the ws one from Triton 3.7
    on, else the lockstep one."""
    from triton_mla.configs import check
    from triton_mla.kernels import sparse_sm90

    def sparse_jobs():
        return [job[2][0] for job in check._jobs(["sm90"]) if job[2][0].startswith("sparse_sm90")]

    family = configs.load_family("sm90")
    prefill = next(e for e in family["sparse_prefill"] if e["max_rows"] is None and e["dtype"] == "16bit")
    assert prefill["WS"] and prefill["COPY_FIRST"]
    assert not any(e.get("WS") for e in family["sparse_decode"])
    monkeypatch.setattr(sparse_sm90, "ws_supported", lambda: True)
    assert sparse_sm90.use_ws(prefill, fp8=False) and not sparse_sm90.use_ws(prefill, fp8=True)
    assert "sparse_sm90_ws(split=1)" in sparse_jobs()
    monkeypatch.setattr(sparse_sm90, "ws_supported", lambda: False)
    assert not sparse_sm90.use_ws(prefill, fp8=False)
    assert not any("_ws" in name for name in sparse_jobs()) and "sparse_sm90(split=1)" in sparse_jobs()


def test_ws_decode_takes_tma_only_where_tiles_are_whole_pages_end_to_end():
    """The ws kernel's TMA copies read a 64-key tile as 64 consecutive cache rows: pages of a whole number of tiles,
    laid end to end; any other cache (pages of 16, a padded page stride) is copied by cp.async."""
    from triton_mla.kernels.decode_sm90_ws import ws_tma

    def cache(num_blocks, page_size, page_stride=None):
        flat = torch.empty(num_blocks * (page_stride or page_size * 576), dtype=torch.bfloat16)
        return flat.as_strided((num_blocks, page_size, 1, 576), (page_stride or page_size * 576, 576, 576, 1))

    assert ws_tma(cache(4, 64), {}) and ws_tma(cache(2, 128), {}) and ws_tma(cache(3, 192), {})
    assert not ws_tma(cache(4, 64), {"TMA": False})
    assert not ws_tma(cache(8, 16), {}) and not ws_tma(cache(4, 1), {})
    assert not ws_tma(cache(4, 64, page_stride=64 * 576 + 64), {})


def test_ws_decode_batch_floor(monkeypatch):
    """The shipped ws entry takes every batch size (the ws kernel is as fast as the lockstep one down to b = 1 since
    the seventeenth session); an entry may still name a floor, ``WS_MIN_TILES_PER_PART`` key tiles a part
    (estimated from the block table's width), below which the lockstep kernel runs. FP8 caches, 32-key tiles and
    a Triton that cannot build it never take it."""
    from triton_mla.kernels import decode_sm90
    from triton_mla.kernels.decode_sm90 import use_ws

    entry = next(e for e in configs.load_family("sm90")["decode"] if e.get("WS"))
    assert "WS_MIN_TILES_PER_PART" not in entry
    monkeypatch.setattr(decode_sm90, "ws_supported", lambda: True)
    assert use_ws(entry, 1, 64, 66) and use_ws(entry, 8, 8192, 66) and use_ws(entry, 128, 8192, 66)
    # with a floor of 32 and 66 parts (132 SMs, two row blocks): b = 8 at 8192 keys is 15.5 tiles a part, 64 is 124
    floor = {**entry, "WS_MIN_TILES_PER_PART": 32}
    assert not use_ws(floor, 8, 8192, 66) and use_ws(floor, 64, 8192, 66) and use_ws(floor, 17, 8192, 66)
    assert not use_ws(floor, 16, 8192, 66)
    assert not use_ws({**entry, "BLOCK_N": 32}, 64, 8192, 66)
    # the FP8 cache through it (in-place dequantization) is named by no shipped entry until it is measured
    assert not any(use_ws(e, 64, 8192, 66) for e in configs.load_family("sm90")["decode_fp8"])
    assert not use_ws({**entry, "WS": False}, 64, 8192, 66)
    monkeypatch.setattr(decode_sm90, "ws_supported", lambda: False)
    assert not use_ws(entry, 64, 8192, 66)


def test_unknown_gpu_gets_safe_default():
    assert configs.FAMILIES.get((7, 5), configs.SAFE_DEFAULT) == "sm86"
    assert configs.load_family(configs.SAFE_DEFAULT)["smem_limit"] == min(LIMITS.values())


def test_wgmma_kernel_checked_on_sm90_only():
    """The Gluon decode is compiled for the sm90 entries that ask for it, and such an entry in another
    family is an error (it could never run there)."""
    from triton_mla.configs import check

    entry = dict(max_rows=None, dtype="16bit", BLOCK_H=64, BLOCK_N=64, num_warps=8, num_stages=2, PARTS_PER_SM=1,
                 MIN_BLOCKS_PER_PART=4, WGMMA=True, NUM_BUF=2)
    specs = [spec for spec in check.decode_kernels(entry) if spec[0].startswith("decode_sm90")]
    assert len(specs) == 3  # causal or not with per-key page look-ups, and one page look-up a tile
    shared, verdict = check._run_job(("sm89", "label", specs[0]))
    assert verdict.startswith("FAILED") and "sm90" in verdict


_WS_COMPILE = """
import sys
from triton_mla.configs import check
entry = dict(max_rows=None, dtype="16bit", BLOCK_H=64, BLOCK_N=int(sys.argv[1]), num_warps=8, num_stages=2,
             PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=4, WGMMA=True, WS=True, NUM_BUF=2)
spec = next(spec for spec in check.decode_kernels(entry) if spec[0].startswith("decode_sm90_ws"))
print(spec[4], *check._run_job(("sm90", "label", spec)))
"""


def test_warp_specialized_decode_compiles_for_sm90():
    """The warp-specialized decode (``WS``: the sm90 entry above 64 rows, from Triton 3.7) compiles for sm90
    within its shared memory, with its 64-key tiles (4 warps: the second warpgroup is the worker partition)."""
    res = _run_compiling(_WS_COMPILE, "64")
    assert res.returncode == 0, res.stderr
    warps, shared, verdict = res.stdout.split()[-3:]
    assert warps == "4" and verdict == "ok" and int(shared) > 200_000, res.stdout


_WS_FP8_COMPILE = """
from triton_mla.configs import check, load_family
from triton_mla.kernels import decode_sm90
for late in (False, True):
    entry = dict(load_family("sm90")["decode_fp8"][-1], WS=True, LATE_B_LO=late)
    for spec in decode_sm90.compile_specs(entry, fp8=True):
        print(spec[0].split("(")[0], spec[4], *check._run_job(("sm90", "label", spec)))
"""


def test_warp_specialized_decode_compiles_for_the_fp8_cache():
    """The FP8 cache through the warp-specialized decode (a ``decode_fp8`` entry naming ``WS``; no shipped entry
    does until it is measured): raw bytes copied by cp.async into the 16-bit tile buffers and dequantized in
    place, so it fits sm90's shared memory with only the scales and two mbarriers more than the 16-bit kernel;
    both schedules of B's lower half (``LATE_B_LO``)."""
    res = _run_compiling(_WS_FP8_COMPILE)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")[:-1]
    assert len(lines) == 4, res.stdout  # causal or not (no TMA form), B's lower half converted early or late
    for line in lines:
        name, warps, shared, verdict = line.split()
        assert name == "decode_sm90_ws_fp8" and warps == "4" and verdict == "ok", line
        assert 223_000 < int(shared) <= LIMITS["sm90"], line


_SPARSE_DUAL_COMPILE = """
from triton_mla.configs import check, load_family
from triton_mla.kernels import sparse, sparse_sm90
if not sparse_sm90.dual_builds():
    print("unbuilt")
for entry in load_family("sm90")["sparse_decode"][:2]:
    config = dict(sparse.fp8_config(entry), KEYS_ON_M_DUAL=True)
    for spec in sparse_sm90.compile_specs(fp8=True, config=config):
        if "dual" in spec[0]:
            print(spec[0].split("(")[0], spec[3]["ROWS"], int(spec[3]["LAZY_PAIRS"]), spec[4],
                  *check._run_job(("sm90", "label", spec)))
"""


def test_sparse_dual_program_compiles_for_sm90():
    """The sparse FP8 dual program (``KEYS_ON_M_DUAL``: two warpgroups on alternate top-k tiles, one program an SM;
    no shipped entry names it until it is measured) compiles for sm90 within its shared memory, at 8 and 16 rows,
    with and without the lazy max and paired keys of the 16-row entry, split or not."""
    res = _run_compiling(_SPARSE_DUAL_COMPILE)
    assert res.returncode == 0, res.stderr
    if res.stdout.startswith("unbuilt"):
        pytest.skip("this Triton does not build the dual program (3.9+)")
    lines = res.stdout.split("\n")[:-1]
    # the two few-head entries: 8 and 16 rows each, split or not, LAZY_PAIRS as the entry's LAZY_MAX + PAIR_KEYS
    assert len(lines) == 8, res.stdout
    for line in lines:
        name, rows, lazy_pairs, warps, shared, verdict = line.split()
        assert name == "sparse_sm90_fp8_keys_on_m_dual" and warps == "4" and verdict == "ok", line
        assert 170_000 < int(shared) <= LIMITS["sm90"], line
    assert {line.split()[2] for line in lines} == {"0", "1"}


_SPARSE_FP8_WS_COMPILE = """
from triton_mla.configs import check, load_family
from triton_mla.kernels import sparse, sparse_sm90
entry = next(e for e in load_family("sm90")["sparse_decode"] if e["max_rows"] is None)
for spec in sparse_sm90.compile_specs(fp8=True, config=dict(sparse.fp8_config(entry), FP8_WS=True)):
    print(spec[0].split("(")[0], spec[4], *check._run_job(("sm90", "label", spec)))
"""


def test_sparse_fp8_ws_compiles_for_sm90():
    """The FP8 cache through the warp-specialized sparse kernel (``FP8_WS``, 64+ heads; no shipped entry names it
    until it is measured) compiles for sm90 within its shared memory, split or not."""
    res = _run_compiling(_SPARSE_FP8_WS_COMPILE)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")[:-1]
    assert len(lines) == 2, res.stdout
    for line in lines:
        name, warps, shared, verdict = line.split()
        assert name == "sparse_sm90_fp8_ws" and warps == "4" and verdict == "ok", line
        assert 223_000 < int(shared) <= LIMITS["sm90"], line


def test_tune_candidates():
    """Every candidate says which decode kernel it times, so a tuned file never drops the sm90 Gluon kernel by
    omission; the Gluon candidates appear only on sm90 and from 32 rows up."""
    from triton_mla import tune

    plain = list(tune.candidates(128))
    assert plain and all(c["WGMMA"] is False for c in plain)
    assert not any(c["BLOCK_H"] >= 64 and c["num_warps"] == 4 for c in plain)
    hopper = list(tune.candidates(128, sm90=True))
    gluon = [c for c in hopper if c["WGMMA"]]
    assert len(gluon) == 4 and {c["BLOCK_N"] for c in gluon} == {32, 64}
    assert all(c["NUM_BUF"] * c["BLOCK_N"] <= 128 for c in gluon)  # what fits next to Q in 227 KB
    assert not any(c["WGMMA"] for c in tune.candidates(16, sm90=True))
    # a tuned entry must be valid for check-configs: the Gluon kernel's specs compile from these keys
    from triton_mla.configs import check

    specs = [s[0] for s in check.decode_kernels(gluon[0])]
    assert "decode_sm90(causal=True, page_tile=False)" in specs


def test_host_launch_arithmetic_matches_triton():
    """The launchers' plain cdiv / next_pow2 (cheaper from Python) agree with Triton's."""
    import triton

    from triton_mla.kernels._common import cdiv, next_pow2

    assert all(cdiv(a, b) == triton.cdiv(a, b) for a in range(0, 200) for b in (1, 3, 16, 64))
    assert all(next_pow2(n) == triton.next_power_of_2(n) for n in range(1, 3000))


def test_every_launch_asks_for_fused_multiply_adds():
    """Each kernel launch in ``triton_mla/kernels`` passes ``**FP_FUSION``: the kernels are measured with fused
    multiply-adds, and Triton 3.10 turns them off by default (3.9 warns at every compile that leaves it unset)."""
    import ast
    import pathlib

    from triton_mla.kernels._common import FP_FUSION

    assert FP_FUSION == {"enable_fp_fusion": True}
    launches = 0
    for path in sorted(pathlib.Path(configs.__file__).parent.parent.joinpath("kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            # kernel[grid](...): a call of a subscript
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                launches += 1
                spread = [k.value.id for k in node.keywords if k.arg is None and isinstance(k.value, ast.Name)]
                assert "FP_FUSION" in spread, f"{path.name}:{node.lineno} launches without **FP_FUSION"
    assert launches >= 20


def test_compiling_for_a_gpu_raises_no_fp_fusion_warning():
    """``check-configs``' compile names the option too: no Triton warning about its default."""
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from triton_mla.configs import check\n"
        "from triton_mla.kernels import decode as k\n"
        "ptrs = dict(q_ptr='*bf16', k_ptr='*bf16', out_ptr='*bf16', lse_ptr='*fp32', o_part_ptr='*fp32',"
        " lse_part_ptr='*fp32')\n"
        "spec = next(k.combine_specs(ptrs, 512, 64, 4))\n"
        "check.compile_for(spec[1], spec[2], spec[3], 90, spec[4], spec[5])\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in _compiling_env().items() if k != "TRITON_DEFAULT_FP_FUSION"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_fp8_keys_on_m_entries_compile_what_they_serve(monkeypatch):
    """check-configs compiles the FP8 kernels an sm90 ``decode_fp8`` entry can launch: with KEYS_ON_M, the
    keys-on-M programs for the rows it serves (8 and 16 rows, and the 32-row dual program with DUAL_32 where Triton
    builds it: 3.9+), and the 64-row kernel for the rows past them."""
    from triton_mla.kernels import decode_fp8, decode_sm90_fp8

    def names(**entry):
        base = dict(dtype="16bit", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=2, PARTS_PER_SM=1,
                    MIN_BLOCKS_PER_PART=4, WGMMA=True, HW_CVT=True)
        return [spec[0] for spec in decode_fp8.compile_specs("decode_fp8", dict(base, **entry))]

    def rows_of(ns):
        return {n.split("rows=")[1].split(",")[0] for n in ns if "keys_on_m" in n}

    def lockstep(ns):
        return any(n.startswith("decode_sm90_fp8(") for n in ns)

    monkeypatch.setattr(decode_sm90_fp8, "dual_builds", lambda: True)
    assert rows_of(names(max_rows=16, KEYS_ON_M=True)) == {"8", "16"}
    assert not lockstep(names(max_rows=16, KEYS_ON_M=True))
    dual = names(max_rows=32, KEYS_ON_M=True, DUAL_32=True)
    assert rows_of(dual) == {"8", "16", "32"} and not lockstep(dual)
    assert all("dual" in n for n in dual if "rows=32" in n)
    assert rows_of(names(max_rows=32, KEYS_ON_M=True)) == {"8", "16"} and lockstep(names(max_rows=32, KEYS_ON_M=True))
    both = names(max_rows=None, KEYS_ON_M=True, DUAL_32=True)
    assert rows_of(both) == {"8", "16", "32"} and lockstep(both)
    only = names(max_rows=32, DUAL_32=True)
    assert not rows_of(only) and lockstep(only)
    monkeypatch.setattr(decode_sm90_fp8, "dual_builds", lambda: False)  # (Triton < 3.9: the 64-row kernel)
    old = names(max_rows=32, KEYS_ON_M=True, DUAL_32=True)
    assert rows_of(old) == {"8", "16"} and lockstep(old)


@pytest.mark.parametrize("options", [{}, dict(PAIR_KEYS=True, LAZY_MAX=True, FUSED_COMBINE=True)],
                         ids=["e4m3", "pairs_lazy_fused"])
def test_qk_e4m3_programs_build_for_sm90(options):
    """The keys-on-M programs with the scores through e4m3 MMAs (``QK_E4M3``), and with V^T's bytes paired by key,
    the lazy running max and the fused combine (``PAIR_KEYS``, ``LAZY_MAX``, ``FUSED_COMBINE``; not the dual program
    nor sparse decode),
    compile for sm90 and fit two programs an SM (one for the 32-row dual program, where this Triton builds it),
    dense and sparse, whether or not a shipped entry turns them on (check-configs compiles only what ships)."""
    code = (
        "import sys\n"
        "from triton_mla.configs import check\n"
        "from triton_mla.kernels import decode_fp8, decode_sm90_fp8, sparse_sm90\n"
        "e = dict(max_rows=None, dtype='16bit', BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=2, PARTS_PER_SM=1,"
        " MIN_BLOCKS_PER_PART=4, WGMMA=True, HW_CVT=True, KEYS_ON_M=True, DUAL_32=True, QK_E4M3=True)\n"
        "on = sys.argv[1] == 'on'\n"
        "if on:\n"
        "    e.update(PAIR_KEYS=True, LAZY_MAX=True, FUSED_COMBINE=True, IDS_AHEAD=True)\n"
        "specs = [s for s in decode_sm90_fp8.compile_specs(dict(e, max_rows=32))"
        " if 'causal=True, page_tile=True' in s[0]]\n"
        "specs += [s for s in sparse_sm90.compile_specs(fp8=True, config=dict(e, KEYS_ON_M=True))"
        " if 'keys_on_m' in s[0] and 'split=1' in s[0]]\n"
        "for name, fn, types, consts, w, st in specs:\n"
        "    dual = 'dual' in name  # (the dual program takes neither option)\n"
        "    assert consts['QK_E4M3'] and consts.get('PAIRS', False) == (on and not dual), name\n"
        "    assert consts.get('LAZY', False) == (on and not dual), name\n"
        "    assert consts.get('FUSED', False) == (on and not dual and 'sparse' not in name), name\n"
        "    print(name, check._compile(fn, types, consts, 90, w, st))\n"
    )
    res = _run_compiling(code, "on" if options else "off")
    assert res.returncode == 0, res.stderr
    sizes = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in res.stdout.splitlines()}
    assert sum(n.startswith("decode_sm90_fp8_keys_on_m(") for n in sizes) == 2, sizes
    assert sum(n.startswith("sparse") for n in sizes) == 2, sizes
    for name, smem in sizes.items():
        assert smem <= LIMITS["sm90"] // (1 if "dual" in name else 2), (name, smem)
