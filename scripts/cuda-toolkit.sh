#!/usr/bin/env bash
# Install the CUDA 13.0 toolkit from PyPI into a virtual environment (no root, no GPU needed)
# and NCCL, and print the environment a `--features cuda,nccl` build needs; use it as
#     eval "$(scripts/cuda-toolkit.sh)"
# The wheels ship no libcuda.so, which the link step needs: a stub that defines every driver
# entry point cudarc declares (each returning CUDA_ERROR_STUB_LIBRARY) stands in for it; the
# real driver library replaces it at run time on a machine with a GPU. nvidia-nvvm is pinned
# because cudarc 0.19 rejects toolkits newer than 13.4. CUDA_VENV (default
# ~/.cache/recipe/cuda-13.0) is where it goes; a second run reuses it.
set -euo pipefail
venv=${CUDA_VENV:-$HOME/.cache/recipe/cuda-13.0}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-nccl-cu13==2.32.3 >&2
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
(cd "$cuda/lib" && for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done &&
    ln -sf libcurand.so.10 libcurand.so)
nccl=$("$venv/bin/python" -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))')
ln -sf libnccl.so.2 "$nccl/libnccl.so"
if [ ! -e "$cuda/lib/stubs/libcuda.so" ]; then
    # cargo fetch has the cudarc sources, whose driver bindings name every entry point.
    cargo fetch --quiet >&2
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
    mkdir -p "$cuda/lib/stubs"
    grep -oE '^\s+(pub )?fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/.*fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
        awk 'BEGIN { print "/* libcuda stand-in for linking only */" } { print "int " $1 "(void) { return 34; }" }' \
            >"$cuda/lib/stubs/libcuda.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$cuda/lib/stubs/libcuda.c"
    ln -sf libcuda.so "$cuda/lib/stubs/libcuda.so.1"
fi
# Hopper (H100, H200) unless told otherwise: there is no GPU here to ask.
echo "export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
echo "export PATH=$cuda/bin:\$PATH LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs:$nccl\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
echo "export LD_LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs:$nccl\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
