// The Qwen-Image VAE decoder (AutoencoderKLQwenImage, one frame) against diffusers' own outputs on
// the committed fixture (tests/data/qwen_image_vae/, made by
// scripts/fixtures/make_qwen_image_vae_fixtures.py), on the CPU; its config and checkpoint checks.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "tests/expect_error.h"
#include "tests/qwen_image_vae_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::compare;
using testutil::Err;
using testutil::expect_error_mentioning;
using testutil::kQwenVaeData;
using testutil::kQwenVaeDir;
using testutil::qwen_vae_input;
using testutil::qwen_vae_reference;

// A scratch copy of the fixture's vae/ folder whose config and weights a test may change.
struct ScratchVae {
    fs::path dir = fs::temp_directory_path() / ("qdit_qwen_vae_" + std::to_string(::getpid()));
    ScratchVae() {
        fs::remove_all(dir);
        fs::create_directories(dir);
        fs::copy(kQwenVaeDir, dir, fs::copy_options::recursive);
    }
    ~ScratchVae() { fs::remove_all(dir); }
    json config() const { return read_json_file((dir / "config.json").string()); }
    void write_config(const json& j) const { write_file_atomic((dir / "config.json").string(), j.dump(2)); }
    // Rewrites the weights with `drop` left out.
    void drop_weight(const std::string& drop) const {
        const std::string file = (dir / "diffusion_pytorch_model.safetensors").string();
        std::vector<std::pair<std::string, Tensor>> ts;
        {
            SafetensorsFile f(file);
            for (const std::string& k : f.keys())
                if (k != drop) ts.emplace_back(k, f.get(k).to(f.info(k).dtype));
        }
        write_safetensors(file, ts);
    }
};

json fixture_meta() { return read_json_file((kQwenVaeData / "fixture.json").string()); }

}  // namespace

// ---- config and parameter spec ------------------------------------------------

TEST(QwenVaeConfig, ReadsThePublishedConfig) {
    const std::string path = (kQwenVaeData / "published" / "config.json").string();
    const auto c = vae::QwenImageVaeConfig::from_json(read_json_file(path), path);
    EXPECT_EQ(c.base_dim, 96);
    EXPECT_EQ(c.z_dim, 16);
    EXPECT_EQ(c.dims(), (std::vector<int64_t>{384, 384, 384, 192, 96}));
    EXPECT_EQ(c.up_in_dim(0), 384);
    EXPECT_EQ(c.up_in_dim(1), 192);
    EXPECT_EQ(c.up_in_dim(3), 96);
    EXPECT_EQ(c.spatial_scale(), 8);
    EXPECT_TRUE(c.temporal_upsample(0));
    EXPECT_TRUE(c.temporal_upsample(1));
    EXPECT_FALSE(c.temporal_upsample(2));
    // The decoder's parameters (time_conv included) number what diffusers counts.
    const ModelSpec s = load_model_spec((kQwenVaeData / "published").string());
    ModelSpec all = s;
    all.params.insert(all.params.end(), s.optional_params.begin(), s.optional_params.end());
    EXPECT_EQ(all.parameter_count(), fixture_meta()["published_decoder_param_count"].get<int64_t>());
    EXPECT_TRUE(s.linears.empty());
}

TEST(QwenVaeConfig, RefusesBadFieldsByName) {
    const std::string path = (fs::path(kQwenVaeDir) / "config.json").string();
    const json base = read_json_file(path);
    auto refuses = [&](const char* field, const json& value) {
        json j = base;
        j[field] = value;
        SCOPED_TRACE(field);
        EXPECT_THROW(vae::QwenImageVaeConfig::from_json(j, path), ConfigError);
        expect_error_mentioning([&] { vae::QwenImageVaeConfig::from_json(j, path); }, field);
        expect_error_mentioning([&] { vae::QwenImageVaeConfig::from_json(j, path); }, "config.json");
    };
    refuses("_class_name", "AutoencoderKL");
    refuses("base_dim", 2.5);
    refuses("base_dim", 0);
    refuses("z_dim", "16");
    refuses("dim_mult", json::array());
    refuses("dim_mult", json::array({1, 2, 4}));  // three levels, but three temperal_downsample entries
    refuses("num_res_blocks", -1);
    refuses("temperal_downsample", json::array({false, true}));
    refuses("temperal_downsample", json::array({0, 1, 1}));
    refuses("latents_mean", json::array({0.0, 1.0}));
    refuses("latents_std", json(std::vector<double>(16, 0.0)));
    refuses("dropout", 2.0);
    refuses("attn_scales", json::array({"a"}));
    // attn_scales only places attention blocks in the encoder: any list of numbers is accepted.
    json j = base;
    j["attn_scales"] = json::array({0.5});
    EXPECT_NO_THROW(vae::QwenImageVaeConfig::from_json(j, path));
}

// ---- loading ------------------------------------------------------------------

