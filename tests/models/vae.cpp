// The AutoencoderKL decoder (Flux / Z-Image VAE, models/vae/autoencoder_kl.h) on every device this
// build and machine have (tests/devices.h) against diffusers' own outputs on the committed fixture
// (tests/data/vae/, made by scripts/fixtures/make_vae_fixtures.py) and, off the CPU, against the
// same decoder on the CPU. Its config and checkpoint checks and the CPU ops are in
// tests/test_vae.cpp, the CUDA kernels in tests/cuda/test_cuda_vae.cpp.
//
// Bounds (derived from what the arithmetic allows, none fitted to a measurement), on every device:
//   F32:  max|err| ≤ 1e-4·max|ref| against diffusers (off the CPU also against the CPU decoder:
//         cuDNN runs true f32, no TF32); uint8 image within 1 level everywhere and off by one on
//         < 0.1%.
//   BF16: relative L2 to diffusers' bf16 output ≤ that output's own distance from fp32, to fp32
//         ≤ 1.25× it (off the CPU also to the CPU BF16 decoder, same rounding points, other
//         accumulation orders: ≤ it too); the uint8 image within one level of diffusers' bf16
//         image on at least as many pixels as diffusers' bf16 image is of its fp32 image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "models/vae/autoencoder_kl.h"
#include "ops/context.h"
#include "ops/image.h"
#include "tests/devices.h"
#include "tests/vae_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

class VaeDecode : public DeviceTest {};

// Fraction of uint8 values within one level, and the largest difference.
std::pair<double, int> u8_agreement(const Tensor& a, const Tensor& b) {
    EXPECT_EQ(a.shape(), b.shape());
    int64_t within = 0;
    int worst = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
        const int d = std::abs(int(a.data<uint8_t>()[i]) - int(b.data<uint8_t>()[i]));
        within += d <= 1;
        worst = std::max(worst, d);
    }
    return {double(within) / double(a.numel()), worst};
}

}  // namespace

// unscale_latents on the model's device (the pipeline's path; on the CPU the host arithmetic): the
// same bits as ZImagePipeline's.
TEST_P(VaeDecode, UnscaleMatchesThePipelineExactly) {
    for (DType dt : {DType::F32, DType::BF16}) {
        vae::AutoencoderKL m(kVaeDir, dt, ctx());
        const Tensor z = ops::to_host(m.unscale_latents(ops::to_device(vae_latents(), ctx())), ctx());
        const Tensor ref = vae_reference(dt == DType::F32 ? "z" : "bf16.z");
        ASSERT_EQ(z.dtype(), ref.dtype());
        ASSERT_EQ(z.shape(), ref.shape());
        for (int64_t i = 0; i < ref.numel(); ++i)
            ASSERT_EQ(z.item_f32(i), ref.item_f32(i)) << dtype_name(dt) << " element " << i;
    }
}

