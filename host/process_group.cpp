#include "process_group.h"

#include <climits>
#include <cstdlib>

#include "runtime/check.h"

#if VAE_WITH_MPI
#define OMPI_SKIP_MPICXX 1  // the C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif
#if VAE_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#define VAE_NCCL_CHECK(call)                                                            \
  do {                                                                                  \
    const ncclResult_t vae_nccl_status = (call);                                        \
    if (vae_nccl_status != ncclSuccess)                                                 \
      throw ::vae::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) +       \
                         ": " #call " failed: " + ncclGetErrorString(vae_nccl_status)); \
  } while (0)
#endif

namespace vae {

const char* dist_backend_name(DistBackend b) {
  switch (b) {
    case DistBackend::mpi:
      return "mpi";
    case DistBackend::nccl:
      return "nccl";
    default:
      return "none";
  }
}

BatchSlice batch_slice(int batch, int rank, int size) {
  const long long begin = static_cast<long long>(batch) * rank / size;
  const long long end = static_cast<long long>(batch) * (rank + 1) / size;
  return {static_cast<int>(begin), static_cast<int>(end - begin)};
}

struct ProcessGroup::Impl {
#if VAE_WITH_NCCL
  ncclComm_t comm = nullptr;
  cudaStream_t compute = nullptr, comm_stream = nullptr;
  cudaEvent_t ready = nullptr, done = nullptr;
#endif
  const DeviceContext* ctx = nullptr;
};

std::optional<DistBackend> parse_dist_backend(const std::string& name) {
  if (name == "auto") return std::nullopt;
  for (DistBackend b : {DistBackend::none, DistBackend::mpi, DistBackend::nccl})
    if (name == dist_backend_name(b)) return b;
  throw Error("--dist-backend: expected auto, nccl, mpi or none, got '" + printable(name) + "'");
}

ProcessGroup::ProcessGroup(const World& world, std::optional<DistBackend> backend, Target target)
    : world_(world), impl_(std::make_unique<Impl>()) {
  if (backend) {
    backend_ = *backend;
  } else {
    backend_ = world.size == 1 ? DistBackend::none : target == Target::cuda ? DistBackend::nccl : DistBackend::mpi;
  }
  const std::string ranks = std::to_string(world.size) + " ranks (" + world.launcher + ")";
  if (backend_ == DistBackend::none && world.size > 1)
    throw Error("--dist-backend none: the launcher started " + ranks + "; none takes one process");
  if (backend_ == DistBackend::mpi && target == Target::cuda) {
    throw Error("--dist-backend mpi: gradients on the GPU are summed by NCCL (--dist-backend nccl); mpi is the CPU's");
  }
  if (backend_ == DistBackend::nccl && target != Target::cuda)
    throw Error("--dist-backend nccl: NCCL needs the GPU (--device cuda); the CPU's backend is mpi");
#if !VAE_WITH_NCCL
  if (backend_ == DistBackend::nccl)
    throw Error("--dist-backend nccl: this vae was built without NCCL (configure with NCCL_ROOT pointing at it)");
#endif
  const bool needs_mpi = backend_ == DistBackend::mpi || world.size > 1;
#if VAE_WITH_MPI
  if (needs_mpi) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      if (MPI_Init(nullptr, nullptr) != MPI_SUCCESS) throw Error("MPI_Init failed (" + ranks + ")");
      mpi_owned_ = true;
    }
    int mpi_rank = 0, mpi_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
    check_mpi_world(world, mpi_rank, mpi_size);
    world_.rank = mpi_rank;
    world_.size = mpi_size;
  }
#else
  if (needs_mpi) {
    throw Error(world.size > 1 ? "the launcher started " + ranks + ", but this vae was built without MPI (VAE_WITH_MPI)"
                               : "--dist-backend mpi: this vae was built without MPI (VAE_WITH_MPI)");
  }
#endif
}

ProcessGroup::~ProcessGroup() {
#if VAE_WITH_NCCL
  if (impl_->comm) ncclCommDestroy(impl_->comm);
  if (impl_->ready) cudaEventDestroy(impl_->ready);
  if (impl_->done) cudaEventDestroy(impl_->done);
  if (impl_->comm_stream) cudaStreamDestroy(impl_->comm_stream);
#endif
#if VAE_WITH_MPI
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (mpi_owned_ && !finalized) MPI_Finalize();
#endif
}

