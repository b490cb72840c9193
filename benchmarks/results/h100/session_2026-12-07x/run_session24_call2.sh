#!/usr/bin/env bash
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
for list in fp8_tests_not_run gpu_tests_not_run; do
  mapfile -t ids < .devrun/rem/$list.txt
  timeout -k 3 ${T_TESTS:-270} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/${list}_rest.log 2>&1
  echo "$list rc=$?: PASSED $(grep -c PASSED $OUT/${list}_rest.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/${list}_rest.log)"
done
