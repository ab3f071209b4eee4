// The AutoencoderKL decoder (Flux / Z-Image VAE): its config and checkpoint checks, random weights,
// and its nn ops on the CPU against naive loops. Its decode against diffusers' outputs on the
// committed fixture (tests/data/vae/), on every device: tests/models/vae.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/vae/autoencoder_kl.h"
#include "backend/cpu/conv2d.h"
#include "backend/cpu/upsample.h"
#include "ops/norm.h"
#include "tests/expect_error.h"
#include "tests/vae_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::compare;
using testutil::Err;
using testutil::expect_error_mentioning;
using testutil::kVaeData;
using testutil::kVaeDir;
using testutil::random_tensor;

// A scratch copy of the fixture's vae/ folder whose config and weights a test may change.
struct ScratchVae {
    fs::path dir = fs::temp_directory_path() / ("qdit_vae_" + std::to_string(::getpid()));
    ScratchVae() {
        fs::remove_all(dir);
        fs::create_directories(dir);
        fs::copy(kVaeDir, dir, fs::copy_options::recursive);
    }
    ~ScratchVae() { fs::remove_all(dir); }
    json config() const { return read_json_file((dir / "config.json").string()); }
    void write_config(const json& j) const {
        write_file_atomic((dir / "config.json").string(), j.dump(2));
    }
    // Rewrites the weights with `drop` left out and `replace` swapped in.
    void rewrite_weights(const std::string& drop, const std::string& replace = "",
                         const Tensor& with = Tensor()) const {
        const std::string file = (dir / "diffusion_pytorch_model.safetensors").string();
        std::vector<std::pair<std::string, Tensor>> ts;
        {
            SafetensorsFile f(file);
            for (const std::string& k : f.keys()) {
                if (k == drop) continue;
                ts.emplace_back(k, k == replace ? with : f.get(k).to(f.info(k).dtype));
            }
        }
        write_safetensors(file, ts);
    }
};

}  // namespace

// ---- nn ops against naive loops ---------------------------------------------

TEST(VaeOps, Conv2dMatchesNaiveLoop) {
    struct Case {
        int64_t in, out, k, pad;
    };
    for (const Case& c : {Case{3, 5, 3, 1}, Case{6, 4, 1, 0}, Case{4, 3, 3, 0}}) {
        SCOPED_TRACE(fmt::format("{}->{} k{} p{}", c.in, c.out, c.k, c.pad));
        const int64_t B = 2, H = 5, W = 7, Ho = H + 2 * c.pad - c.k + 1, Wo = W + 2 * c.pad - c.k + 1;
        Tensor x = random_tensor({B, H, W, c.in}, 1);
        Tensor w = random_tensor({c.out, c.in, c.k, c.k}, 2, 0.3f);
        Tensor bias = random_tensor({c.out}, 3);
        cpu::Conv2d conv("conv", w, bias, c.pad);
        Tensor y = conv.forward(x);
        Tensor acc = random_tensor({B, Ho, Wo, c.out}, 4);
        Tensor acc0 = acc.to(DType::F32);
        conv.forward_add(x, acc);
        ASSERT_EQ(y.shape(), (Shape{B, Ho, Wo, c.out}));
        const float *xp = x.data<float>(), *wp = w.data<float>();
        for (int64_t b = 0; b < B; ++b)
            for (int64_t i = 0; i < Ho; ++i)
                for (int64_t j = 0; j < Wo; ++j)
                    for (int64_t o = 0; o < c.out; ++o) {
                        double s = bias.data<float>()[o];
                        for (int64_t ci = 0; ci < c.in; ++ci)
                            for (int64_t u = 0; u < c.k; ++u)
                                for (int64_t v = 0; v < c.k; ++v) {
                                    const int64_t yi = i + u - c.pad, xj = j + v - c.pad;
                                    if (yi < 0 || yi >= H || xj < 0 || xj >= W) continue;
                                    s += double(xp[((b * H + yi) * W + xj) * c.in + ci]) *
                                         wp[((o * c.in + ci) * c.k + u) * c.k + v];
                                }
                        const int64_t idx = ((b * Ho + i) * Wo + j) * c.out + o;
                        EXPECT_NEAR(y.data<float>()[idx], s, 1e-5 * (1 + std::abs(s)));
                        EXPECT_NEAR(acc.data<float>()[idx], acc0.data<float>()[idx] + s,
                                    1e-5 * (1 + std::abs(s)));
                    }
    }
}

