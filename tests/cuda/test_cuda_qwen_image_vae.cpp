// The Qwen-Image VAE decoder (models/vae/autoencoder_kl_qwenimage.h) on a GPU: the same model code
// and fixture as the CPU test (tests/test_qwen_image_vae.cpp), run through the op layer's CUDA
// backend, against diffusers' outputs and the CPU decoder.
//
// Bounds (those of the CPU test and of the FLUX VAE's CUDA test, tests/cuda/test_cuda_vae.cpp):
//   F32:  max|err| ≤ 1e-4·max|ref| against diffusers and against the CPU decoder (cuDNN runs true
//         f32, no TF32); uint8 within one level everywhere and off by one on < 0.1%.
//   BF16: relative L2 to diffusers' bf16 output ≤ that output's own distance from fp32, to fp32
//         ≤ 1.25× it, and to the CPU BF16 decoder (same rounding points, other accumulation
//         orders) ≤ it too.

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "tests/qwen_image_vae_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

const ops::Context kGpu{{DeviceType::CUDA, 0}};

}  // namespace

TEST(CudaQwenVae, LoadsOntoTheGpu) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType dt : {DType::F32, DType::BF16}) {
        vae::AutoencoderKLQwenImage m(kQwenVaeDir, dt, kGpu);
        EXPECT_EQ(m.compute_dtype(), dt);
        EXPECT_GT(m.weight_bytes(), 0u);
        // The mean / std step runs on the host: the same bits as the CPU model's.
        const Tensor z = m.denormalize_latents(qwen_vae_input("latents"));
        const Tensor ref = qwen_vae_reference(dt == DType::F32 ? "z" : "bf16.z");
        ASSERT_EQ(z.shape(), ref.shape());
        for (int64_t i = 0; i < ref.numel(); ++i) ASSERT_EQ(z.item_f32(i), ref.item_f32(i)) << "element " << i;
    }
}

TEST(CudaQwenVae, Fp32MatchesDiffusersAndTheCpuDecoder) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::F32, kGpu);
    const Tensor image = m.decode(qwen_vae_reference("z"));
    ASSERT_EQ(image.dtype(), DType::F32);
    const Tensor cpu = vae::AutoencoderKLQwenImage(kQwenVaeDir, DType::F32).decode(qwen_vae_reference("z"));
    const Err e = compare(image, qwen_vae_reference("image")), ec = compare(image, cpu);
    std::printf("[ cuda qwen vae fp32 ] max|err| vs diffusers %.3g (%.3g of max|ref| %.3g), vs CPU %.3g\n", e.max_abs,
                e.max_abs / e.max_ref, e.max_ref, ec.max_abs);
    EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
    EXPECT_LE(ec.max_abs, 1e-4 * e.max_ref);

    const Tensor u8 = vae::postprocess_to_u8(image), ref_u8 = qwen_vae_reference("image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    int64_t off_by_one = 0;
    for (int64_t i = 0; i < ref_u8.numel(); ++i) {
        const int d = std::abs(int(u8.data<uint8_t>()[i]) - int(ref_u8.data<uint8_t>()[i]));
        ASSERT_LE(d, 1) << "pixel value " << i;
        off_by_one += d;
    }
    EXPECT_LT(double(off_by_one), 1e-3 * double(ref_u8.numel()));
}

TEST(CudaQwenVae, Bf16MatchesDiffusersAndTheCpuDecoder) {
    if (ops::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::BF16, kGpu);
    const Tensor image = m.decode(qwen_vae_reference("bf16.z"));
    ASSERT_EQ(image.dtype(), DType::BF16);
    const Tensor ref16 = qwen_vae_reference("bf16.image"), ref32 = qwen_vae_reference("image");
    const Tensor cpu = vae::AutoencoderKLQwenImage(kQwenVaeDir, DType::BF16).decode(qwen_vae_reference("bf16.z"));
    const Err vs16 = compare(image, ref16), vs32 = compare(image, ref32), ref_vs32 = compare(ref16, ref32),
              vs_cpu = compare(image, cpu);
    std::printf("[ cuda qwen vae bf16 ] rel L2 vs bf16 ref %.4f, vs fp32 %.4f, vs CPU bf16 %.4f; ref bf16 vs fp32 "
                "%.4f\n",
                vs16.rel_l2(), vs32.rel_l2(), vs_cpu.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs16.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs32.rel_l2(), 1.25 * ref_vs32.rel_l2());
    EXPECT_LE(vs_cpu.rel_l2(), ref_vs32.rel_l2());
}
