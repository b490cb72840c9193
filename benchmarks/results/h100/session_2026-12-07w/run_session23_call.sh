#!/usr/bin/env bash
# twenty-third session: the keys-on-M FP8 programs with PAIR_KEYS (V^T's bytes paired by key before the conversion,
# scales once a tile) and LAZY_MAX (lazy running max), off in the shipped configs: A/B, tests, L2, ncu, Triton 3.6
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
F='grep -v -i warn\|leaked\|^ - \|nanobind'
t0=$(date +%s)
VARIANTS="shipped,pairs,pairs lazy" SHAPES=16:1:8192,8:1:8192,16:1:4096,32:1:8192 timeout -k 3 ${T_AB:-110} python3 benchmarks/explore/fp8_qk_variants.py 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/fp8_pairs_lazy_${tag}_t39.log
echo "== dense A/B ($(( $(date +%s) - t0 )) s)"; cat $OUT/fp8_pairs_lazy_${tag}_t39.log
t0=$(date +%s)
timeout -k 3 40 python3 benchmarks/explore/sparse_sm90_variants.py decode few-heads fp8 t_q8 t_q8_pl t_q8_p2_pl 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/sparse_pairs_lazy_${tag}_t39.log
echo "== sparse A/B ($(( $(date +%s) - t0 )) s)"; cat $OUT/sparse_pairs_lazy_${tag}_t39.log
t0=$(date +%s)
timeout -k 3 ${T_TESTS:-100} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short tests/test_fp8.py tests/test_sparse.py -k "pairs_lazy or growing" > $OUT/tests_pairs_lazy_${tag}_t39.log 2>&1
echo "== tests rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/tests_pairs_lazy_${tag}_t39.log), FAILED $(grep -c FAILED $OUT/tests_pairs_lazy_${tag}_t39.log)"; grep -E "FAILED|ERROR| passed| failed" $OUT/tests_pairs_lazy_${tag}_t39.log | tail -12
t0=$(date +%s)
for o in '{}' '{"PAIR_KEYS": true, "LAZY_MAX": true}'; do
  L2_SHAPES=fp8:16:1,fp8:8:1,fp8:32:1 timeout -k 3 40 python3 benchmarks/explore/l2_resident.py "$o" 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" >> $OUT/l2_resident_${tag}_t39.log
done
echo "== L2-resident ($(( $(date +%s) - t0 )) s)"; cat $OUT/l2_resident_${tag}_t39.log
t0=$(date +%s)
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__pipe_tensor.*cycles_active\.avg\.pct_of_peak_sustained_active,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__warps_eligible.avg.per_cycle_active,dram__bytes_read.sum"
timeout -k 3 ${T_NCU:-50} ncu --clock-control none -k regex:"_decode_sm90_fp8" --launch-skip 2 --launch-count 1 --metrics "$M" python3 benchmarks/explore/one_decode_call.py 16 1 fp8 '{"PAIR_KEYS": true, "LAZY_MAX": true}' 2>&1 | grep -v "^==PROF==\|warn\|leaked\|nanobind\|^ - " | tail -45 > $OUT/ncu_pairs_lazy_h16_${tag}.txt
echo "== ncu ($(( $(date +%s) - t0 )) s)"; grep -E "duration|issue_active|inst_executed|dram__thr|eligible|bank|stalled_(short|long|wait|barrier|mio|math|no_inst|dispatch|lg|branch|membar|sleep|not_sel|tex|drain|imc|misc)" $OUT/ncu_pairs_lazy_h16_${tag}.txt | head -30
# Triton 3.6 (the image's own) builds the programs with the options on?
PYTHONPATH=$PWD timeout 60 python3 -c "
import triton; from triton_mla.configs import check; from triton_mla.kernels import decode_sm90_fp8 as m, sparse_sm90
e = dict(max_rows=16, dtype='16bit', BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=2, PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=4, WGMMA=True, HW_CVT=True, KEYS_ON_M=True, QK_E4M3=True, PAIR_KEYS=True, LAZY_MAX=True)
for name, fn, types, consts, w, st in [s for s in m.compile_specs(e) if 'causal=True, page_tile=True' in s[0]] + [s for s in sparse_sm90.compile_specs(fp8=True, config=e) if 'split=1' in s[0]]:
    try: print('triton', triton.__version__, name, consts.get('PAIRS'), consts.get('LAZY'), check._compile(fn, types, consts, 90, w, st))
    except Exception as ex: print('triton', triton.__version__, name, 'FAILED', type(ex).__name__, str(ex)[-200:])
" 2>&1 | grep "^triton" | tee $OUT/t36_build.txt
