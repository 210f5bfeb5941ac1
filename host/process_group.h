// The ranks of a data-parallel run and their collectives: each rank computes the gradient of its
// slice of the global batch, the ranks sum the gradients (and the ELBO totals) in target memory,
// and every rank takes the same optimizer step. NCCL on the GPU (the communicator's unique id
// sent by MPI_Bcast), MPI_Allreduce on the CPU target. Decisions every rank must share (stop on a
// signal, divergence, a failed checkpoint write) are agreed through MPI on the host.
#pragma once

#include <memory>
#include <string>

#include <optional>
#include <string>

#include "device_context.h"
#include "world.h"

namespace vae {

enum class DistBackend { none, mpi, nccl };
const char* dist_backend_name(DistBackend b);
// --dist-backend: "none", "mpi" or "nccl", or "auto" (nullopt); throws vae::Error for another name.
std::optional<DistBackend> parse_dist_backend(const std::string& name);

class ProcessGroup {
 public:
  // backend: nullopt for auto (none for one process; else nccl on the GPU, mpi on the CPU), mpi,
  // nccl (either also with one process, to run the collectives) or none (one process only).
  // Initialises MPI where the backend or the world needs it, and checks MPI's world against the
  // launcher's. Throws vae::Error naming --dist-backend or the launcher on a mismatch.
  ProcessGroup(const World& world, std::optional<DistBackend> backend, Target target);
  ~ProcessGroup();  // MPI_Finalize where this process initialised MPI
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Once the target's context exists: the NCCL communicator (collective over the ranks).
  void bind(const DeviceContext& ctx);

  int rank() const { return world_.rank; }
  int size() const { return world_.size; }
  const World& world() const { return world_; }
  DistBackend backend() const { return backend_; }
  std::string description() const;  // for the run's banner

  // In-place sums over the ranks of count values in target memory, queued on ctx's stream after
  // what is queued there (NCCL: on a stream of its own, ordered by events; CUDA-graph capturable).
  void all_reduce_sum(float* data, size_t count);
  void all_reduce_sum(double* data, size_t count);
  // The largest of the ranks' values; every rank must call it (host, blocking).
  int agree_max(int value);
  // Ends every rank with this status (an error on one rank would leave the others waiting in a
  // collective). Returns only where there is one rank.
  void abort_all(int status);

  struct Impl;  // the NCCL communicator, its stream and events

 private:
  template <typename T>
  void sum(T* data, size_t count);
  World world_;
  DistBackend backend_ = DistBackend::none;
  bool mpi_owned_ = false;  // this process called MPI_Init
  std::unique_ptr<Impl> impl_;
};

// Rows [begin, begin + rows) of a batch of `batch` rows are rank r's of `size`: contiguous, in
// rank order, as even as integer division makes them (a rank may get none of a small last batch).
struct BatchSlice {
  int begin = 0, rows = 0;
};
BatchSlice batch_slice(int batch, int rank, int size);

}  // namespace vae
