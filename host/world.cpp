#include "world.h"

#include <cstdlib>

#include "runtime/check.h"

namespace vae {

namespace {

int read_int(const EnvLookup& env, const char* name) {
  const char* v = env(name);
  const std::string s = v ? v : "";
  size_t used = 0;
  long value = -1;
  try {
    value = std::stol(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size() || value < 0 || value > (1 << 24)) {
    throw Error("launcher variable " + std::string(name) + "='" + printable(s) + "' is not a non-negative number");
  }
  return static_cast<int>(value);
}

World read_world(const EnvLookup& env, const char* launcher, const char* rank, const char* size, const char* local,
                 const char* local_size) {
  World w;
  w.launcher = launcher;
  w.rank = read_int(env, rank);
  w.size = read_int(env, size);
  w.local_rank = env(local) ? read_int(env, local) : 0;
  w.local_size = 0;
  if (const char* v = env(local_size)) {  // Slurm's "4(x2),3" form: the first node's count
    const std::string s = v;
    const size_t digits = s.find_first_not_of("0123456789");
    const std::string head = s.substr(0, digits);
    w.local_size = read_int([&](const char*) { return head.c_str(); }, local_size);
  }
  if (w.size < 1 || w.rank >= w.size) {
    throw Error(std::string("launcher variables ") + rank + "=" + std::to_string(w.rank) + " and " + size + "=" +
                std::to_string(w.size) + " (" + launcher + ") do not name a rank of the world");
  }
  return w;
}

}  // namespace

World world_from_environment(const EnvLookup& env) {
  if (env("OMPI_COMM_WORLD_SIZE") || env("OMPI_COMM_WORLD_RANK")) {
    return read_world(env, "Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                      "OMPI_COMM_WORLD_LOCAL_SIZE");
  }
  if (env("PMI_SIZE") || env("PMI_RANK"))
    return read_world(env, "MPICH", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS");
  // srun sets SLURM_STEP_NUM_TASKS for the tasks of its job step; a batch script (no srun) is one
  // process even where SLURM_NTASKS says how many the job may start.
  if (env("SLURM_PROCID") && env("SLURM_STEP_NUM_TASKS")) {
    return read_world(env, "Slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID",
                      "SLURM_STEP_TASKS_PER_NODE");
  }
  if (env("SLURM_PROCID") && env("SLURM_NTASKS") && env("SLURM_STEP_ID")) {
    return read_world(env, "Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE");
  }
  return World{};
}

World world_from_environment() {
  return world_from_environment([](const char* name) { return std::getenv(name); });
}

void check_mpi_world(const World& launcher, int mpi_rank, int mpi_size) {
  if (launcher.launcher == "none" || (mpi_size == launcher.size && mpi_rank == launcher.rank)) return;
  throw Error(launcher.launcher + " started " + std::to_string(launcher.size) + " ranks (this is rank " +
              std::to_string(launcher.rank) + ") but MPI sees a world of " + std::to_string(mpi_size) + " (rank " +
              std::to_string(mpi_rank) +
              "): this vae's MPI library is not the launcher's; use the mpirun of the MPI it was built with");
}

}  // namespace vae
