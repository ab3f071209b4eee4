// The Qwen-Image VAE decoder (AutoencoderKLQwenImage, one frame) on every device this build and
// machine have (tests/devices.h) against diffusers' own outputs on the committed fixture
// (tests/data/qwen_image_vae/, made by scripts/fixtures/make_qwen_image_vae_fixtures.py) and, off
// the CPU, against the CPU decoder. Its config and checkpoint checks are in
// tests/test_qwen_image_vae.cpp.
//
// Bounds, on every device:
//   F32:  max|err| ≤ 1e-4·max|ref| against diffusers (off the CPU also against the CPU decoder:
//         cuDNN runs true f32, no TF32); uint8 within one level everywhere and off by one on < 0.1%.
//   BF16: relative L2 to diffusers' bf16 output ≤ that output's own distance from fp32, to fp32
//         ≤ 1.25× it (off the CPU also to the CPU BF16 decoder, same rounding points, other
//         accumulation orders: ≤ it too).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "models/vae/autoencoder_kl_qwenimage.h"
#include "ops/image.h"
#include "tests/devices.h"
#include "tests/qwen_image_vae_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

class QwenVaeDecode : public DeviceTest {};

Tensor clamped(const Tensor& t) {
    Tensor c = t.to(DType::F32);
    for (int64_t i = 0; i < c.numel(); ++i) c.data<float>()[i] = std::min(1.0f, std::max(-1.0f, c.data<float>()[i]));
    return c;
}

}  // namespace

// The model loads onto the device in its compute dtype; the mean / std step runs on the host: the
// same bits as QwenImagePipeline's.
TEST_P(QwenVaeDecode, DenormalizeMatchesThePipelineExactly) {
    for (DType dt : {DType::F32, DType::BF16}) {
        vae::AutoencoderKLQwenImage m(kQwenVaeDir, dt, ctx());
        EXPECT_EQ(m.compute_dtype(), dt);
        EXPECT_GT(m.weight_bytes(), 0u);
        const Tensor z = m.denormalize_latents(qwen_vae_input("latents"));
        const Tensor ref = qwen_vae_reference(dt == DType::F32 ? "z" : "bf16.z");
        ASSERT_EQ(z.dtype(), ref.dtype());
        ASSERT_EQ(z.shape(), ref.shape());
        for (int64_t i = 0; i < ref.numel(); ++i)
            ASSERT_EQ(z.item_f32(i), ref.item_f32(i)) << dtype_name(dt) << " element " << i;
    }
}

// fp32: only f32 summation-order differences remain (the convolutions' blocking, the channel
// norms' sums, the attention's exp). The uint8 image (the Z-Image postprocess is the pipeline's
// too): a value can only differ by one level, where x·127.5 + 127.5 lies within the fp32 error
// above of a .5 boundary.
TEST_P(QwenVaeDecode, Fp32MatchesDiffusers) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::F32, ctx());
    const Tensor image = m.decode(qwen_vae_reference("z"));
    ASSERT_EQ(image.dtype(), DType::F32);
    const Err e = compare(image, qwen_vae_reference("image"));
    std::printf("[ qwen vae fp32 %s ] max|err| %.3g (%.3g of max|ref| %.3g), rel L2 %.3g\n", GetParam().str().c_str(),
                e.max_abs, e.max_abs / e.max_ref, e.max_ref, e.rel_l2());
    EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
    for (int64_t i = 0; i < image.numel(); ++i) ASSERT_LE(std::fabs(image.item_f32(i)), 1.0f) << "element " << i;
    if (on_gpu()) {
        const Tensor cpu = vae::AutoencoderKLQwenImage(kQwenVaeDir, DType::F32).decode(qwen_vae_reference("z"));
        const Err ec = compare(image, cpu);
        std::printf("[ qwen vae fp32 %s ] max|err| vs CPU %.3g\n", GetParam().str().c_str(), ec.max_abs);
        EXPECT_LE(ec.max_abs, 1e-4 * e.max_ref);
    }

    const Tensor u8 = ops::image_to_u8(image, {}), ref_u8 = qwen_vae_reference("image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    int64_t off_by_one = 0;
    for (int64_t i = 0; i < ref_u8.numel(); ++i) {
        const int d = std::abs(int(u8.data<uint8_t>()[i]) - int(ref_u8.data<uint8_t>()[i]));
        ASSERT_LE(d, 1) << "pixel value " << i;
        off_by_one += d;
    }
    std::printf("[ qwen vae fp32 %s ] uint8: %lld of %lld values differ by one\n", GetParam().str().c_str(),
                (long long)off_by_one, (long long)ref_u8.numel());
    EXPECT_LT(double(off_by_one), 1e-3 * double(ref_u8.numel()));
}

