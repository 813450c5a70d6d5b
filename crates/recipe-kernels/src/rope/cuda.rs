//! The CUDA kernel's launch (`kernels.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaDType;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

use crate::cuda::{Module, contiguous, count, kernel, launch, per_element, unfilled};

const KERNELS: Module = Module { name: "rope", source: include_str!("kernels.cu"), arch: None };

/// `x` `[B, H, T, hd]` of T, read through its strides (its rows of unit stride), rotated by
/// the f32 `cos`, `sin` `[B, 1, T, hd/2]`; `sign` −1 rotates back.
pub(super) fn rotate<T: CudaDType + DeviceRepr>(
    (x, xl): (&CudaStorage, &Layout),
    (cos, cl): (&CudaStorage, &Layout),
    (sin, sl): (&CudaStorage, &Layout),
    sign: f32,
) -> Result<CudaStorage> {
    let device = &x.device;
    let (b, heads, t, hd) = xl.shape().dims4()?;
    let &[sb, sh, st, 1] = xl.stride() else {
        candle_core::bail!("rope: x needs rows of unit stride, has strides {:?}", xl.stride())
    };
    let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
    let (cs, ss) = (contiguous::<f32>(cos, cl)?, contiguous::<f32>(sin, sl)?);
    let pairs = b * heads * t * (hd / 2);
    let mut y = unfilled::<T>(device, 2 * pairs)?;
    let strides = [sb as u64, sh as u64, st as u64];
    let (heads32, t32, half32, pairs32) = (count(heads)?, count(t)?, count(hd / 2)?, count(pairs)?);
    let f = kernel(device, &KERNELS, "rope_rotate", x.dtype())?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&f);
    args.arg(&xs).arg(&strides[0]).arg(&strides[1]).arg(&strides[2]).arg(&cs).arg(&ss).arg(&mut y);
    args.arg(&heads32).arg(&t32).arg(&half32).arg(&pairs32).arg(&sign);
    launch(args, per_element(pairs)?)?;
    Ok(CudaStorage::wrap_cuda_slice(y, device.clone()))
}
