#!/usr/bin/env bash
# Lint the `--features cuda,nccl` build on a machine with no CUDA toolkit. Clippy type-checks the
# Rust and links nothing, so candle's CUDA kernels need not really be compiled (that alone
# takes about half an hour of nvcc on two cores): a stand-in nvcc writes every file it is
# asked for empty, and cudarc is told the toolkit's version. Its own target folder keeps
# those empty kernels away from real builds; `scripts/build-cuda.sh` builds the real thing.
set -euo pipefail
cd "$(dirname "$0")/.."
stub=$PWD/target/nvcc-stand-in
mkdir -p "$stub/bin" "$stub/include"
cat >"$stub/bin/nvcc" <<'NVCC'
#!/usr/bin/env bash
# nvcc for type-checking only: answers what build scripts ask and writes empty outputs.
case "${1:-}" in
--version) echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0 ;;
--list-gpu-code) echo sm_90; exit 0 ;;
--list-gpu-arch) echo compute_90; exit 0 ;;
esac
out="" dir="" prev=""
for arg in "$@"; do
    case "$prev" in -o) out=$arg ;; --output-directory) dir=$arg ;; esac
    prev=$arg
done
[ -n "$out" ] && : >"$out"
if [ -n "$dir" ]; then
    for arg in "$@"; do
        case "$arg" in *.cu) : >"$dir/$(basename "${arg%.cu}").ptx" ;; esac
    done
fi
exit 0
NVCC
chmod +x "$stub/bin/nvcc"
export NVCC=$stub/bin/nvcc CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export PATH=$stub/bin:$PATH
# NCCL too (cudarc loads it at run time), and its id exchange over MPI where MPI is installed.
features=cuda,nccl
command -v mpicc >/dev/null && features=$features,mpi
cargo clippy --workspace --all-targets --features "$features" --target-dir target/cuda-lint -- -D warnings
