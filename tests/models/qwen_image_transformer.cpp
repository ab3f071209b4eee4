// The Qwen-Image transformer (models/qwen_image/transformer.h) on every device this build and
// machine have (tests/devices.h) against diffusers' own outputs on the committed fixtures
// (tests/data/qwen_image/, made by scripts/fixtures/make_qwen_image_fixtures.py) and, off the CPU,
// against the CPU model. The published config, the int8 plans' layer sets and the pre-quantized
// round trip are in tests/test_qwen_image_forward.cpp; the CUDA graph in
// tests/cuda/test_cuda_qwen_image.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "tests/devices.h"
#include "tests/expect_error.h"
#include "tests/qwen_image_fixture.h"

using namespace qdit;
using namespace qdit::testutil;

namespace {

class QwenImageForward : public DeviceTest {};

QuantConfig int8() { return QuantConfig{QuantMethod::Int8, {}, "dynamic"}; }

}  // namespace

// fp32 (the CPU): only f32 rounding-order differences remain. A GPU runs the transformer in bf16
// only and refuses F32 by name.
TEST_P(QwenImageForward, Fp32MatchesDiffusers) {
    if (on_gpu()) {
        const PreparedModel m = prepare_model(qwen_image_transformer("h3_b1"), QuantConfig{});
        expect_error_mentioning([&] { qwen_image::QwenImageTransformer t(m, DType::F32, ctx()); }, "BF16");
        return;
    }
    for (const char* name : kQwenImageFixtures) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        const Err e = compare(run_qwen_image(prepare_model(qwen_image_transformer(name), QuantConfig{}), DType::F32,
                                             in, false, ctx()),
                              qwen_image_reference(name, "fp32"));
        std::printf("[ %-10s ] fp32: max|err| %.3g (%.3g of max|ref|)\n", name, e.max_abs, e.max_abs / e.max_ref);
        EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
    }
}

// bf16, with the timestep the bf16 pipeline passes (σ rounded twice, see the fixtures' README): the
// reference's own bf16 error is its distance to the fp32 model given that same timestep
// (`fp32_timestep_bf16`), d_ref. On every device we must be nearer to the bf16 reference than
// 0.8 · d_ref (shared rounding points: measured 0.28-0.40 × on the CPU; rounding independently would
// give ≈ 1.4 ×), and no further from fp32 than the reference is, up to
//   - the CPU: 0.75 dB. (Z-Image's test allows 0.5 dB; here the 3-block h2_sharded measures
//     42.82 dB against the reference's 43.34 dB while it sits at 0.40 × the noise from the bf16
//     reference: torch's CPU attention rounds its softmax numerators from an approximate exp, so the
//     reference is itself one draw of bf16 noise, not the lower bound.)
//   - a GPU: 1.0 dB (h2_sharded measured 42.46 dB on an H100 while its distance to the bf16
//     reference, 0.0052, is inside 0.8 × 0.0068); and near the CPU's bf16 run, ≤ 0.8 · d_ref (the
//     kernels round where the CPU ops do; cuDNN's attention and the GEMMs order their sums
//     differently).
TEST_P(QwenImageForward, Bf16MatchesDiffusers) {
    const double sqnr_slack = on_gpu() ? 1.0 : 0.75;
    for (const char* name : kQwenImageFixtures) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        const PreparedModel m = prepare_model(qwen_image_transformer_bf16(name), QuantConfig{});
        const Tensor out = run_qwen_image(m, DType::BF16, in, true, ctx());
        const Tensor ref16 = qwen_image_reference(name, "bf16"), ref32 = qwen_image_reference(name, "fp32_timestep_bf16");
        const Err vs16 = compare(out, ref16), vs32 = compare(out, ref32), ref_vs32 = compare(ref16, ref32);
        std::printf("[ %-10s %s ] bf16: rel L2 vs bf16 ref %.4f; vs fp32 %.4f (%.2f dB), ref bf16 vs fp32 %.4f "
                    "(%.2f dB)\n",
                    name, GetParam().str().c_str(), vs16.rel_l2(), vs32.rel_l2(), vs32.sqnr_db(), ref_vs32.rel_l2(),
                    ref_vs32.sqnr_db());
        EXPECT_LE(vs16.rel_l2(), 0.8 * ref_vs32.rel_l2());
        EXPECT_GE(vs32.sqnr_db(), ref_vs32.sqnr_db() - sqnr_slack);
        if (on_gpu()) {
            const Err vs_cpu = compare(out, run_qwen_image(m, DType::BF16, in, true));
            std::printf("[ %-10s %s ] bf16: rel L2 vs cpu %.4f\n", name, GetParam().str().c_str(), vs_cpu.rel_l2());
            EXPECT_LE(vs_cpu.rel_l2(), 0.8 * ref_vs32.rel_l2());
        }
    }
}