TEST(QwenVaeLoad, TheFixtureMatchesTheSpec) {
    // prepare_model (what `qdit inspect` runs) accepts the checkpoint: the encoder, quant_conv and
    // time_conv weights are known and left unread.
    const PreparedModel m = prepare_model(kQwenVaeDir, QuantConfig{});
    EXPECT_EQ(m.spec.class_name, "AutoencoderKLQwenImage");
    ModelSpec optional;
    optional.params = m.spec.optional_params;
    EXPECT_EQ(m.spec.parameter_count() + optional.parameter_count(),
              fixture_meta()["decoder_param_count"].get<int64_t>());
    vae::AutoencoderKLQwenImage vae(m);
    EXPECT_GT(vae.weight_bytes(), 0u);
}

TEST(QwenVaeLoad, BadConfigIsAConfigErrorNamingFileAndField) {
    ScratchVae s;
    json j = s.config();
    j["temperal_downsample"] = json::array({true});
    s.write_config(j);
    fs::remove(s.dir / "diffusion_pytorch_model.safetensors");  // refused before any weight is looked for
    expect_error_mentioning([&] { vae::AutoencoderKLQwenImage m(s.dir.string()); }, "temperal_downsample");
    expect_error_mentioning([&] { vae::AutoencoderKLQwenImage m(s.dir.string()); }, "config.json");
    EXPECT_THROW(vae::AutoencoderKLQwenImage m(s.dir.string()), ConfigError);
}

TEST(QwenVaeLoad, MissingTensorIsNamed) {
    ScratchVae s;
    const std::string key = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight";
    s.drop_weight(key);
    expect_error_mentioning([&] { vae::AutoencoderKLQwenImage m(s.dir.string()); }, key);
    EXPECT_THROW(vae::AutoencoderKLQwenImage m(s.dir.string()), ShapeError);
}

TEST(QwenVaeLoad, ABaseDimThatDisagreesWithTheWeightsIsNamed) {
    ScratchVae s;
    json j = s.config();
    j["base_dim"] = 16;
    s.write_config(j);
    expect_error_mentioning([&] { vae::AutoencoderKLQwenImage m(s.dir.string()); }, "'decoder.conv_in.");
    EXPECT_THROW(vae::AutoencoderKLQwenImage m(s.dir.string()), ShapeError);
}

// ---- decode against diffusers ---------------------------------------------------

TEST(QwenVaeDecode, DenormalizeMatchesThePipelineExactly) {
    for (DType dt : {DType::F32, DType::BF16}) {
        vae::AutoencoderKLQwenImage m(kQwenVaeDir, dt);
        const Tensor z = m.denormalize_latents(qwen_vae_input("latents"));
        const Tensor ref = qwen_vae_reference(dt == DType::F32 ? "z" : "bf16.z");
        ASSERT_EQ(z.dtype(), ref.dtype());
        ASSERT_EQ(z.shape(), ref.shape());
        for (int64_t i = 0; i < ref.numel(); ++i)
            ASSERT_EQ(z.item_f32(i), ref.item_f32(i)) << dtype_name(dt) << " element " << i;
    }
}

// fp32: only f32 summation-order differences remain (oneDNN's convolution blocking, the channel
// norms' sums in double, the attention's exp).
TEST(QwenVaeDecode, Fp32MatchesDiffusers) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::F32);
    const Tensor image = m.decode(qwen_vae_reference("z"));
    ASSERT_EQ(image.dtype(), DType::F32);
    const Err e = compare(image, qwen_vae_reference("image"));
    std::printf("[ qwen vae fp32 ] max|err| %.3g (%.3g of max|ref| %.3g), rel L2 %.3g\n", e.max_abs,
                e.max_abs / e.max_ref, e.max_ref, e.rel_l2());
    EXPECT_LE(e.max_abs, 1e-4 * e.max_ref);
    for (int64_t i = 0; i < image.numel(); ++i) ASSERT_LE(std::fabs(image.item_f32(i)), 1.0f) << "element " << i;

    // The uint8 image (the Z-Image postprocess is the pipeline's too): a value can only differ by
    // one level, where x·127.5 + 127.5 lies within the fp32 error above of a .5 boundary.
    const Tensor u8 = vae::postprocess_to_u8(image), ref_u8 = qwen_vae_reference("image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    int64_t off_by_one = 0;
    for (int64_t i = 0; i < ref_u8.numel(); ++i) {
        const int d = std::abs(int(u8.data<uint8_t>()[i]) - int(ref_u8.data<uint8_t>()[i]));
        ASSERT_LE(d, 1) << "pixel value " << i;
        off_by_one += d;
    }
    std::printf("[ qwen vae fp32 ] uint8: %lld of %lld values differ by one\n", (long long)off_by_one,
                (long long)ref_u8.numel());
    EXPECT_LT(double(off_by_one), 1e-3 * double(ref_u8.numel()));
}

