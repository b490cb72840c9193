#!/usr/bin/env bash
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
timeout -k 3 150 python3 benchmarks/explore/host_overhead.py > $OUT/host_overhead_h100_t39.log 2>&1
echo "rc=$?"; grep "^==" $OUT/host_overhead_h100_t39.log
PYTHONPATH=$PWD timeout -k 3 100 python3 benchmarks/explore/host_overhead.py > $OUT/host_overhead_h100_t36.log 2>&1
echo "rc=$?"; grep "^== " $OUT/host_overhead_h100_t36.log
