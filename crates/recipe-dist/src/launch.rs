//! Which rank this process is, read from the variables its launcher set.

use crate::{Error, Result};

/// What started this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Nothing: one process.
    Alone,
    /// Open MPI's or MPICH's `mpirun`/`mpiexec`.
    Mpirun,
    /// PyTorch's `torchrun` (or anything setting its variables).
    Torchrun,
    /// Slurm's `srun`.
    Srun,
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::Alone => "one process",
            Launcher::Mpirun => "mpirun",
            Launcher::Torchrun => "torchrun",
            Launcher::Srun => "srun",
        })
    }
}

/// This process's place among the processes of one training run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    /// Its rank among the processes of its node: the GPU it takes.
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`, where ranks without MPI exchange NCCL's id.
    pub master: Option<(String, u16)>,
}

impl Launch {
    pub fn alone() -> Launch {
        Launch { launcher: Launcher::Alone, rank: 0, world: 1, local_rank: 0, master: None }
    }

    /// Read from this process's environment.
    pub fn from_env() -> Result<Launch> {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// Read from `var`. mpirun's variables come first, then torchrun's, then Slurm's: mpirun
    /// and torchrun run inside Slurm allocations, whose variables then describe the
    /// allocation, not these processes.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        // (launcher, world size, rank, local rank) variables of each convention.
        let conventions = [
            (Launcher::Mpirun, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
            (Launcher::Mpirun, "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
            (Launcher::Torchrun, "WORLD_SIZE", "RANK", "LOCAL_RANK"),
            // srun sets the step's task count; SLURM_NTASKS alone may be a batch script's.
            (Launcher::Srun, "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"),
            (Launcher::Srun, "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
        ];
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error(format!("the launcher's variable {name} is `{v}`, expected a whole number")))
                })
                .transpose()
        };
        let master = match (var("MASTER_ADDR"), var("MASTER_PORT")) {
            (Some(addr), Some(port)) => Some((
                addr,
                port.trim()
                    .parse::<u16>()
                    .map_err(|_| Error(format!("MASTER_PORT is `{port}`, expected a port number")))?,
            )),
            _ => None,
        };
        for (launcher, world, rank, local) in conventions {
            let (Some(world_size), Some(rank_value)) = (number(world)?, number(rank)?) else { continue };
            if world_size == 0 || rank_value >= world_size {
                return Err(Error(format!(
                    "the launcher's variables say rank {rank_value} of {world_size} ({rank}, {world}); a rank must be \
                     below the world size"
                )));
            }
            // Without a local rank, a rank runs alone on its node.
            let local_rank = number(local)?.unwrap_or(0);
            return Ok(Launch { launcher, rank: rank_value, world: world_size, local_rank, master });
        }
        Ok(Launch { master, ..Launch::alone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch> {
        Launch::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn each_launchers_variables_give_rank_world_and_local_rank() {
        let mpirun = launch(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(mpirun.map(|l| (l.launcher, l.rank, l.world, l.local_rank)), Ok((Launcher::Mpirun, 3, 4, 1)));
        let torchrun = launch(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "5"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(
            (torchrun.launcher, torchrun.rank, torchrun.world, torchrun.local_rank),
            (Launcher::Torchrun, 5, 8, 5)
        );
        assert_eq!(torchrun.master, Some(("node7".to_string(), 29500)));
        let srun = launch(&[
            ("SLURM_NTASKS", "16"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert_eq!(srun.map(|l| (l.launcher, l.rank, l.world)), Ok((Launcher::Srun, 1, 2)));
        assert_eq!(launch(&[]), Ok(Launch::alone()));
    }

    #[test]
    fn mpirun_inside_a_slurm_allocation_is_mpirun() {
        let l = launch(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
        ])
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.world), (Launcher::Mpirun, 1, 2));
    }

    #[test]
    fn bad_variables_are_named() {
        let e = launch(&[("WORLD_SIZE", "two"), ("RANK", "0")]).unwrap_err();
        assert!(e.0.contains("WORLD_SIZE is `two`"), "{e}");
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "2")]).unwrap_err();
        assert!(e.0.contains("rank 2 of 2"), "{e}");
        let e = launch(&[("MASTER_ADDR", "a"), ("MASTER_PORT", "http")]).unwrap_err();
        assert!(e.0.contains("MASTER_PORT"), "{e}");
    }
}