TEST(VaeOps, Conv2dBf16IsCloseToF32) {
    Tensor x = random_tensor({1, 6, 6, 8}, 5);
    Tensor w = random_tensor({8, 8, 3, 3}, 6, 0.2f);
    cpu::Conv2d conv("conv", w.to(DType::BF16), Tensor(), 1);
    Tensor ref = conv.forward(x.to(DType::BF16).to(DType::F32));
    Tensor y = conv.forward(x.to(DType::BF16));
    ASSERT_EQ(y.dtype(), DType::BF16);
    // f32 accumulation of bf16 products, then one bf16 rounding (2^-8 relative).
    for (int64_t i = 0; i < ref.numel(); ++i)
        EXPECT_NEAR(y.item_f32(i), ref.item_f32(i), std::abs(ref.item_f32(i)) * 0.0040 + 1e-6);
}

TEST(VaeOps, GroupNormMatchesNaiveLoop) {
    const int64_t B = 2, L = 13, C = 12, G = 3, cg = C / G;
    Tensor x = random_tensor({B, L, C}, 7, 2.0f);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] += 3.0f;  // a non-zero mean
    Tensor w = random_tensor({C}, 8), bias = random_tensor({C}, 9);
    const ops::Context cpu;
    Tensor y = ops::group_norm(x, w, bias, G, 1e-6f, false, cpu), ys = ops::group_norm(x, w, bias, G, 1e-6f, true, cpu);
    const float* xp = x.data<float>();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < G; ++g) {
            double s = 0, ss = 0;
            for (int64_t l = 0; l < L; ++l)
                for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += xp[(b * L + l) * C + c];
            const double mean = s / double(L * cg);
            for (int64_t l = 0; l < L; ++l)
                for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                    const double d = xp[(b * L + l) * C + c] - mean;
                    ss += d * d;
                }
            const double rstd = 1.0 / std::sqrt(ss / double(L * cg) + 1e-6);
            for (int64_t l = 0; l < L; ++l)
                for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
                    const int64_t i = (b * L + l) * C + c;
                    const double r = (xp[i] - mean) * rstd * w.data<float>()[c] + bias.data<float>()[c];
                    EXPECT_NEAR(y.data<float>()[i], r, 1e-5);
                    EXPECT_NEAR(ys.data<float>()[i], r / (1 + std::exp(-r)), 1e-5);
                }
        }
    expect_error_mentioning([&] { ops::group_norm(x, w, bias, 5, 1e-6f, false, cpu); }, "group_norm");  // 12 channels, 5 groups
    EXPECT_THROW(ops::group_norm(x, w, bias, 5, 1e-6f, false, cpu), ShapeError);
}

TEST(VaeOps, UpsampleNearest2x) {
    Tensor x = random_tensor({2, 3, 4, 5}, 10);
    Tensor y = cpu::upsample_nearest_2x(x);
    ASSERT_EQ(y.shape(), (Shape{2, 6, 8, 5}));
    for (int64_t b = 0; b < 2; ++b)
        for (int64_t i = 0; i < 6; ++i)
            for (int64_t j = 0; j < 8; ++j)
                for (int64_t c = 0; c < 5; ++c)
                    EXPECT_EQ(y.data<float>()[((b * 6 + i) * 8 + j) * 5 + c],
                              x.data<float>()[((b * 3 + i / 2) * 4 + j / 2) * 5 + c]);
}

// ---- config ------------------------------------------------------------------

TEST(VaeConfig, ReadsThePublishedZImageConfig) {
    const std::string path = (kVaeData / "published" / "config.json").string();
    vae::Config c = vae::Config::from_json(read_json_file(path), path);
    EXPECT_EQ(c.latent_channels, 16);
    EXPECT_EQ(c.out_channels, 3);
    EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
    EXPECT_EQ(c.layers_per_block, 2);
    EXPECT_EQ(c.norm_num_groups, 32);
    EXPECT_DOUBLE_EQ(c.scaling_factor, 0.3611);
    EXPECT_DOUBLE_EQ(c.shift_factor, 0.1159);
    EXPECT_FALSE(c.use_post_quant_conv);
    EXPECT_TRUE(c.mid_block_add_attention);
    EXPECT_EQ(c.spatial_scale(), 8);
}

TEST(VaeConfig, RefusesUnsupportedFieldsByName) {
    const std::string path = (kVaeData / "published" / "config.json").string();
    const json base = read_json_file(path);
    struct Bad {
        const char* field;
        json value;
    };
    const Bad cases[] = {
        {"_class_name", "AutoencoderKLQwenImage"},
        {"up_block_types", {"UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D",
                            "UpDecoderBlock2D"}},
        {"up_block_types", {"UpDecoderBlock2D"}},  // count differs from block_out_channels
        {"norm_num_groups", 48},                   // 128 is not a multiple
        {"act_fn", "gelu"},
        {"scaling_factor", 0.0},
        {"latent_channels", "16"},                 // wrong type
        {"block_out_channels", json::array()},
    };
    for (const Bad& b : cases) {
        json j = base;
        j[b.field] = b.value;
        SCOPED_TRACE(j[b.field].dump());
        expect_error_mentioning([&] { vae::Config::from_json(j, path); }, b.field);
        EXPECT_THROW(vae::Config::from_json(j, path), ConfigError);
    }
    json j = base;
    j["shift_factor"] = nullptr;  // diffusers' default: no shift
    EXPECT_EQ(vae::Config::from_json(j, path).shift_factor, 0.0);
}