// The default int8 plan: attention and MLP Linears W8A8, img_mod / txt_mod weight-only int8, the
// rest high precision.
//   - f32 activations (the CPU), against `w8a8` (the same layer sets): the int8 arithmetic is the
//     reference's, so we reproduce its quantization noise (distance ≤ 0.25 × its distance to fp32)
//     and its SQNR (within 0.25 dB), as the Z-Image test argues;
//   - bf16 activations (every device; the bf16 pipeline's timestep): the distance from fp32 is the
//     bf16 noise and the W8A8 noise together, so the SQNR against fp32 must reach the lower of the
//     two references' SQNRs (bf16; w8a8_mod_fp32, the W8A8 noise alone) less 1 dB.
TEST_P(QwenImageForward, Int8DefaultPlanMatchesW8A8Reference) {
    for (const char* name : kQwenImageFixtures) {
        SCOPED_TRACE(name);
        const QwenImageInputs in = qwen_image_inputs(name);
        const PreparedModel m = prepare_model(qwen_image_transformer(name), int8());
        for (const LayerPlan& l : m.plan.layers) {
            const std::string& n = l.spec.name;
            const Precision want = n.find(".attn.") != std::string::npos || n.find("_mlp.") != std::string::npos
                                       ? Precision::Int8
                                   : n.find("_mod.") != std::string::npos ? Precision::Int8WeightOnly
                                                                          : Precision::High;
            EXPECT_EQ(int(l.precision), int(want)) << n;
        }
        const Tensor ref32 = qwen_image_reference(name, "fp32");
        if (!on_gpu()) expect_reproduces_w8a8(run_qwen_image(m, DType::F32, in, false, ctx()), name, "w8a8");
        const Tensor out16 = run_qwen_image(m, DType::BF16, in, true, ctx());
        const Tensor ref32_t16 = qwen_image_reference(name, "fp32_timestep_bf16");
        const double got = compare(out16, ref32_t16).sqnr_db(),
                     bf16 = compare(qwen_image_reference(name, "bf16"), ref32_t16).sqnr_db(),
                     w8a8 = compare(qwen_image_reference(name, "w8a8_mod_fp32"), ref32).sqnr_db();
        std::printf("[ %-10s %s ] int8 + bf16: SQNR vs fp32 %.2f dB (bf16 ref %.2f, w8a8 ref %.2f)\n", name,
                    GetParam().str().c_str(), got, bf16, w8a8);
        EXPECT_GE(got, std::min(bf16, w8a8) - 1.0);
    }
}

// ops::zero_rows, which clears the joint attention's padding rows: exactly the rows asked for, and a
// range past the tensor is refused.
TEST_P(QwenImageForward, ZeroRowsClearsOnlyItsRows) {
    Tensor host = Tensor::empty({6, 5}, DType::BF16);
    for (int64_t i = 0; i < host.numel(); ++i) host.data<uint16_t>()[i] = uint16_t(0x3f80 + i);  // 1.0 upward
    Tensor t = ops::to_device(host, ctx());
    ops::zero_rows(t, 2, 3, ctx());
    ops::zero_rows(t, 6, 0, ctx());  // nothing
    const Tensor back = ops::to_host(t, ctx());
    for (int64_t r = 0; r < 6; ++r)
        for (int64_t c = 0; c < 5; ++c) {
            const uint16_t want = r >= 2 && r < 5 ? 0 : host.data<uint16_t>()[r * 5 + c];
            EXPECT_EQ(back.data<uint16_t>()[r * 5 + c], want) << r << "," << c;
        }
    expect_error_mentioning([&] { ops::zero_rows(t, 4, 3, ctx()); }, "zero_rows: rows 4..7");
}

QDIT_INSTANTIATE_ON_DEVICES(QwenImageForward);
