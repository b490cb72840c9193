# The ws kernel's segment phases with the three store modes of store_modes.diff (0: as shipped, 1: one reciprocal a
# row, 2: timing only, half the columns stored), alternated; from the repo root on the device, Triton 3.9 carried:
#   bash benchmarks/results/h100/session_2026-11-25q/store_modes.sh
source .devrun/t39.sh
D=benchmarks/results/h100/session_2026-11-25q
git apply $D/ws_timeline.diff $D/store_modes.diff
for m in 0 1 2 0 1; do
  echo "== TM_STORE_MODE=$m"
  TM_STORE_MODE=$m CHECK=$([ $m = 2 ] && echo 0 || echo 1) SHAPES="128,8192,128,1;128,8192,128,2;128,4096,128,1" \
    python3 $D/ws_timeline.py 2>&1 | grep -v "leak\|nanobind\|Warn\|skipped\|refleaks"
done
git checkout triton_mla/kernels/decode_sm90_ws.py triton_mla/kernels/decode_sm90.py
