// Which process of a multi-process run this is, from the launcher's environment: Open MPI's
// mpirun, MPICH's (Hydra) mpiexec or Slurm's srun. One process when none of them started it.
#pragma once

#include <functional>
#include <string>

namespace vae {

struct World {
  int rank = 0;        // 0 .. size − 1
  int local_rank = 0;  // among the ranks of this node: picks the GPU
  int size = 1;
  int local_size = 1;             // ranks on this node (0: the launcher does not say)
  std::string launcher = "none";  // "Open MPI", "MPICH" or "Slurm"
};

// Reads OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE} (Open MPI), else PMI_{RANK,SIZE},
// MPI_LOCALRANKID and MPI_LOCALNRANKS (MPICH), else SLURM_PROCID, SLURM_STEP_NUM_TASKS (or
// SLURM_NTASKS), SLURM_LOCALID and the first count of SLURM_STEP_TASKS_PER_NODE (srun). Throws vae::Error naming the
// variable when a value is not a number or a rank is not below the size.
using EnvLookup = std::function<const char*(const char*)>;
World world_from_environment(const EnvLookup& env);
World world_from_environment();  // the process's own environment

// MPI's view against the launcher's: an MPI library that is not the launcher's initialises every
// process as a world of one, and N copies would train alone and all exit 0. Throws vae::Error
// naming both sizes.
void check_mpi_world(const World& launcher, int mpi_rank, int mpi_size);

}  // namespace vae