// bf16: weights, gammas and activations are rounded to bf16 wherever torch rounds them (each RMS
// norm three times, SiLU, every convolution's output, each residual sum). Bitwise agreement is not
// reachable: torch's and our convolutions accumulate in different orders and torch's CPU flash
// attention uses an approximate exp, so single bf16 roundings differ and propagate through the ~30
// layers. The bound is therefore relative to bf16's own error: the distance of diffusers' bf16
// output from its fp32 output (relative L2), which our bf16 output may not exceed against diffusers'
// bf16 output, and against fp32 by at most 1.25 times (as the FLUX VAE test argues,
// tests/models/vae.cpp).
TEST_P(QwenVaeDecode, Bf16MatchesDiffusers) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::BF16, ctx());
    const Tensor image = m.decode(qwen_vae_reference("bf16.z"));
    ASSERT_EQ(image.dtype(), DType::BF16);
    const Tensor ref16 = qwen_vae_reference("bf16.image"), ref32 = qwen_vae_reference("image");
    const Err vs16 = compare(image, ref16), vs32 = compare(image, ref32), ref_vs32 = compare(ref16, ref32);
    std::printf("[ qwen vae bf16 %s ] rel L2 vs bf16 ref %.4f, vs fp32 %.4f; ref bf16 vs fp32 %.4f; max|err| vs bf16 "
                "ref %.3g\n",
                GetParam().str().c_str(), vs16.rel_l2(), vs32.rel_l2(), ref_vs32.rel_l2(), vs16.max_abs);
    EXPECT_LE(vs16.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs32.rel_l2(), 1.25 * ref_vs32.rel_l2());
    if (on_gpu()) {
        const Tensor cpu = vae::AutoencoderKLQwenImage(kQwenVaeDir, DType::BF16).decode(qwen_vae_reference("bf16.z"));
        const Err vs_cpu = compare(image, cpu);
        std::printf("[ qwen vae bf16 %s ] rel L2 vs CPU bf16 %.4f\n", GetParam().str().c_str(), vs_cpu.rel_l2());
        EXPECT_LE(vs_cpu.rel_l2(), ref_vs32.rel_l2());
    }

    // postprocess of diffusers' bf16 image reproduces its uint8 image exactly.
    const Tensor u8 = ops::image_to_u8(ref16, {}), ref_u8 = qwen_vae_reference("bf16.image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    for (int64_t i = 0; i < ref_u8.numel(); ++i)
        ASSERT_EQ(u8.data<uint8_t>()[i], ref_u8.data<uint8_t>()[i]) << "value " << i;
}

TEST_P(QwenVaeDecode, RejectsWrongLatentShape) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::F32, ctx());
    EXPECT_THROW(m.decode(Tensor::zeros({1, 4, 6, 10}, DType::F32)), ShapeError);
    EXPECT_THROW(m.decode(Tensor::zeros({16, 6, 10}, DType::F32)), ShapeError);
    EXPECT_THROW(m.denormalize_latents(Tensor::zeros({1, 15, 2, 2}, DType::F32)), ShapeError);
}

