// The Qwen-Image VAE decoder (AutoencoderKLQwenImage): its config and checkpoint checks. Its decode
// against diffusers' outputs on the committed fixture (tests/data/qwen_image_vae/), on every device:
// tests/models/qwen_image_vae.cpp.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl_qwenimage.h"
#include "tests/expect_error.h"
#include "tests/qwen_image_vae_fixture.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;

namespace {

using testutil::expect_error_mentioning;
using testutil::kQwenVaeData;
using testutil::kQwenVaeDir;

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