void ProcessGroup::bind(const DeviceContext& ctx) {
  impl_->ctx = &ctx;
#if VAE_WITH_NCCL
  if (backend_ != DistBackend::nccl) return;
  ncclUniqueId id{};
  if (rank() == 0) VAE_NCCL_CHECK(ncclGetUniqueId(&id));
#if VAE_WITH_MPI
  if (size() > 1) MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
#endif
  VAE_NCCL_CHECK(ncclCommInitRank(&impl_->comm, size(), id, rank()));
  impl_->compute = static_cast<cudaStream_t>(ctx.stream());
  VAE_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->comm_stream, cudaStreamNonBlocking));
  VAE_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->ready, cudaEventDisableTiming));
  VAE_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->done, cudaEventDisableTiming));
#endif
}

std::string ProcessGroup::description() const {
  if (backend_ == DistBackend::none) return "";
  return std::to_string(size()) + (size() == 1 ? " rank" : " ranks") +
         (world_.launcher == "none" ? std::string() : " from " + world_.launcher) + ", " + dist_backend_name(backend_);
}

namespace {
#if VAE_WITH_NCCL
template <typename T>
void nccl_sum(ProcessGroup::Impl& im, T* data, size_t count, ncclDataType_t type) {
  VAE_REQUIRE(im.comm, "ProcessGroup: bind() before a collective");
  VAE_CUDA_CHECK(cudaEventRecord(im.ready, im.compute));
  VAE_CUDA_CHECK(cudaStreamWaitEvent(im.comm_stream, im.ready, 0));
  VAE_NCCL_CHECK(ncclAllReduce(data, data, count, type, ncclSum, im.comm, im.comm_stream));
  VAE_CUDA_CHECK(cudaEventRecord(im.done, im.comm_stream));
  VAE_CUDA_CHECK(cudaStreamWaitEvent(im.compute, im.done, 0));
}
#endif
#if VAE_WITH_MPI
template <typename T>
void mpi_sum(T* data, size_t count, MPI_Datatype type) {
  for (size_t done = 0; done < count;) {  // MPI counts are ints
    const int n = static_cast<int>(std::min<size_t>(count - done, INT_MAX));
    if (MPI_Allreduce(MPI_IN_PLACE, data + done, n, type, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
      throw Error("MPI_Allreduce failed");
    done += static_cast<size_t>(n);
  }
}
#endif
}  // namespace

namespace {
template <typename T>
struct Types;
template <>
struct Types<float> {
#if VAE_WITH_NCCL
  static constexpr ncclDataType_t nccl = ncclFloat32;
#endif
#if VAE_WITH_MPI
  static MPI_Datatype mpi() { return MPI_FLOAT; }
#endif
};
template <>
struct Types<double> {
#if VAE_WITH_NCCL
  static constexpr ncclDataType_t nccl = ncclFloat64;
#endif
#if VAE_WITH_MPI
  static MPI_Datatype mpi() { return MPI_DOUBLE; }
#endif
};
}  // namespace

template <typename T>
void ProcessGroup::sum(T* data, size_t count) {
  if (count == 0) return;
#if VAE_WITH_NCCL
  if (backend_ == DistBackend::nccl) return nccl_sum(*impl_, data, count, Types<T>::nccl);
#endif
#if VAE_WITH_MPI
  if (backend_ == DistBackend::mpi) {
    impl_->ctx->synchronize();  // the CPU target runs streams in order already; this keeps it explicit
    return mpi_sum(data, count, Types<T>::mpi());
  }
#endif
  (void)data;
}

void ProcessGroup::all_reduce_sum(float* data, size_t count) { sum(data, count); }
void ProcessGroup::all_reduce_sum(double* data, size_t count) { sum(data, count); }

int ProcessGroup::agree_max(int value) {
  if (size() == 1) return value;
#if VAE_WITH_MPI
  int out = value;
  if (MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
    throw Error("MPI_Allreduce failed");
  return out;
#else
  return value;
#endif
}

void ProcessGroup::abort_all(int status) {
#if VAE_WITH_MPI
  if (size() > 1) MPI_Abort(MPI_COMM_WORLD, status);
#endif
  (void)status;
}

}  // namespace vae