// decode_tiled against diffusers' tiled decode (enable_tiling; tests/data/qwen_image_vae/tiled.safetensors,
// scripts/fixtures/make_qwen_image_vae_tiled_fixture.py): small tiles over 3 x 4 tiles with short last ones, and
// diffusers' default tiles over 1 x 2. fp32 within 1e-4 of max|ref| (the untiled decode is at 2.3e-6 on the CPU);
// bf16 at most diffusers' own bf16 distance from the fp32 reference (x 1.25, as the untiled bf16 test). diffusers
// does not clamp the tiled path; decode_tiled does, so the reference is compared clamped. Also printed: how far
// tiling moves the image from the untiled decode (the seam error, docs/qwen_image_vae.md).
TEST_P(QwenVaeDecode, TiledMatchesDiffusersTiled) {
    const SafetensorsFile ref((kQwenVaeData / "tiled.safetensors").string());
    vae::AutoencoderKLQwenImage m32(kQwenVaeDir, DType::F32, ctx()), m16(kQwenVaeDir, DType::BF16, ctx());
    for (const auto& [name, tiling] : std::vector<std::pair<std::string, vae::AutoencoderKLQwenImage::Tiling>>{
             {"small", {64, 48}}, {"default", {256, 192}}}) {
        const Tensor z = ref.get(name + ".latents");
        const Tensor want = clamped(ref.get(name + ".tiled")), want16 = clamped(ref.get(name + ".tiled_bf16"));
        const Tensor got = m32.decode_tiled(z, tiling);
        ASSERT_EQ(got.shape(), want.shape()) << name;
        const Err e32 = compare(got, want);
        EXPECT_LE(e32.max_abs, 1e-4 * e32.max_ref) << name;
        const Tensor got16 = m16.decode_tiled(z, tiling);
        ASSERT_EQ(got16.dtype(), DType::BF16);
        const Err vs32 = compare(got16, want), ref16_vs32 = compare(want16, want);
        EXPECT_LE(vs32.rel_l2(), 1.25 * ref16_vs32.rel_l2()) << name;
        const Err seam = compare(got, ref.get(name + ".whole"));
        double sum = 0;
        const Tensor whole = ref.get(name + ".whole");
        for (int64_t i = 0; i < got.numel(); ++i) sum += std::fabs(got.data<float>()[i] - whole.data<float>()[i]);
        std::printf("[ qwen vae tiled %s %s ] fp32 max|err| %.3g of max|ref| %.3g; bf16 rel L2 %.4f (diffusers' bf16 "
                    "%.4f); tiled vs untiled: max %.4f, mean %.5f, rel L2 %.4f\n",
                    name.c_str(), GetParam().str().c_str(), e32.max_abs, e32.max_ref, vs32.rel_l2(),
                    ref16_vs32.rel_l2(), seam.max_abs, sum / double(got.numel()), seam.rel_l2());
    }
    // Within one tile it is decode itself; bad tilings are refused by name.
    const Tensor z = ref.get("small.latents");
    const Tensor one = m32.decode_tiled(z), whole = m32.decode(z);
    EXPECT_EQ(compare(one, whole).max_abs, 0.0);
    EXPECT_THROW(m32.decode_tiled(z, {64, 72}), UsageError);
    EXPECT_THROW(m32.decode_tiled(z, {60, 48}), UsageError);
}

// Decoding in bands of latent rows (each band's up blocks over its rows and the context they read)
// gives the image of one piece: on the CPU bit for bit (oneDNN sums each output pixel in the same
// order whatever the tensor's height); on a GPU cuDNN may run another kernel for a band's shape, so
// within f32 rounding (1e-5 of max) and, in bf16, closer than bf16's own distance from f32. Bands
// of 1 to 5 rows cut the windows at the later (larger) blocks: one item (the 14-row latent also
// checked against diffusers' whole decode) and two items (rows copied per item).
TEST_P(QwenVaeDecode, BandsMatchOnePiece) {
    const SafetensorsFile tiled((kQwenVaeData / "tiled.safetensors").string());
    const Err bf16_noise = compare(qwen_vae_reference("bf16.image"), qwen_vae_reference("image"));
    for (DType dt : {DType::F32, DType::BF16}) {
        vae::AutoencoderKLQwenImage m(kQwenVaeDir, dt, ctx());
        for (const Tensor& z : {tiled.get("small.latents"), qwen_vae_reference("z")}) {
            const int64_t h = z.size(2);
            const Tensor whole = m.decode(z, h);
            EXPECT_EQ(m.band_rows(z.size(0), h, z.size(3)), h);  // small: decode(z) runs one piece
            EXPECT_EQ(compare(m.decode(z), whole).max_abs, 0.0);
            for (int64_t rows : {int64_t(1), int64_t(2), int64_t(3), int64_t(5)}) {
                const Tensor banded = m.decode(z, rows);
                ASSERT_EQ(banded.shape(), whole.shape());
                ASSERT_EQ(banded.dtype(), dt);
                const Err e = compare(banded, whole);
                std::printf("[ qwen vae bands %s %s ] %lld items, %lld of %lld rows: max|diff| %.3g, rel L2 %.3g\n",
                            GetParam().str().c_str(), dtype_name(dt), (long long)z.size(0), (long long)rows,
                            (long long)h, e.max_abs, e.rel_l2());
                if (!on_gpu())
                    EXPECT_EQ(e.max_abs, 0.0) << rows << " rows";
                else if (dt == DType::F32)
                    EXPECT_LE(e.max_abs, 1e-5 * e.max_ref) << rows << " rows";
                else
                    EXPECT_LE(e.rel_l2(), bf16_noise.rel_l2()) << rows << " rows";
            }
            if (dt == DType::F32 && z.size(0) == 1) {  // against diffusers' whole decode
                const Err e = compare(m.decode(z, 2), clamped(tiled.get("small.whole")));
                EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
            }
        }
        // A large latent is cut into bands (kBandBytes on a GPU, kHostBandBytes on the CPU).
        const int64_t rows = m.band_rows(1, 4096, 4096);
        EXPECT_GE(rows, 1);
        EXPECT_LT(rows, 4096);
        EXPECT_THROW(m.decode(qwen_vae_reference("z"), -1), UsageError);
    }
}

QDIT_INSTANTIATE_ON_DEVICES(QwenVaeDecode);
