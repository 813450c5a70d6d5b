//! NCCL for CUDA devices: one communicator per rank on the stream Candle computes on, so a
//! sum is ordered after the backward pass that made the gradients without a host wait.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::{Communicator, Error, Launch, Result, buckets, rendezvous};

pub struct Nccl {
    sum: AllReduce,
    device: Device,
    rank: usize,
    world: usize,
    // Under mpirun the id came over MPI, which stays initialised for the run.
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi::Mpi>,
}

impl Nccl {
    pub fn join(launch: &Launch, device: &Device) -> Result<Nccl> {
        let Device::Cuda(cuda) = device else { unreachable!("NCCL is joined for CUDA devices only") };
        let fail = |e: &dyn std::fmt::Debug| Error(format!("NCCL: {e:?}"));
        let own = (launch.rank == 0).then(Id::new).transpose().map_err(|e| fail(&e))?;
        let own_bytes = own.map(|id| id.internal().map(|c| c as u8));
        #[cfg(feature = "mpi")]
        let (bytes, mpi) = if launch.launcher == crate::Launcher::Mpirun {
            let mpi = crate::mpi::Mpi::join(launch)?;
            (mpi.broadcast_from_0(own_bytes.unwrap_or([0; 128])), Some(mpi))
        } else {
            (over_tcp(launch, own_bytes)?, None)
        };
        #[cfg(not(feature = "mpi"))]
        let bytes = over_tcp(launch, own_bytes)?;
        let id = Id::uninit(bytes.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(cuda.cuda_stream(), launch.rank, launch.world, id).map_err(|e| fail(&e))?;
        Ok(Nccl {
            sum: AllReduce(comm),
            device: device.clone(),
            rank: launch.rank,
            world: launch.world,
            #[cfg(feature = "mpi")]
            mpi,
        })
    }
}

/// Rank 0's id to every rank through the TCP rendezvous at `MASTER_ADDR:MASTER_PORT + 1`.
fn over_tcp(launch: &Launch, own: Option<[u8; 128]>) -> Result<[u8; 128]> {
    let Some((addr, port)) = &launch.master else {
        return Err(Error(format!(
            "{} started {} CUDA processes, but MASTER_ADDR and MASTER_PORT are not set: rank 0 sends NCCL's id \
             to the others there (torchrun sets them; under srun, export them, README: \"Several processes\")",
            launch.launcher, launch.world
        )));
    };
    rendezvous::share(launch.rank, launch.world, (addr, rendezvous::port(*port)?), own)
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn engine(&self) -> &'static str {
        "nccl"
    }
    fn sum(&self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::from_slice(values, values.len(), &self.device)?.apply_op1_no_bwd(&self.sum)?;
        values.copy_from_slice(&t.to_vec1::<f64>()?);
        Ok(())
    }
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        // On the device, in f32, one all-reduce per bucket.
        for bucket in buckets(tensors) {
            let flat = tensors[bucket.clone()]
                .iter()
                .map(|t| t.flatten_all()?.to_dtype(DType::F32))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let summed = Tensor::cat(&flat, 0)?.apply_op1_no_bwd(&self.sum)?;
            let mut offset = 0;
            for t in &mut tensors[bucket] {
                let n = t.elem_count();
                *t = summed.narrow(0, offset, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
                offset += n;
            }
        }
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        // Under mpirun, MPI ends every rank; torchrun and srun end the others when one exits.
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.abort(code)
        }
        std::process::exit(code)
    }
}

/// An all-reduce (sum) of a contiguous f32 or f64 tensor, as a Candle op on the device.
struct AllReduce(Comm);

// Safety: NCCL communicators may not be used from two threads at once. The op is applied on
// the training thread only, which owns the communicator; Candle asks ops to be Send + Sync
// but never shares them across threads itself.
unsafe impl Send for AllReduce {}
unsafe impl Sync for AllReduce {}

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums CUDA tensors only")
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = layout.shape().elem_count();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("an all-reduce needs a contiguous tensor")
        };
        let device = storage.device().clone();
        let nccl = |e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}"));
        let out = match storage.dtype() {
            DType::F32 => {
                let src = storage.as_cuda_slice::<f32>()?.slice(start..end);
                // Safety: the all-reduce writes every element before anything reads them.
                let mut dst = unsafe { device.alloc::<f32>(n) }?;
                self.0.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(nccl)?;
                CudaStorage::wrap_cuda_slice(dst, device)
            }
            DType::F64 => {
                let src = storage.as_cuda_slice::<f64>()?.slice(start..end);
                // Safety: as above.
                let mut dst = unsafe { device.alloc::<f64>(n) }?;
                self.0.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(nccl)?;
                CudaStorage::wrap_cuda_slice(dst, device)
            }
            other => candle_core::bail!("NCCL sums f32 and f64 here, not {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }
}