// bf16: weights, gammas and activations are rounded to bf16 wherever torch rounds them (each RMS
// norm three times, SiLU, every convolution's output, each residual sum). Bitwise agreement is not
// reachable: torch's and oneDNN's convolutions accumulate in different orders and torch's CPU flash
// attention uses an approximate exp, so single bf16 roundings differ and propagate through the
// ~30 layers. The bound is therefore relative to bf16's own error: the distance of diffusers' bf16
// output from its fp32 output (relative L2), which our bf16 output may not exceed against diffusers'
// bf16 output, and against fp32 by at most 1.25 times (as the FLUX VAE test argues, tests/test_vae.cpp).
TEST(QwenVaeDecode, Bf16MatchesDiffusers) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir, DType::BF16);
    const Tensor image = m.decode(qwen_vae_reference("bf16.z"));
    ASSERT_EQ(image.dtype(), DType::BF16);
    const Tensor ref16 = qwen_vae_reference("bf16.image"), ref32 = qwen_vae_reference("image");
    const Err vs16 = compare(image, ref16), vs32 = compare(image, ref32), ref_vs32 = compare(ref16, ref32);
    std::printf("[ qwen vae bf16 ] rel L2 vs bf16 ref %.4f, vs fp32 %.4f; ref bf16 vs fp32 %.4f; max|err| vs bf16 "
                "ref %.3g\n",
                vs16.rel_l2(), vs32.rel_l2(), ref_vs32.rel_l2(), vs16.max_abs);
    EXPECT_LE(vs16.rel_l2(), ref_vs32.rel_l2());
    EXPECT_LE(vs32.rel_l2(), 1.25 * ref_vs32.rel_l2());

    // postprocess of diffusers' bf16 image reproduces its uint8 image exactly.
    const Tensor u8 = vae::postprocess_to_u8(ref16), ref_u8 = qwen_vae_reference("bf16.image_u8");
    ASSERT_EQ(u8.shape(), ref_u8.shape());
    for (int64_t i = 0; i < ref_u8.numel(); ++i)
        ASSERT_EQ(u8.data<uint8_t>()[i], ref_u8.data<uint8_t>()[i]) << "value " << i;
}

TEST(QwenVaeDecode, RejectsWrongLatentShape) {
    vae::AutoencoderKLQwenImage m(kQwenVaeDir);
    EXPECT_THROW(m.decode(Tensor::zeros({1, 4, 6, 10}, DType::F32)), ShapeError);
    EXPECT_THROW(m.decode(Tensor::zeros({16, 6, 10}, DType::F32)), ShapeError);
    EXPECT_THROW(m.denormalize_latents(Tensor::zeros({1, 15, 2, 2}, DType::F32)), ShapeError);
}

namespace {

Tensor clamped(const Tensor& t) {
    Tensor c = t.to(DType::F32);
    for (int64_t i = 0; i < c.numel(); ++i) c.data<float>()[i] = std::min(1.0f, std::max(-1.0f, c.data<float>()[i]));
    return c;
}

}  // namespace

// decode_tiled against diffusers' tiled decode (enable_tiling; tests/data/qwen_image_vae/tiled.safetensors,
// scripts/fixtures/make_qwen_image_vae_tiled_fixture.py): small tiles over 3 x 4 tiles with short last ones, and
// diffusers' default tiles over 1 x 2. fp32 within 1e-4 of max|ref| (the untiled decode is at 2.3e-6); bf16 at
// most diffusers' own bf16 distance from the fp32 reference (x 1.25, as the untiled bf16 test). diffusers does not
// clamp the tiled path; decode_tiled does, so the reference is compared clamped. Also printed: how far tiling
// moves the image from the untiled decode (the seam error, docs/qwen_image_vae.md).
TEST(QwenVaeDecode, TiledMatchesDiffusersTiled) {
    const SafetensorsFile ref((kQwenVaeData / "tiled.safetensors").string());
    vae::AutoencoderKLQwenImage m32(kQwenVaeDir, DType::F32), m16(kQwenVaeDir, DType::BF16);
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
        std::printf("[ qwen vae tiled %s ] fp32 max|err| %.3g of max|ref| %.3g; bf16 rel L2 %.4f (diffusers' bf16 "
                    "%.4f); tiled vs untiled: max %.4f, mean %.5f, rel L2 %.4f\n",
                    name.c_str(), e32.max_abs, e32.max_ref, vs32.rel_l2(), ref16_vs32.rel_l2(), seam.max_abs,
                    sum / double(got.numel()), seam.rel_l2());
    }
    // Within one tile it is decode itself; bad tilings are refused by name.
    const Tensor z = ref.get("small.latents");
    const Tensor one = m32.decode_tiled(z), whole = m32.decode(z);
    EXPECT_EQ(compare(one, whole).max_abs, 0.0);
    EXPECT_THROW(m32.decode_tiled(z, {64, 72}), UsageError);
    EXPECT_THROW(m32.decode_tiled(z, {60, 48}), UsageError);
}
