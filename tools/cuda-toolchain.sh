#!/usr/bin/env bash
# A CUDA 13.0 toolchain for `cargo build --features cuda|nccl` on a machine without one
# (no GPU needed to build): NVIDIA's own PyPI wheels (nvcc, NVVM, the runtime, cuBLAS,
# cuRAND, NVRTC, NCCL) unpacked under DIR, plus a link-time stub of the driver library
# (the real libcuda.so.1 comes with the GPU's driver where the binary runs). Prints the
# line to source; the kernels are built for CUDA_COMPUTE_CAP (default 90: H100/H200).
#
#   bash tools/cuda-toolchain.sh [DIR]        # then: . DIR/env.sh
#   cargo build --release --features nccl     # target/release/wick links cuBLAS etc.
#
# A binary built so runs on a driver that supports CUDA 13.0 (>= 580) with the CUDA 13
# libraries on the loader's path (the toolkit's, or PyTorch's nvidia/* wheels).
set -euo pipefail
dir=$(realpath -m "${1:-$HOME/.cache/wick/cuda-13.0}")
mkdir -p "$dir/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir/wheels" "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
  "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand==10.4.*" "nvidia-nccl-cu13"
for w in "$dir"/wheels/*.whl; do unzip -q -o "$w" -d "$dir"; done
cuda=$dir/nvidia/cu13
for lib in cublas cublasLt cudart nvrtc; do ln -sf "lib$lib.so.13" "$cuda/lib/lib$lib.so"; done
ln -sf libcurand.so.10 "$cuda/lib/libcurand.so"
ln -sf libnccl.so.2 "$dir/nvidia/nccl/lib/libnccl.so"
# The driver API's symbols, as cudarc declares them, for the linker only.
mkdir -p "$dir/stubs"
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
if [ -z "$cudarc" ]; then
  echo "cudarc's source is not in the cargo registry yet: run \`cargo fetch\` first" >&2
  exit 1
fi
grep -ohE "\bfn cu[A-Za-z0-9_]+\(" "$cudarc/src/driver/sys/mod.rs" | sed 's/fn //; s/($//' | sort -u |
  awk '{print "void " $1 "(void){}"}' >"$dir/stubs/cuda.c"
gcc -shared -fPIC -o "$dir/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$dir/stubs/cuda.c"
cat >"$dir/env.sh" <<ENV
export CUDA_HOME=$cuda CUDA_PATH=$cuda
export PATH=$cuda/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$dir/stubs:$cuda/lib:$dir/nvidia/nccl/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CPATH=$cuda/include:$dir/nvidia/nccl/include\${CPATH:+:\$CPATH}
ENV
"$cuda/bin/nvcc" --version | tail -1
echo ". $dir/env.sh"