// decoder_params() lists exactly the checkpoint's decode-path tensors, and
// for the published config the parameter count diffusers reports.
TEST(VaeConfig, DecoderParamsMatchDiffusers) {
    const vae::Config tiny =
        vae::Config::from_json(read_json_file(kVaeDir + "/config.json"), "tiny");
    std::map<std::string, Shape> want;
    Checkpoint ck(kVaeDir);
    for (const std::string& k : ck.keys())
        if (k.rfind("decoder.", 0) == 0 || k.rfind("post_quant_conv.", 0) == 0)
            want[k] = ck.info(k).shape;
    std::map<std::string, Shape> got;
    for (const ParamSpec& p : vae::decoder_params(tiny)) got[p.name] = p.shape;
    EXPECT_EQ(got, want);

    const std::string path = (kVaeData / "published" / "config.json").string();
    int64_t n = 0;
    for (const ParamSpec& p : vae::decoder_params(vae::Config::from_json(read_json_file(path), path)))
        n += shape_numel(p.shape);
    EXPECT_EQ(n, read_json_file((kVaeData / "fixture.json").string())["published_decoder_param_count"]);
}

// The config is checked before any weight is read.
TEST(VaeLoad, BadConfigIsAConfigErrorNamingFileAndField) {
    ScratchVae s;
    json j = s.config();
    j["act_fn"] = "mish";
    s.write_config(j);
    fs::remove(s.dir / "diffusion_pytorch_model.safetensors");
    expect_error_mentioning([&] { vae::AutoencoderKL m(s.dir.string()); }, "act_fn");
    expect_error_mentioning([&] { vae::AutoencoderKL m(s.dir.string()); }, "config.json");
    EXPECT_THROW(vae::AutoencoderKL m(s.dir.string()), ConfigError);
}

TEST(VaeLoad, MissingTensorIsNamed) {
    ScratchVae s;
    const std::string key = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight";
    s.rewrite_weights(key);
    expect_error_mentioning([&] { vae::AutoencoderKL m(s.dir.string()); }, key);
    EXPECT_THROW(vae::AutoencoderKL m(s.dir.string()), ShapeError);
}

TEST(VaeLoad, MisshapenTensorIsNamed) {
    ScratchVae s;
    const std::string key = "decoder.conv_norm_out.weight";
    s.rewrite_weights("", key, Tensor::zeros({17}, DType::F32));
    expect_error_mentioning([&] { vae::AutoencoderKL m(s.dir.string()); }, key);
    EXPECT_THROW(vae::AutoencoderKL m(s.dir.string()), ShapeError);
}

// A config that asks for a post_quant_conv the checkpoint lacks is caught too.
TEST(VaeLoad, PostQuantConvFollowsTheConfig) {
    ScratchVae s;
    json j = s.config();
    j["use_post_quant_conv"] = true;
    s.write_config(j);
    expect_error_mentioning([&] { vae::AutoencoderKL m(s.dir.string()); }, "post_quant_conv.weight");
}

// Random weights (the GPU benchmark's decoder at the real size) depend on the seed alone, and
// decode like loaded ones: the same seed gives the same image, another seed another one.
TEST(VaeDecode, RandomWeightsFollowTheSeed) {
    const vae::Config tiny = vae::Config::from_json(read_json_file(kVaeDir + "/config.json"), "tiny");
    const Tensor z = random_tensor({1, tiny.latent_channels, 4, 6}, 21);
    const Tensor a = vae::AutoencoderKL::random(tiny, DType::F32, 1).decode(z);
    const Tensor b = vae::AutoencoderKL::random(tiny, DType::F32, 1).decode(z);
    const Tensor c = vae::AutoencoderKL::random(tiny, DType::F32, 2).decode(z);
    ASSERT_EQ(a.shape(), (Shape{1, tiny.out_channels, 4 * tiny.spatial_scale(), 6 * tiny.spatial_scale()}));
    EXPECT_EQ(compare(a, b).max_abs, 0.0);
    EXPECT_GT(compare(a, c).max_abs, 0.0);
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_TRUE(std::isfinite(a.item_f32(i))) << i;
}
