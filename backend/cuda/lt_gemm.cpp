#include "backend/cuda/lt_gemm.h"

#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"

namespace qdit::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// What a plan is made for: operand, output and bias types (CUDA_R_*), W transposed or not, the
// shape and strides, a bias, and the pointer alignments the heuristic may assume (0: cuBLASLt's
// default of 256 bytes, as the Linear layers' GEMMs have always been planned).
struct Key {
    cudaDataType_t in, out;
    bool int8, w_nk, bias;
    int64_t m, n, k, ldx, ldw, ldy;
    uint32_t align_x, align_w, align_y;
    bool operator<(const Key& o) const {
        return std::tie(in, out, int8, w_nk, bias, m, n, k, ldx, ldw, ldy, align_x, align_w, align_y) <
               std::tie(o.in, o.out, o.int8, o.w_nk, o.bias, o.m, o.n, o.k, o.ldx, o.ldw, o.ldy, o.align_x, o.align_w,
                        o.align_y);
    }
};

// Row-major y[M,N] = x[M,K]·w[N,K]ᵀ is, column-major, yᵀ[N,M] = w·xᵀ: A = w (transposed, K x N
// column-major with ld = ldw; or N x K, not transposed, when w is [k, n]), B = x (K x M column-major,
// ld = ldx), D = yᵀ (N x M, ld = ldy) — the "TN" layout cuBLASLt's int8 kernels need. The bias
// epilogue adds a vector over D's rows, i.e. over n.
struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool found = false;
};

struct DeviceState {
    std::mutex mu;  // over a whole call on this device (see the header)
    cublasLtHandle_t handle = nullptr;
    std::map<cudaStream_t, void*> workspaces;  // one per stream: calls on two streams may overlap
    std::map<Key, Plan> plans;
};

std::mutex g_mu;  // over g_devices only
std::map<int, DeviceState> g_devices;

DeviceState& device_state(int dev) {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_devices[dev];  // std::map: the element stays where it is
}

// `who` names the caller in messages ("bf16 GEMM", "matmul"...).
void check(cublasStatus_t st, const std::string& who, const char* what) {
    if (st != CUBLAS_STATUS_SUCCESS)
        throw Error(fmt::format("cuBLASLt {}: {} failed: {} ({})", who, what, cublasLtGetStatusName(st),
                                cublasLtGetStatusString(st)));
}

// The plan of `key`; `found` false when cuBLASLt has no algorithm (or, for int8, refuses the shape).
Plan make_plan(cublasLtHandle_t handle, const Key& key, const std::string& who) {
    Plan p;
    check(cublasLtMatmulDescCreate(&p.desc, key.int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F,
                                   key.int8 ? CUDA_R_32I : CUDA_R_32F),
          who, "cublasLtMatmulDescCreate");
    const cublasOperation_t opA = key.w_nk ? CUBLAS_OP_T : CUBLAS_OP_N, opB = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)), who, "set TRANSA");
    check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)), who, "set TRANSB");
    if (key.bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)), who,
              "set EPILOGUE");
        const cudaDataType_t bt = key.out;
        check(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)), who,
              "set BIAS_DATA_TYPE");
    }
    if (key.w_nk)
        check(cublasLtMatrixLayoutCreate(&p.la, key.in, uint64_t(key.k), uint64_t(key.n), key.ldw), who, "layout A");
    else
        check(cublasLtMatrixLayoutCreate(&p.la, key.in, uint64_t(key.n), uint64_t(key.k), key.ldw), who, "layout A");
    check(cublasLtMatrixLayoutCreate(&p.lb, key.in, uint64_t(key.k), uint64_t(key.m), key.ldx), who, "layout B");
    check(cublasLtMatrixLayoutCreate(&p.ld, key.out, uint64_t(key.n), uint64_t(key.m), key.ldy), who, "layout D");

    cublasLtMatmulPreference_t pref = nullptr;
    check(cublasLtMatmulPreferenceCreate(&pref), who, "preference");
    const uint64_t ws = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), who,
          "preference workspace");
    if (key.align_x) {
        const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
            {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_w},
            {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x},
            {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_y},
            {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_y}};
        for (const auto& [attr, value] : aligns)
            check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)), who, "preference alignment");
    }
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, &res,
                                                             &found);
    cublasLtMatmulPreferenceDestroy(pref);
    // A shape without an algorithm is the caller's to handle (the int8 one falls back to a kernel, for
    // any refusal of cuBLASLt's int8 path).
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && !key.int8) check(st, who, "cublasLtMatmulAlgoGetHeuristic");
    p.found = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.found) p.algo = res.algo;
    return p;
}

