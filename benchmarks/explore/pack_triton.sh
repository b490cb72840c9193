# Pack a PyPI Triton for the device machine, whose image has Triton 3.6 and no package registry, so that kernels
# can be timed under the Triton that CI and most users install (3.8+). Run here (a machine with pip access):
#   bash benchmarks/explore/pack_triton.sh 3.9.0 .devrun/t39.tar.xz
# then on the device (the tarball carried in a git-ignored folder):
#   mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
#   PYTHONPATH=/tmp/t39:$PWD python3 ...
# The device's python3 is 3.12 (the wheel is cp312-abi3). What is dropped to fit the carry limit (64 MiB): the
# profiler (proton, CUPTI), the AMD backend's libraries (its Python files stay: the installed 3.6's entry points
# name it), nvdisasm, cuobjdump, and the legacy ptxas (sm < 90); libtriton.so is stripped. sm90 uses ptxas-blackwell.
set -eu
ver=${1:-3.9.0}
out=$(realpath -m "${2:-.devrun/t39.tar.xz}")
work=$(mktemp -d)
pip download "triton==$ver" --python-version 3.12 --only-binary=:all: --platform manylinux_2_27_x86_64 --no-deps \
  -q -d "$work"
cd "$work" && python3 -m zipfile -e triton-*.whl x >/dev/null && cd x/triton
rm -rf _C/libproton.so profiler backends/amd/lib/* backends/nvidia/lib/cupti* \
  backends/nvidia/bin/nvdisasm backends/nvidia/bin/cuobjdump backends/nvidia/bin/ptxas
strip --strip-unneeded _C/libtriton.so
cd .. && tar cf - triton | xz -T0 -6 > "$out"
rm -rf "$work"
ls -la "$out"
