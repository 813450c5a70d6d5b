//! MPI for CPU processes started by mpirun (or srun with MPI's PMIx).

use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::{Communicator as _, CommunicatorCollectives, Root};
use candle_core::Tensor;

use crate::{Communicator, Error, Launch, Result, sum_through_host};

pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    // Finalizes MPI when dropped, after `world`.
    _universe: Universe,
}

impl Mpi {
    pub fn join(launch: &Launch) -> Result<Mpi> {
        let universe =
            ::mpi::initialize().ok_or_else(|| Error("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (launch.rank, launch.world) {
            return Err(Error(format!(
                "{} says this is rank {} of {}, but MPI sees rank {rank} of {size}: start the processes with \
                 mpirun, or with srun --mpi=pmix under Slurm",
                launch.launcher, launch.rank, launch.world
            )));
        }
        Ok(Mpi { world, rank, size, _universe: universe })
    }

    /// Rank 0's `bytes` on every rank.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))] // NCCL's id exchange
    pub fn broadcast_from_0<const N: usize>(&self, mut bytes: [u8; N]) -> [u8; N] {
        self.world.process_at_rank(0).broadcast_into(&mut bytes[..]);
        bytes
    }

    fn all_reduce<T: ::mpi::datatype::Equivalence + Copy>(&self, values: &mut [T]) {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn engine(&self) -> &'static str {
        "mpi"
    }
    fn sum(&self, values: &mut [f64]) -> Result<()> {
        self.all_reduce(values);
        Ok(())
    }
    fn sum_tensors(&self, tensors: &mut [Tensor]) -> Result<()> {
        sum_through_host(tensors, |flat| {
            self.all_reduce(flat);
            Ok(())
        })
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
