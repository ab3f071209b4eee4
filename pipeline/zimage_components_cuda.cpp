// The Z-Image pipeline's models on the current CUDA device (pipeline/zimage_components.h): the Qwen3
// text encoder and the transformer (written on the op layer; blocks replayed as CUDA graphs) and the
// VAE decoder, all on one stream in bf16. The denoising loop keeps the latents on this GPU between
// steps (the guidance and the scheduler's step run there as ops::euler_step).
// With opt.gpus > 1 the transformer runs tensor- or sequence-parallel over NCCL on GPUs 0..gpus-1
// (zimage::ZImageTransformerParallel, no CUDA graphs) and the loop keeps the latents on the host; the
// text encoder and the VAE stay on GPU 0.
#ifdef QDIT_WITH_CUDA  // a CUDA build: this file is empty without the CUDA backend
#include <filesystem>
#include <numeric>

#include "backend/cuda/allocator.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "core/error.h"
#include "models/text/qwen3.h"
#include "models/vae/autoencoder_kl.h"
#include "models/zimage/transformer.h"
#include "models/zimage/transformer_parallel.h"
#include "parallel/communicator.h"
#include "pipeline/zimage_components.h"
#include "pipeline/zimage_pipeline.h"

namespace qdit {

namespace {

// GPU `index`, after checking, when gpus > 1, that GPUs 0..gpus-1 exist and NCCL loads, so a run
// that cannot start fails before any weight is read (ops::OwnedStream checks the device itself).
Device checked_device(int index, int gpus) {
    if (gpus > 1) {
        const int n = cuda::device_count();
        if (n == 0) raise<Error>("no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
        if (gpus > n) raise<UsageError>("--gpus {}: only {} CUDA device(s) visible", gpus, n);
        std::string why;
        if (!parallel::nccl_available(&why)) raise<Error>("--gpus {} needs NCCL: {}", gpus, why);
    }
    return {DeviceType::CUDA, index};
}

class CudaComponents final : public ZImageComponents {
public:
    CudaComponents(const std::string& dir, int index, int gpus, bool sequence_parallel, bool offload, bool fp8_attention,
                   const PreparedModel& text, const PreparedModel& transformer)
        : ZImageComponents(offload),
          stream_(checked_device(index, gpus)),
          vae_((std::filesystem::path(dir) / "vae").string(), DType::BF16,
               ops::Context{{DeviceType::CUDA, index}, stream_.get()}),
          text_([&text, ctx = ops::Context{{DeviceType::CUDA, index}, stream_.get()}] {
              return std::make_unique<text::Qwen3TextModel>(text, DType::BF16, ctx);
          }),
          transformer_([&transformer, fp8_attention, ctx = ops::Context{{DeviceType::CUDA, index}, stream_.get()}] {
              auto t = std::make_unique<zimage::ZImageTransformer>(transformer, DType::BF16, ctx);
              t->set_cuda_graph(true);
              if (fp8_attention) t->set_attention(ops::AttentionImpl::Fp8);
              return t;
          }) {
        if (!offload) text_.get();
        if (gpus > 1) {
            std::vector<int> devices(static_cast<size_t>(gpus));
            std::iota(devices.begin(), devices.end(), 0);
            group_ = parallel::RankGroup::nccl(devices);
            parallel_ = std::make_unique<zimage::ZImageTransformerParallel>(
                transformer, *group_, sequence_parallel ? zimage::ParallelMode::Sequence : zimage::ParallelMode::Tensor);
            if (fp8_attention) parallel_->set_attention(ops::AttentionImpl::Fp8);
            cuda::check(cudaSetDevice(index), "selecting the CUDA device");
        } else if (!offload) {
            transformer_.get();
        }
    }

    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask) const override {
        return text_.get(&load_seconds_).encode(ids, mask);
    }
    void release_text_encoder() const override { text_.release(); }
    void load_transformer() const override {
        if (!parallel_) transformer_.get(&load_seconds_);
    }
    ops::Context loop_context() const override { return parallel_ ? ops::Context{} : vae_.context(); }
    DType loop_dtype() const override { return DType::BF16; }
    Tensor transformer(const Tensor& patches, const std::array<int64_t, 3>& grid, const Tensor& caps,
                       float t) const override {
        return parallel_ ? parallel_->forward_tokens(patches, grid, caps, t)
                         : transformer_.get(&load_seconds_).forward_tokens(patches, grid, caps, t);
    }
    Tensor decode(const Tensor& latents) const override {
        const ops::Context& ctx = vae_.context();
        const Tensor z = ops::to_device(latents.to(DType::F32), ctx);
        const Tensor image = ops::to_host(vae_.decode_to_u8(vae_.unscale_latents(z)), ctx);
        return image.view({image.size(1), image.size(2), image.size(3)});
    }

private:
    ops::OwnedStream stream_;  // GPU `index` made current; destroyed after the models (declared first)
    vae::AutoencoderKL vae_;
    Lazy<text::Qwen3TextModel> text_;
    Lazy<zimage::ZImageTransformer> transformer_;                      // one GPU
    std::unique_ptr<parallel::RankGroup> group_;                       // --gpus N > 1: the ranks,
    std::unique_ptr<zimage::ZImageTransformerParallel> parallel_;      // and the shards on them
};

}  // namespace

std::unique_ptr<ZImageComponents> make_zimage_cuda_components(const std::string& dir, const PipelineOptions& opt,
                                                              const PreparedModel& text_encoder,
                                                              const PreparedModel& transformer) {
    return std::make_unique<CudaComponents>(dir, opt.device.index, opt.gpus, opt.sequence_parallel,
                                            opt.offload_text_encoder, opt.fp8_attention, text_encoder, transformer);
}

}  // namespace qdit

#endif  // QDIT_WITH_CUDA
