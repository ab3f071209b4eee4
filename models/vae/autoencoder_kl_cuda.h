// diffusers' AutoencoderKL decoder (the FLUX.1 VAE that Z-Image uses) on one CUDA GPU, F32 or
// BF16 activations, following the CPU decoder (models/vae/autoencoder_kl.h): same config checks
// (Config::from_json, decoder_params), same parameter rounding (every parameter rounded to the
// compute dtype, as from_pretrained(torch_dtype=...) does) and the same rounding points:
//
//   - convolutions (cuDNN, backend/cuda/conv.h): f32 accumulation, bias added in f32, one
//     rounding; the BF16 resnet's conv2 output is rounded before the residual add (as torch);
//   - GroupNorm (+ SiLU): statistics in double, the norm's output rounded before the SiLU in BF16;
//   - mid-block attention (one head of dim C over the H·W tokens; cuDNN's fused SDPA takes head
//     dims up to 256 only, the FLUX VAE has 512): q, k, v as one cuBLASLt GEMM ([3C, C] weights),
//     scores in f32, softmax with its numerators rounded to bf16 before P·V and the sum in double
//     (cpu::scaled_dot_product_attention's rounding points), then to_out and the residual add.
//     Queries run in chunks whose scores fit 1 GiB.
//
// Where it differs from the CPU BF16 path: accumulation order (cuDNN's and cuBLASLt's kernels vs
// oneDNN's), CUDA's expf (within 2 ulp) in the SiLU and softmax, double-sum order in GroupNorm;
// no rounding point differs unless cuDNN offers no fused-bias or f32-output plan for a
// convolution (then its output is rounded before the bias add; Conv2d::plan_info says so).
//
// Activations are channels-last [B, H, W, C] inside; the public tensors are NCHW like torch's.
// All device work runs on the stream given at construction (one stream; see allocator.h).
#pragma once
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "backend/cuda/device_tensor.h"
#include "core/tensor.h"
#include "models/vae/autoencoder_kl.h"

namespace qdit::vae {

class AutoencoderKLCuda {
public:
    // `dir` holds config.json and the weights (as for AutoencoderKL). The config, then the names
    // and shapes of all decoder_params(), are checked before any weight is read or the GPU is
    // touched: ConfigError naming config.json and the field, ShapeError naming the tensor. The
    // weights are uploaded to the current device in `compute` (F32 or BF16).
    explicit AutoencoderKLCuda(const std::string& dir, DType compute = DType::BF16, cudaStream_t stream = nullptr);
    // The decoder of `cfg` with random weights (conv and linear weights ~ N(0, 1/fan_in), norm
    // weights ~ N(1, 0.02), biases ~ N(0, 0.02)), for benchmarks at the real size.
    static AutoencoderKLCuda random(const Config& cfg, DType compute, uint64_t seed, cudaStream_t stream = nullptr);

    AutoencoderKLCuda(AutoencoderKLCuda&&) noexcept;
    AutoencoderKLCuda& operator=(AutoencoderKLCuda&&) noexcept;
    ~AutoencoderKLCuda();

    const Config& config() const;
    DType compute_dtype() const;
    cudaStream_t stream() const;
    size_t weight_bytes() const;  // device memory held by the weights

    // AutoencoderKL::unscale_latents (same rounding, bit-identical): latents / scaling_factor +
    // shift_factor in the compute dtype. Host: [B, C, h, w] any float dtype → compute dtype, host.
    // Device: F32 or BF16 → compute dtype, device.
    Tensor unscale_latents(const Tensor& latents) const;
    cuda::DTensor unscale_latents(const cuda::DTensor& latents) const;

    // vae.decode(z).sample: z [B, latent_channels, h, w] (already unscaled) → the image
    // [B, out_channels, h·s, w·s] in the compute dtype, s = config().spatial_scale(); not clamped.
    // Host: z any float dtype (converted to the compute dtype on the host, as the CPU decoder
    // does), result downloaded. Device: z F32 or BF16 (rounded to the compute dtype on the device),
    // result on the device (asynchronous on stream()).
    Tensor decode(const Tensor& z) const;
    cuda::DTensor decode(const cuda::DTensor& z) const;

    // decode followed by postprocess_to_u8 on the device: U8 [B, H, W, out_channels], so a
    // pipeline downloads only the uint8 image.
    cuda::DTensor decode_to_u8(const cuda::DTensor& z) const;

    struct Weights;

private:
    explicit AutoencoderKLCuda(std::unique_ptr<Weights> w);
    std::unique_ptr<Weights> w_;
};

// vae::postprocess_to_u8 on the device, bit-identical: image [B, C, H, W] F32 or BF16 → U8
// [B, H, W, C] = round_half_even(clamp(x·0.5 + 0.5, 0, 1) · 255), the x·0.5 + 0.5 rounded to the
// image's dtype first, NaN → 0. Asynchronous on `stream`.
cuda::DTensor postprocess_to_u8(const cuda::DTensor& image, cudaStream_t stream);

}  // namespace qdit::vae
