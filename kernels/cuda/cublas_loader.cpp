// cuBLAS, loaded on first use. Linking libcublas (and the 500 MB libcublasLt it pulls in) into
// the ferry binary costs every run ~200 MiB of resident memory for the loader's relocations —
// CPU runs included, whose budget must account for every byte — so ferry defines the handful of
// cuBLAS entry points it calls as trampolines that dlopen the library the first time a CUDA
// engine asks for a handle, and forward. Without the library, each returns
// CUBLAS_STATUS_NOT_INITIALIZED and cublas_load_error() says what was tried.
#include <cublas_v2.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {
namespace {

#define FERRY_STR2(x) #x
#define FERRY_STR(x) FERRY_STR2(x)

struct Library {
  void* handle = nullptr;
  std::string error;
};

const Library& library() {
  static Library lib;
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string soname = "libcublas.so." FERRY_STR(CUBLAS_VER_MAJOR);
    // The toolkit this was built against first (it may be off the loader's path), then the
    // loader's search (LD_LIBRARY_PATH, ld.so.cache).
    for (const std::string& name :
         {std::string(FERRY_CUBLAS_DIR) + "/" + soname, soname, std::string("libcublas.so")}) {
      lib.handle = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib.handle != nullptr) return;
      const char* e = ::dlerror();
      lib.error += (lib.error.empty() ? "" : "; ") + std::string(e ? e : name.c_str());
    }
  });
  return lib;
}

template <class Fn>
Fn* symbol(const char* name) {
  const Library& lib = library();
  if (lib.handle == nullptr) return nullptr;
  return reinterpret_cast<Fn*>(::dlsym(lib.handle, name));
}

}  // namespace

std::string cublas_load_error() { return library().handle ? std::string() : library().error; }

}  // namespace ferry::kernels::cuda

namespace kc = ferry::kernels::cuda;

#define FERRY_CUBLAS_FORWARD(name, params, args)                             \
  extern "C" cublasStatus_t CUBLASWINAPI name params {                       \
    static auto* fn = kc::symbol<cublasStatus_t CUBLASWINAPI params>(#name); \
    return fn ? fn args : CUBLAS_STATUS_NOT_INITIALIZED;                     \
  }

FERRY_CUBLAS_FORWARD(cublasCreate_v2, (cublasHandle_t * handle), (handle))
FERRY_CUBLAS_FORWARD(cublasDestroy_v2, (cublasHandle_t handle), (handle))
FERRY_CUBLAS_FORWARD(cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream),
                     (handle, stream))
FERRY_CUBLAS_FORWARD(cublasSetWorkspace_v2,
                     (cublasHandle_t handle, void* workspace, size_t workspace_bytes),
                     (handle, workspace, workspace_bytes))
FERRY_CUBLAS_FORWARD(cublasSetPointerMode_v2, (cublasHandle_t handle, cublasPointerMode_t mode),
                     (handle, mode))
FERRY_CUBLAS_FORWARD(cublasGemmEx,
                     (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                      int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                      int lda, const void* B, cudaDataType Btype, int ldb, const void* beta,
                      void* C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                      cublasGemmAlgo_t algo),
                     (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                      Ctype, ldc, computeType, algo))
