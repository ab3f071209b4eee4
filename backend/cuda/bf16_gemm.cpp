#include "backend/cuda/bf16_gemm.h"

#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

const char* types_name(LtGemmTypes t) {
    switch (t) {
        case LtGemmTypes::Bf16: return "bf16";
        case LtGemmTypes::Bf16ToF32: return "bf16 -> f32";
        case LtGemmTypes::Int8ToI32: return "int8 -> int32";
    }
    return "?";
}

void check(cublasStatus_t st, LtGemmTypes t, const char* what) {
    if (st != CUBLAS_STATUS_SUCCESS)
        throw Error(fmt::format("cuBLASLt {} GEMM: {} failed: {} ({})", types_name(t), what, cublasLtGetStatusName(st),
                                cublasLtGetStatusString(st)));
}

// Row-major y[M,N] = x[M,K]·w[N,K]ᵀ is, column-major, yᵀ[N,M] = w·xᵀ: A = w (transposed, K x N
// column-major with ld = ldw), B = x (K x M column-major, ld = ldx), D = yᵀ (N x M, ld = ldy) — the
// "TN" layout cuBLASLt's int8 kernels need. The bias epilogue adds a vector over D's rows, i.e. over n.
struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool found = false;
};

using Key = std::tuple<LtGemmTypes, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

struct DeviceState {
    std::mutex mu;  // over a whole call on this device (see lt_gemm)
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    std::map<Key, Plan> plans;
};

std::mutex g_mu;  // over g_devices only
std::map<int, DeviceState> g_devices;

DeviceState& device_state(int dev) {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_devices[dev];  // std::map: the element stays where it is
}

Plan make_plan(cublasLtHandle_t handle, LtGemmTypes t, int64_t m, int64_t n, int64_t k, int64_t ldx, int64_t ldw,
               int64_t ldy, bool has_bias) {
    const bool int8 = t == LtGemmTypes::Int8ToI32;
    const cudaDataType_t in = int8 ? CUDA_R_8I : CUDA_R_16BF,
                         out = int8 ? CUDA_R_32I : t == LtGemmTypes::Bf16ToF32 ? CUDA_R_32F : CUDA_R_16BF;
    Plan p;
    check(cublasLtMatmulDescCreate(&p.desc, int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F,
                                   int8 ? CUDA_R_32I : CUDA_R_32F),
          t, "cublasLtMatmulDescCreate");
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)), t, "set TRANSA");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)), t, "set TRANSB");
    if (has_bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), t,
              "set EPILOGUE");
        const cudaDataType_t bt = CUDA_R_16BF;
        check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)), t,
              "set BIAS_DATA_TYPE");
    }
    check(cublasLtMatrixLayoutCreate(&p.la, in, uint64_t(k), uint64_t(n), ldw), t, "layout A");
    check(cublasLtMatrixLayoutCreate(&p.lb, in, uint64_t(k), uint64_t(m), ldx), t, "layout B");
    check(cublasLtMatrixLayoutCreate(&p.ld, out, uint64_t(n), uint64_t(m), ldy), t, "layout D");

    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), t, "preference");
    const uint64_t ws = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), t,
          "preference workspace");
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, &res,
                                                             &found);
    cublasLtMatmulPreferenceDestroy(pref);
    // A shape without an algorithm is the caller's to handle (the int8 one falls back to a kernel, for
    // any refusal of cuBLASLt's int8 path).
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && !int8) check(st, t, "cublasLtMatmulAlgoGetHeuristic");
    p.found = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.found) p.algo = res.algo;
    return p;
}

}  // namespace

bool lt_gemm(LtGemmTypes types, const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y,
             int64_t ldy, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) throw Error("cuBLASLt GEMM: no current CUDA device");
    // One lock over the whole call: the cached descriptor gets this call's bias pointer, and
    // cublasLtMatmul reads it while enqueueing. The lock is the device's own: a launch blocks while
    // the device's queue is full, e.g. behind an NCCL collective that waits for another GPU's rank
    // thread, and that thread must not wait for this lock.
    DeviceState& d = device_state(dev);
    std::lock_guard<std::mutex> lock(d.mu);
    if (!d.handle) check(cublasLtCreate(&d.handle), types, "cublasLtCreate");
    if (!d.workspace) {
        const cudaError_t ce = cudaMalloc(&d.workspace, kWorkspaceBytes);
        if (ce != cudaSuccess)
            throw Error(fmt::format("cuBLASLt GEMM: cannot allocate the workspace: {}", cudaGetErrorString(ce)));
    }
    const Key key{types, m, n, k, ldx, ldw, ldy, bias != nullptr};
    auto it = d.plans.find(key);
    if (it == d.plans.end())
        it = d.plans.emplace(key, make_plan(d.handle, types, m, n, k, ldx, ldw, ldy, bias != nullptr)).first;
    const Plan& plan = it->second;
    if (!plan.found) return false;
    if (bias)
        check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)), types,
              "set BIAS_POINTER");
    const int32_t ia = 1, ib = 0;
    const float fa = 1.f, fb = 0.f;
    const bool int8 = types == LtGemmTypes::Int8ToI32;
    const void* alpha = int8 ? static_cast<const void*>(&ia) : static_cast<const void*>(&fa);
    const void* beta = int8 ? static_cast<const void*>(&ib) : static_cast<const void*>(&fb);
    check(cublasLtMatmul(d.handle, plan.desc, alpha, w, plan.la, x, plan.lb, beta, y, plan.ld, y, plan.ld, &plan.algo,
                         d.workspace, kWorkspaceBytes, stream),
          types, "cublasLtMatmul");
    return true;
}

void bf16_gemm(const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y, int64_t ldy,
               int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldw < k || ldy < n)
        throw ShapeError(fmt::format("bf16 GEMM: bad shape M={} N={} K={} ldx={} ldw={} ldy={}", m, n, k, ldx, ldw,
                                     ldy));
    if (!x || !w || !y) throw ShapeError("bf16 GEMM: null operand pointer");
    if (m == 0) return;
    if (!lt_gemm(LtGemmTypes::Bf16, x, ldx, w, ldw, bias, y, ldy, m, n, k, stream))
        throw Error(fmt::format("bf16 GEMM: cuBLASLt has no algorithm for M={} N={} K={} (ldx={} ldw={} ldy={})", m,
                                n, k, ldx, ldw, ldy));
}

}  // namespace qdit::cuda
