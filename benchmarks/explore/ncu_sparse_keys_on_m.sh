# ncu of the sparse FP8 keys-on-M kernel (h_q = 16, then 8): stalls, issue, DRAM, bank conflicts. Run from the repo root.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__pipe_tensor.*cycles_active\.avg\.pct_of_peak_sustained_active,sm__inst_executed.avg.per_cycle_active,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__warps_eligible.avg.per_cycle_active,lts__t_sector_hit_rate.pct,dram__bytes_read.sum"
for h in 16 8; do
timeout 250 ncu --clock-control none -k regex:"_sparse_sm90_fp8_t_kernel" --launch-skip 2 --launch-count 1 --metrics "$M" \
  python3 benchmarks/explore/one_sparse_call.py $h 2>&1 | grep -v "^==PROF==" | tail -40
done