// fp32: only f32 summation-order differences (the convolutions' blocking, GroupNorm statistics,
// the attention's exp) remain. The uint8 image: a pixel can only differ where x·127.5 + 127.5 lies
// within the fp32 error above of a .5 rounding boundary, i.e. by one level, rarely.
TEST_P(VaeDecode, Fp32MatchesDiffusers) {
    vae::AutoencoderKL m(kVaeDir, DType::F32, ctx());
    const Tensor image = m.decode(vae_reference("z"));
    ASSERT_EQ(image.dtype(), DType::F32);
    const Err e = compare(image, vae_reference("image"));
    std::printf("[ vae fp32 %s ] max|err| %.3g (%.3g of max|ref| %.3g)\n", GetParam().str().c_str(), e.max_abs,
                e.max_abs / e.max_ref, e.max_ref);
    EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
    if (on_gpu()) {
        const Tensor cpu = vae::AutoencoderKL(kVaeDir, DType::F32).decode(vae_reference("z"));
        const Err ec = compare(image, cpu);
        std::printf("[ vae fp32 %s ] max|err| vs CPU %.3g\n", GetParam().str().c_str(), ec.max_abs);
        EXPECT_LE(ec.max_abs, 1e-4 * e.max_ref);
    }

    const Tensor u8 = ops::image_to_u8(image, {}), ref_u8 = vae_reference("image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    ASSERT_EQ(u8.dtype(), DType::U8);
    int64_t off_by_one = 0;
    for (int64_t i = 0; i < ref_u8.numel(); ++i) {
        const int d = std::abs(int(u8.data<uint8_t>()[i]) - int(ref_u8.data<uint8_t>()[i]));
        ASSERT_LE(d, 1) << "pixel value " << i;
        off_by_one += d;
    }
    std::printf("[ vae fp32 %s ] uint8: %lld of %lld values differ by one\n", GetParam().str().c_str(),
                (long long)off_by_one, (long long)ref_u8.numel());
    EXPECT_LT(double(off_by_one), 1e-3 * double(ref_u8.numel()));

    // postprocess alone, on diffusers' own decoded image, is exact.
    const Tensor u8_of_ref = ops::image_to_u8(vae_reference("image"), {});
    for (int64_t i = 0; i < ref_u8.numel(); ++i)
        ASSERT_EQ(u8_of_ref.data<uint8_t>()[i], ref_u8.data<uint8_t>()[i]) << "value " << i;
}

// bf16: parameters and activations are rounded to bf16 wherever torch rounds them. Bitwise
// agreement is not reachable: torch's CPU flash attention uses an approximate exp and rounds its
// softmax numerators to bf16, and torch's and our convolutions accumulate in different orders; each
// differing bf16 rounding then propagates. So the bound is relative to bf16's own error, the
// distance of diffusers' bf16 output from its fp32 output (relative L2 0.0103 here). diffusers
// itself with only its SDPA made exact lands 0.0085 from its bf16 output; the CPU lands 0.0094
// (0.91 of the bound), and as close to fp32 as diffusers' bf16 is.
TEST_P(VaeDecode, Bf16MatchesDiffusers) {
    vae::AutoencoderKL m(kVaeDir, DType::BF16, ctx());
    EXPECT_EQ(m.compute_dtype(), DType::BF16);
    const Tensor image = m.decode(vae_reference("bf16.z"));
    ASSERT_EQ(image.dtype(), DType::BF16);
    const Tensor ref16 = vae_reference("bf16.image"), ref32 = vae_reference("image");
    const Err vs16 = compare(image, ref16), vs32 = compare(image, ref32), ref_vs32 = compare(ref16, ref32);
    std::printf("[ vae bf16 %s ] rel L2 vs bf16 ref %.4f, vs fp32 %.4f; ref bf16 vs fp32 %.4f\n",
                GetParam().str().c_str(), vs16.rel_l2(), vs32.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs16.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs32.rel_l2(), 1.25 * ref_vs32.rel_l2());
    if (on_gpu()) {
        const Tensor cpu = vae::AutoencoderKL(kVaeDir, DType::BF16).decode(vae_reference("bf16.z"));
        const Err vs_cpu = compare(image, cpu);
        std::printf("[ vae bf16 %s ] rel L2 vs CPU bf16 %.4f (CPU decoder vs bf16 ref %.4f)\n",
                    GetParam().str().c_str(), vs_cpu.rel_l2(), compare(cpu, ref16).rel_l2());
        EXPECT_LE(vs_cpu.rel_l2(), ref_vs32.rel_l2());
    }

    const Tensor ref_u8 = vae_reference("bf16.image_u8"), ref32_u8 = vae_reference("image_u8");
    const auto [ours, ours_worst] = u8_agreement(ops::image_to_u8(image, {}), ref_u8);
    const auto [bf16_ref, bf16_worst] = u8_agreement(ref_u8, ref32_u8);
    std::printf("[ vae bf16 %s ] uint8 within one level of diffusers bf16: %.4f (max diff %d); "
                "diffusers bf16 of fp32: %.4f (max diff %d)\n",
                GetParam().str().c_str(), ours, ours_worst, bf16_ref, bf16_worst);
    EXPECT_GE(ours, bf16_ref);

    // postprocess of diffusers' bf16 image reproduces its uint8 image exactly.
    const Tensor u8_of_ref = ops::image_to_u8(ref16, {});
    ASSERT_EQ(u8_of_ref.shape(), ref_u8.shape());
    for (int64_t i = 0; i < ref_u8.numel(); ++i)
        ASSERT_EQ(u8_of_ref.data<uint8_t>()[i], ref_u8.data<uint8_t>()[i]) << "value " << i;
}

// The device path (latents on the model's device, the uint8 image made there) gives the host
// path's image.
TEST_P(VaeDecode, DeviceDecodeToU8MatchesHostPath) {
    for (DType dt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(dtype_name(dt));
        vae::AutoencoderKL m(kVaeDir, dt, ctx());
        const Tensor lat = vae_latents();
        const Tensor host_u8 = ops::image_to_u8(m.decode(m.unscale_latents(lat)), {});
        const Tensor z = m.unscale_latents(ops::to_device(lat.to(DType::F32), ctx()));
        const Tensor d = m.decode_to_u8(z);
        ASSERT_EQ(d.dtype(), DType::U8);
        ASSERT_EQ(d.device(), GetParam());
        const Tensor got = ops::to_host(d, ctx());
        ASSERT_EQ(got.shape(), host_u8.shape());
        for (int64_t i = 0; i < got.numel(); ++i)
            ASSERT_EQ(got.data<uint8_t>()[i], host_u8.data<uint8_t>()[i]) << "value " << i;
    }
}

TEST_P(VaeDecode, RejectsWrongLatentShape) {
    for (DType dt : {DType::F32, DType::BF16}) {
        SCOPED_TRACE(dtype_name(dt));
        vae::AutoencoderKL m(kVaeDir, dt, ctx());
        EXPECT_THROW(m.decode(Tensor::zeros({1, 4, 6, 10}, DType::F32)), ShapeError);
        EXPECT_THROW(m.decode(Tensor::zeros({16, 6, 10}, DType::F32)), ShapeError);
        EXPECT_THROW(m.decode(ops::zeros({1, 16, 6, 10}, DType::I32, ctx())), ShapeError);
    }
}

QDIT_INSTANTIATE_ON_DEVICES(VaeDecode);
