// The op layer: fused operations on core Tensors that validate their arguments once and then run on
// the device their tensors are on (backend/cpu or backend/cuda). A model is written once over ops/
// and nn/; it never names a backend.
//
// A Context says where a model's tensors live and how work is issued there.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace qdit::parallel {
class Communicator;  // parallel/communicator.h (CUDA builds)
}

namespace qdit::ops {

// Which attention kernel a CUDA context uses: cuDNN's fused attention where it takes the shape
// (else the simple kernel), always the simple kernel (for checks), or cuDNN's FP8 attention for
// the attention that is not causal and not sequence-parallel (the transformers'; q, k, v and the
// probabilities in E4M3: backend/cuda/attention.h, attention_fp8; Hopper or Blackwell, else the
// op throws), the rest as under Auto. The CPU has one (it refuses Fp8).
enum class AttentionImpl { Auto, Simple, Fp8 };

// How a model is split over the ranks of a group (a Context with a communicator):
//   Tensor: weights are split (column- and row-split Linears, nn::WeightLoader::window /
//     row_split); every rank holds whole activations.
//   Sequence (Ulysses): weights are whole; a rank holds its block of the tokens, and attention()
//     gathers every token for its share of the heads by all-to-all.
enum class ParallelMode { Tensor, Sequence };

struct Context {
    Device device;           // CPU, or CUDA:i
    void* stream = nullptr;  // the cudaStream_t that CUDA work is issued on (null: the default stream)
    AttentionImpl attention = AttentionImpl::Auto;
    // Several GPUs: this rank's communicator (its device and stream are the two fields above) and
    // how the model is split; null on one device.
    parallel::Communicator* comm = nullptr;
    ParallelMode parallel = ParallelMode::Tensor;
    bool cuda() const { return device.type == DeviceType::CUDA; }
    int world() const;  // ranks of the group (1 without a communicator)
    int rank() const;   // this rank (0 without a communicator)
    bool sequence_parallel() const { return world() > 1 && parallel == ParallelMode::Sequence; }
    bool tensor_parallel() const { return world() > 1 && parallel == ParallelMode::Tensor; }
};

// CUDA devices this build can use here (0 without the CUDA backend or a GPU).
int cuda_devices();

// A stream of its own on a GPU device (checked to exist and to be one this build has code for;
// made the current device), synchronized and destroyed with this object; nothing on the CPU.
// What a model's CUDA graphs need (the legacy default stream cannot be captured).
class OwnedStream {
public:
    explicit OwnedStream(const Device& device);
    ~OwnedStream();
    OwnedStream(const OwnedStream&) = delete;
    OwnedStream& operator=(const OwnedStream&) = delete;
    void* get() const { return stream_; }  // the cudaStream_t, or null on the CPU

private:
    void* stream_ = nullptr;
};

// What a tensor's memory is for, on a device that accounts for it (weights or activations).
enum class Memory { Activation, Weight };

// A host tensor on ctx's device: itself on the CPU, a copy on a GPU (synchronous).
Tensor to_device(const Tensor& host, const Context& ctx, Memory kind = Memory::Activation);
// A tensor of ctx's device on the host: itself on the CPU, a copy from a GPU (waits for the work).
Tensor to_host(const Tensor& t, const Context& ctx);
// Waits for the work issued on ctx's stream (nothing to wait for on the CPU).
void synchronize(const Context& ctx);
// A new tensor on ctx's device, contents uninitialised.
Tensor empty(Shape shape, DType dtype, const Context& ctx, Memory kind = Memory::Activation);
// Peak bytes held on ctx's device so far (weights and activations; 0 on the CPU).
size_t device_peak_bytes(const Context& ctx);
// What the device's allocator holds (all zero on the CPU): weights in use now, the peak of the
// activations (and workspaces) and the peak of both together since the process started.
struct DeviceMemory {
    size_t weights = 0, peak_activations = 0, peak = 0;
};
DeviceMemory device_memory(const Context& ctx);
// A new tensor on ctx's device, all zero bytes.
Tensor zeros(Shape shape, DType dtype, const Context& ctx);
// Rows [row, row + n) of a contiguous t [*, c] on ctx's device set to zero bytes (issued on
// ctx's stream).
void zero_rows(Tensor& t, int64_t row, int64_t n, const Context& ctx);
// A new host tensor whose memory is page-locked where ctx is a GPU (copy_rows between it and the
// device then runs asynchronously on ctx's stream); plain host memory on the CPU. Contents
// uninitialised.
Tensor pinned_empty(Shape shape, DType dtype, const Context& ctx);
// Rows [dst_row, dst_row + n) of dst [*, c] ← rows src_row, src_row + src_step, ... (n of them) of
// src [*, c] (same dtype and width, not overlapping; src_step >= 1), both on ctx's device or, on a
// GPU, one of them on the host: issued on ctx's stream, so a host dst is read after synchronize
// (asynchronous for pinned_empty's memory, else the driver stages it).
void copy_rows(Tensor& dst, int64_t dst_row, const Tensor& src, int64_t src_row, int64_t n, const Context& ctx,
               int64_t src_step = 1);
// x [world·n, c] on ctx's device, of which this rank holds rows [rank·n, (rank + 1)·n): afterwards
// every rank holds all rows (an all-gather through ctx.comm; nothing to do on one device).
// Collective: every rank calls it with the same shape.
void gather_rows(Tensor& x, const Context& ctx);

// What a Linear group reads, as its producer writes it: x [m, k] in the compute dtype and, for a
// group with int8 parts on a GPU, the per-token int8 quantization of the same rows (quant/int8.h):
// q I8 [m, kp] (columns past k zero) with scales qs F32 [m]. On the CPU the int8 Linear quantizes
// x itself, so only x is set there.
struct Activation {
    Tensor x, q, qs;
    // Rows [begin, end) of each part present (views).
    Activation slice_rows(int64_t begin, int64_t end) const {
        auto cut = [&](const Tensor& t) { return t.defined() ? t.slice_rows(begin, end) : Tensor(); };
        return {cut(x), cut(q), cut(qs)};
    }
};
// What a group asks of its producer: the dense rows, their int8 quantization, or both; k columns
// (kp: the int8 rows' stride).
struct ActivationSpec {
    bool dense = true, int8 = false;
    int64_t k = 0, kp = 0;
};
// m new rows with the parts `like` has (their widths and dtypes), contents uninitialised.
Activation empty_rows(const Activation& like, int64_t m, const Context& ctx);
// Rows [dst_row, dst_row + n) of each part of src ← its rows [src_row, src_row + n) (copy_rows);
// dst has the parts src has.
void copy_rows(Activation& dst, int64_t dst_row, const Activation& src, int64_t src_row, int64_t n, const Context& ctx);

}  // namespace qdit::ops
