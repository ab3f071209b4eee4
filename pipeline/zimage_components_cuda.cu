// The Z-Image pipeline's models on the current CUDA device (pipeline/zimage_components.h): the Qwen3
// text encoder, the transformer (blocks replayed as CUDA graphs) and the VAE decoder, all on one
// stream in bf16. The latents stay on the host between steps (16·h·w floats; the scheduler and the
// guidance run there, as on the CPU).
#include <filesystem>

#include "backend/cuda/allocator.h"
#include "backend/cuda/device_tensor.h"
#include "backend/cuda/quantize.h"
#include "core/error.h"
#include "models/text/qwen3_cuda.h"
#include "models/vae/autoencoder_kl_cuda.h"
#include "models/zimage/transformer_cuda.h"
#include "pipeline/zimage_components.h"
#include "pipeline/zimage_pipeline.h"

namespace qdit {

namespace {

// Makes GPU `index` current and holds the components' stream, destroyed after the models (declared
// first).
struct Stream {
    cudaStream_t s = nullptr;
    explicit Stream(int index) {
        const int n = cuda::device_count();
        if (n == 0) raise<Error>("no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
        if (index < 0 || index >= n)
            raise<UsageError>("CUDA device {} does not exist ({} visible: 0..{})", index, n, n - 1);
        cuda::check(cudaSetDevice(index), "selecting the CUDA device");
        cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "pipeline stream");
    }
    ~Stream() {
        cudaStreamSynchronize(s);
        cudaStreamDestroy(s);
    }
};

class CudaComponents final : public ZImageComponents {
public:
    CudaComponents(const std::string& dir, int index, const PreparedModel& text, const PreparedModel& transformer)
        : stream_(index),
          vae_((std::filesystem::path(dir) / "vae").string(), DType::BF16, stream_.s),
          text_(text, stream_.s),
          transformer_(transformer, stream_.s) {
        transformer_.set_cuda_graph(true);
    }

    Tensor encode(const std::vector<int32_t>& ids, const std::vector<uint8_t>& mask) const override {
        return text_.encode(ids, mask);
    }
    std::vector<Tensor> transformer(const std::vector<Tensor>& x, const Tensor& t,
                                    const std::vector<Tensor>& caps) const override {
        return transformer_.forward(x, t, caps);
    }
    Tensor decode(const Tensor& latents) const override {
        cuda::DTensor z = cuda::DTensor::upload(latents.to(DType::F32), cuda::MemKind::Activation, stream_.s);
        Tensor image = vae_.decode_to_u8(vae_.unscale_latents(z)).download(stream_.s);
        return image.view({image.size(1), image.size(2), image.size(3)});
    }
    size_t device_peak_bytes() const override { return cuda::Allocator::instance().stats().peak; }

private:
    Stream stream_;
    vae::AutoencoderKLCuda vae_;
    text::Qwen3TextModelCuda text_;
    zimage::ZImageTransformerCuda transformer_;
};

}  // namespace

std::unique_ptr<ZImageComponents> make_zimage_cuda_components(const std::string& dir, const PipelineOptions& opt,
                                                              const PreparedModel& text_encoder,
                                                              const PreparedModel& transformer) {
    return std::make_unique<CudaComponents>(dir, opt.device.index, text_encoder, transformer);
}

}  // namespace qdit