// Runs `key`'s plan on the current device; false when it has no algorithm (nothing launched).
bool run(const Key& key, const std::string& who, const void* x, const void* w, const void* bias, void* y,
         cudaStream_t stream) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) throw Error(fmt::format("cuBLASLt {}: no current CUDA device", who));
    DeviceState& d = device_state(dev);
    std::lock_guard<std::mutex> lock(d.mu);
    if (!d.handle) check(cublasLtCreate(&d.handle), who, "cublasLtCreate");
    void*& workspace = d.workspaces[stream];
    if (!workspace) {
        const cudaError_t ce = cudaMalloc(&workspace, kWorkspaceBytes);
        if (ce != cudaSuccess)
            throw Error(fmt::format("cuBLASLt {}: cannot allocate the workspace: {}", who, cudaGetErrorString(ce)));
    }
    auto it = d.plans.find(key);
    if (it == d.plans.end()) it = d.plans.emplace(key, make_plan(d.handle, key, who)).first;
    const Plan& plan = it->second;
    if (!plan.found) return false;
    if (bias)
        check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)), who,
              "set BIAS_POINTER");
    const int32_t ia = 1, ib = 0;
    const float fa = 1.f, fb = 0.f;
    const void* alpha = key.int8 ? static_cast<const void*>(&ia) : static_cast<const void*>(&fa);
    const void* beta = key.int8 ? static_cast<const void*>(&ib) : static_cast<const void*>(&fb);
    check(cublasLtMatmul(d.handle, plan.desc, alpha, w, plan.la, x, plan.lb, beta, y, plan.ld, y, plan.ld, &plan.algo,
                         workspace, kWorkspaceBytes, stream),
          who, "cublasLtMatmul");
    return true;
}

const char* types_name(LtGemmTypes t) {
    switch (t) {
        case LtGemmTypes::Bf16: return "bf16 GEMM";
        case LtGemmTypes::Bf16ToF32: return "bf16 -> f32 GEMM";
        case LtGemmTypes::Int8ToI32: return "int8 -> int32 GEMM";
    }
    return "?";
}

cudaDataType_t cuda_type(DType t) { return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// The largest power of two up to 16 that divides p's address.
uint32_t alignment(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 16;
    while (al > 1 && a % al != 0) al >>= 1;
    return al;
}

}  // namespace

bool lt_gemm(LtGemmTypes types, const void* x, int64_t ldx, const void* w, int64_t ldw, const void* bias, void* y,
             int64_t ldy, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
    const bool int8 = types == LtGemmTypes::Int8ToI32;
    const cudaDataType_t in = int8 ? CUDA_R_8I : CUDA_R_16BF,
                         out = int8 ? CUDA_R_32I : types == LtGemmTypes::Bf16ToF32 ? CUDA_R_32F : CUDA_R_16BF;
    const Key key{in, out, int8, true, bias != nullptr, m, n, k, ldx, ldw, ldy, 0, 0, 0};
    return run(key, types_name(types), x, w, bias, y, stream);
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

void matmul(const void* x, int64_t ldx, const void* w, int64_t ldw, bool w_nk, const void* bias, void* y,
            int64_t ldy, int64_t m, int64_t n, int64_t k, DType in, DType out, cudaStream_t stream) {
    if ((in != DType::F32 && in != DType::BF16) || (out != DType::F32 && out != in))
        raise<ShapeError>("matmul: {} -> {} is not supported (F32 or BF16 in; F32 or the input dtype out)",
                          dtype_name(in), dtype_name(out));
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldw < (w_nk ? k : n) || ldy < n)
        raise<ShapeError>("matmul: bad shape M={} N={} K={} ldx={} ldw={} ldy={}", m, n, k, ldx, ldw, ldy);
    if (!x || !w || !y) raise<ShapeError>("matmul: null operand pointer");
    if (m == 0) return;
    const Key key{cuda_type(in), cuda_type(out), false,        w_nk,         bias != nullptr, m, n, k, ldx, ldw,
                  ldy,           alignment(x),  alignment(w), alignment(y)};
    if (!run(key, "matmul", x, w, bias, y, stream))
        raise<Error>("matmul: cuBLASLt has no {} -> {} algorithm for M={} N={} K={} (ldx={} ldw={} ldy={})",
                     dtype_name(in), dtype_name(out), m, n, k, ldx, ldw, ldy);
}

}  // namespace qdit::cuda
