# Per-instruction (SASS) ncu profile of one kernel launch, summarized by ncu_source_summary.py. Repo root, CUDA machine:
#   OUT=dir bash benchmarks/explore/ncu_source.sh NAME KERNEL_REGEX python3 SCRIPT ARGS...
# e.g. NAME=dense_h128 KERNEL_REGEX=_decode_sm90_kernel with benchmarks/explore/one_decode_call.py 128 1 bf16, or
# sparse_h16 _sparse_sm90_fp8_t_kernel with benchmarks/explore/one_sparse_call.py 16. Writes OUT/NAME.csv (the source
# page) and OUT/NAME.txt (the summary).
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # (keeps a Triton put first on it)
name=$1 kre=$2; shift 2
mkdir -p "$OUT"
timeout 300 ncu --clock-control none --set full -k regex:"$kre" --launch-skip 2 --launch-count 1 -f -o "$OUT/$name" "$@" \
  > "$OUT/$name.log" 2>&1
ncu -i "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/$name.csv"
python3 benchmarks/explore/ncu_source_summary.py "$OUT/$name.csv" 40 > "$OUT/$name.txt"
rm -f "$OUT/$name.ncu-rep"
