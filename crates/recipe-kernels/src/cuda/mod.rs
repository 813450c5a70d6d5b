//! The CUDA side of the fused ops: each op's CUDA C (`<op>/kernels.cu`, and attention's
//! `mma.cu`, each compiled after `common.cuh`) is compiled by NVRTC the first time a process
//! launches one of its kernels, then loaded once per device; the helpers here take operands out
//! of Candle's storage and launch.
//! Kernels exist for f32, bf16 and f16 (`NAME_f32`, `NAME_bf16`, `NAME_f16`) and compute in f32.
//! Reductions run in a fixed order per block, never through atomics, so results repeat bit for
//! bit and resume stays exact.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result};

/// What every kernel source starts with.
const COMMON: &str = include_str!("common.cuh");

/// Threads per block of the kernels that give a block to each row (`BLOCK` in `common.cuh`).
pub(crate) const BLOCK: u32 = 256;

/// A module of kernels: its name (unique per op) and its CUDA C.
pub(crate) struct Module {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    /// The virtual architecture it needs (its first line says so too, `// arch: compute_80`,
    /// for scripts/check-cuda-kernels.py); NVRTC's default when none.
    pub(crate) arch: Option<&'static str>,
}

/// The PTX of each module compiled so far, shared by every device (for a virtual architecture,
/// which the driver compiles for whatever GPU loads it). Kept for the process's life (a few
/// modules, compiled once each), so a launch reads it without a copy.
fn compiled(module: &Module) -> Result<&'static str> {
    static PTX: OnceLock<Mutex<HashMap<&'static str, &'static str>>> = OnceLock::new();
    let mut cache = PTX.get_or_init(Default::default).lock().expect("no thread panics holding the PTX cache");
    if let Some(ptx) = cache.get(module.name) {
        return Ok(ptx);
    }
    let options =
        nvrtc::CompileOptions { name: Some(format!("{}.cu", module.name)), arch: module.arch, ..Default::default() };
    let ptx = nvrtc::compile_ptx_with_opts(format!("{COMMON}\n{}", module.source), options)
        .map_err(|e| candle_core::Error::Cuda(format!("compiling the {} kernels: {e}", module.name).into()))?
        .to_src();
    let ptx: &'static str = Box::leak(ptx.into_boxed_str());
    cache.insert(module.name, ptx);
    Ok(ptx)
}

/// The device's compute capability, major version first.
pub(crate) fn compute_capability(device: &CudaDevice) -> Result<(i32, i32)> {
    device.cuda_stream().context().compute_capability().w()
}

/// Kernel `name` of `module` for elements of `dtype` (`name_f32`, `name_bf16`, `name_f16`).
pub(crate) fn kernel(device: &CudaDevice, module: &Module, name: &str, dtype: DType) -> Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => candle_core::bail!("the {} kernels take f32, bf16 or f16, not {other:?}", module.name),
    };
    let ptx = compiled(module)?;
    Ok(device.get_or_load_custom_func(&format!("{name}_{suffix}"), module.name, ptx)?.into_cuda_function())
}

/// Launch a kernel with the arguments pushed on `args`
/// (`device.cuda_stream().launch_builder(&f)`); every launch's result is checked. A grid
/// without blocks (an empty tensor) launches nothing.
pub(crate) fn launch(mut args: LaunchArgs<'_>, config: LaunchConfig) -> Result<()> {
    if config.grid_dim.0 == 0 || config.grid_dim.1 == 0 {
        return Ok(());
    }
    // Safety: each op pushes the arguments its kernel declares, in order and of their types,
    // and sizes the grid to the buffers it passes.
    unsafe { args.launch(config) }.w()?;
    Ok(())
}

/// One block of `BLOCK` threads per row.
pub(crate) fn per_row(rows: usize) -> Result<LaunchConfig> {
    blocks(rows, 1)
}

/// A grid of `x` × `y` blocks of `BLOCK` threads.
pub(crate) fn blocks(x: usize, y: usize) -> Result<LaunchConfig> {
    if y > 65535 {
        candle_core::bail!("{y} blocks are more than a CUDA grid's second dimension holds");
    }
    Ok(LaunchConfig { grid_dim: (grid(x)?, y as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// One thread per element, `BLOCK` to a block.
pub(crate) fn per_element(n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (grid(n.div_ceil(BLOCK as usize))?, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn grid(blocks: usize) -> Result<u32> {
    match u32::try_from(blocks) {
        Ok(b) if b < i32::MAX as u32 => Ok(b),
        _ => candle_core::bail!("{blocks} blocks are more than a CUDA grid holds"),
    }
}

/// A count as the kernels take it.
pub(crate) fn count(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{n} elements are more than the kernels index")))
}

/// The elements of a contiguous tensor, from its offset on.
pub(crate) fn contiguous<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("fused kernels need contiguous inputs"),
    }
}

/// A buffer of `n` elements that the kernel writes in full before anything reads it (at least
/// one element: the driver allocates no empty buffers).
pub(crate) fn unfilled<T: DeviceRepr>(device: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // Safety: the caller's kernel writes every element (the same promise as the CPU's `unfilled`).
    unsafe { device.alloc::<T>(n.max(1)) }
}

/// `f::<T>(args)` for the element type of `dtype` (f32, bf16 or f16):
/// `for_dtype!(dtype, cuda::forward(args))`.
macro_rules! for_dtype {
    ($dtype:expr, $($f:ident)::+ ($($arg:expr),* $(,)?)) => {
        match $dtype {
            candle_core::DType::F32 => $($f)::+::<f32>($($arg),*),
            candle_core::DType::BF16 => $($f)::+::<half::bf16>($($arg),*),
            candle_core::DType::F16 => $($f)::+::<half::f16>($($arg),*),
            other => Err(candle_core::Error::Msg(format!("CUDA kernels take f32, bf16 or f16, not {other:?}"))),
        }
    };
}
pub(crate) use for_dtype;
