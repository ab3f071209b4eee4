#include "backend/cuda/bf16_gemm.h"

#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

void check(cublasStatus_t st, const char* what) {
    if (st != CUBLAS_STATUS_SUCCESS)
        throw Error(fmt::format("bf16 GEMM: {} failed: {} ({})", what, cublasLtGetStatusName(st),
                                cublasLtGetStatusString(st)));
}

// Row-major y[M,N] = x[M,K]·w[N,K]ᵀ is, column-major, yᵀ[N,M] = w·xᵀ: A = w (transposed, K x N
// column-major with ld = ldw), B = x (K x M column-major, ld = ldx), D = yᵀ (N x M, ld = ldy). The
// bias epilogue adds a vector over D's rows, i.e. over n.
struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo{};
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

struct DeviceState {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    std::map<Key, Plan> plans;
};

std::mutex g_mu;
std::map<int, DeviceState> g_devices;

Plan make_plan(cublasLtHandle_t handle, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldw, int64_t ldy,
               bool has_bias) {
    Plan p;
    check(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)), "set TRANSA");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)), "set TRANSB");
    const cublasLtEpilogue_t epi = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
    if (has_bias) {
        const cudaDataType_t bt = CUDA_R_16BF;
        check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)),
              "set BIAS_DATA_TYPE");
    }
    check(cublasLtMatrixLayoutCreate(&p.la, CUDA_R_16BF, uint64_t(k), uint64_t(n), ldw), "layout A");
    check(cublasLtMatrixLayoutCreate(&p.lb, CUDA_R_16BF, uint64_t(k), uint64_t(m), ldx), "layout B");
    check(cublasLtMatrixLayoutCreate(&p.ld, CUDA_R_16BF, uint64_t(n), uint64_t(m), ldy), "layout D");

    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t ws = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
          "preference workspace");
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, &res,
                                                             &found);
    cublasLtMatmulPreferenceDestroy(pref);
    check(st, "cublasLtMatmulAlgoGetHeuristic");
    if (found == 0)
        throw Error(fmt::format("bf16 GEMM: cuBLASLt has no algorithm for M={} N={} K={} (ldx={} ldw={} ldy={})", m,
                                n, k, ldx, ldw, ldy));
    p.algo = res.algo;
    return p;
}

}  // namespace

void bf16_gemm(const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y, int64_t ldy,
               int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldw < k || ldy < n)
        throw ShapeError(fmt::format("bf16 GEMM: bad shape M={} N={} K={} ldx={} ldw={} ldy={}", m, n, k, ldx, ldw,
                                     ldy));
    if (!x || !w || !y) throw ShapeError("bf16 GEMM: null operand pointer");
    if (m == 0) return;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) throw Error("bf16 GEMM: no current CUDA device");

    // One lock over the whole call: the cached descriptor gets this call's bias pointer, and
    // cublasLtMatmul reads it while enqueueing (host work only, a few microseconds).
    std::lock_guard<std::mutex> lock(g_mu);
    Plan plan;
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    {
        DeviceState& d = g_devices[dev];
        if (!d.handle) check(cublasLtCreate(&d.handle), "cublasLtCreate");
        if (!d.workspace) {
            const cudaError_t ce = cudaMalloc(&d.workspace, kWorkspaceBytes);
            if (ce != cudaSuccess)
                throw Error(fmt::format("bf16 GEMM: cannot allocate the cuBLASLt workspace: {}", cudaGetErrorString(ce)));
        }
        const Key key{m, n, k, ldx, ldw, ldy, bias != nullptr};
        auto it = d.plans.find(key);
        if (it == d.plans.end()) it = d.plans.emplace(key, make_plan(d.handle, m, n, k, ldx, ldw, ldy, bias)).first;
        plan = it->second;
        handle = d.handle;
        workspace = d.workspace;
    }
    if (bias)
        check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
              "set BIAS_POINTER");
    const float alpha = 1.f, beta = 0.f;
    check(cublasLtMatmul(handle, plan.desc, &alpha, w, plan.la, x, plan.lb, &beta, y, plan.ld, y, plan.ld, &plan.algo,
                         workspace, kWorkspaceBytes, stream),
          "cublasLtMatmul");
}

}  // namespace qdit::cuda
