//! `recipe-dist` is what data-parallel training needs from outside one process: which rank
//! this process is, of how many, and which local device it takes, read from the launcher's
//! conventions (mpirun's, torchrun's, Slurm's; [`Launch`]); and the [`Communicator`] the
//! training step sums through — the losses and counts of the step, and the gradients in
//! buckets. The collectives themselves are an existing engine's: MPI for CPU processes
//! (feature `mpi`) and NCCL for CUDA devices (feature `nccl`), whose unique id travels over
//! MPI or, without it, over a one-message TCP rendezvous at `MASTER_ADDR:MASTER_PORT`. One
//! process alone is [`Solo`], and costs nothing. Nothing here knows models or recipes.

mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
// The NCCL path's, and tested without it.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
mod rendezvous;

use candle_core::{DType, Device, Tensor};

pub use launch::{Launch, Launcher};

/// Why ranks could not be joined or a collective failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error(format!("collective: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The collectives a data-parallel step needs. Every rank calls them in the same order with
/// the same shapes; a sum is element-wise over ranks and leaves the same values on each.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The engine's name, for logs and `sessions.jsonl`.
    fn engine(&self) -> &'static str;
    /// Sum a few host numbers over ranks, in place (losses, token counts, flags).
    fn sum(&self, values: &mut [f64]) -> Result<()>;
    /// Sum every tensor over ranks (gradients), in place, bucket by bucket.
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()>;
    /// Wait until every rank has come here.
    fn barrier(&self) -> Result<()> {
        self.sum(&mut [0.0])
    }
    /// Whether this rank writes the run directory (checkpoints, metrics, results, the lock).
    fn leads(&self) -> bool {
        self.rank() == 0
    }
    /// End this process with `code`, and every other rank with it: a rank that fails must not
    /// leave the others waiting for it in the next sum (nor itself wait for them in MPI's
    /// orderly shutdown).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// One process: every collective is the identity.
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "none"
    }
    fn sum(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn sum_tensors(&self, _: &mut [Tensor]) -> Result<()> {
        Ok(())
    }
}

/// Elements of one all-reduce: large enough that a bucket's latency is small against its
/// transfer, small enough that a bucket's copy is not a second set of gradients.
pub const BUCKET_ELEMENTS: usize = 1 << 22;

/// Consecutive runs of `tensors` of at most [`BUCKET_ELEMENTS`] elements together (a larger
/// tensor is a bucket alone), as index ranges.
pub fn buckets(tensors: &[Tensor]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        let n = t.elem_count();
        if i > start && size + n > BUCKET_ELEMENTS {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// Sum `tensors` over ranks through host memory: each bucket is flattened into one f32 buffer
/// (bf16 and f16 gradients are summed in f32), reduced by `reduce`, and written back in each
/// tensor's shape, dtype and device.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))] // MPI's, and the tests'
pub(crate) fn sum_through_host(tensors: &mut [Tensor], mut reduce: impl FnMut(&mut [f32]) -> Result<()>) -> Result<()> {
    for bucket in buckets(tensors) {
        let mut flat = Vec::with_capacity(tensors[bucket.clone()].iter().map(Tensor::elem_count).sum());
        for t in &tensors[bucket.clone()] {
            flat.extend(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        reduce(&mut flat)?;
        let mut offset = 0;
        for t in &mut tensors[bucket] {
            let n = t.elem_count();
            let summed = Tensor::from_slice(&flat[offset..offset + n], t.shape(), &Device::Cpu)?;
            *t = summed.to_dtype(t.dtype())?.to_device(t.device())?;
            offset += n;
        }
    }
    Ok(())
}

/// The communicator for this process as its launcher started it, for training on `device`:
/// [`Solo`] when no launcher started it; MPI for CPU processes; NCCL for CUDA devices. A
/// launcher's single process joins its engine too, so a world of one runs the same path.
pub fn join(launch: &Launch, device: &Device) -> Result<Box<dyn Communicator>> {
    if launch.launcher == Launcher::Alone {
        return Ok(Box::new(Solo));
    }
    match device {
        Device::Cpu => join_mpi(launch),
        Device::Cuda(_) => join_nccl(launch, device),
        Device::Metal(_) if launch.world == 1 => Ok(Box::new(Solo)),
        Device::Metal(_) => Err(Error(format!(
            "{} started {} processes, but Metal has no collective engine; train on one process",
            launch.launcher, launch.world
        ))),
    }
}

#[cfg(feature = "mpi")]
fn join_mpi(launch: &Launch) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(mpi::Mpi::join(launch)?))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(launch: &Launch) -> Result<Box<dyn Communicator>> {
    if launch.world == 1 {
        return Ok(Box::new(Solo));
    }
    Err(Error(format!(
        "{} started {} processes on the CPU, but this build of recipe has no MPI; build it with \
         `--features mpi` (README: \"Several processes\")",
        launch.launcher, launch.world
    )))
}

#[cfg(feature = "nccl")]
fn join_nccl(launch: &Launch, device: &Device) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(nccl::Nccl::join(launch, device)?))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(launch: &Launch, _: &Device) -> Result<Box<dyn Communicator>> {
    if launch.world == 1 {
        return Ok(Box::new(Solo));
    }
    Err(Error(format!(
        "{} started {} processes on CUDA devices, but this build of recipe has no NCCL; build it \
         with `--features cuda,nccl` (README: \"Several processes\")",
        launch.launcher, launch.world
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_in_order_and_hold_a_large_one_alone() {
        let sizes = [10, BUCKET_ELEMENTS - 20, 5, 30, BUCKET_ELEMENTS + 1, 7];
        let tensors: Vec<Tensor> = sizes.iter().map(|&n| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()).collect();
        assert_eq!(buckets(&tensors), vec![0..3, 3..4, 4..5, 5..6]);
        assert!(buckets(&[]).is_empty());
    }

    #[test]
    fn a_sum_through_the_host_keeps_shapes_and_dtypes() {
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let mut tensors = vec![a.clone(), b.clone()];
        // Two ranks holding the same values.
        sum_through_host(&mut tensors, |flat| {
            flat.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        })
        .unwrap();
        assert_eq!(tensors[0].to_vec2::<f32>().unwrap(), (a * 2.0).unwrap().to_vec2::<f32>().unwrap());
        assert_eq!(tensors[1].dtype(), DType::BF16);
        assert_eq!(tensors[1].to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), vec![3.0, -4.0]);
    }
}
