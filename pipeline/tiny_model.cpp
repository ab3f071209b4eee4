#include "pipeline/tiny_model.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "models/model_spec.h"
#include "models/vae/autoencoder_kl.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qdit {

namespace {

const json kTransformer = {
    {"_class_name", "ZImageTransformer2DModel"}, {"all_patch_size", {2}}, {"all_f_patch_size", {1}},
    {"in_channels", 16}, {"dim", 64}, {"n_layers", 2}, {"n_refiner_layers", 1}, {"n_heads", 2},
    {"n_kv_heads", 2}, {"norm_eps", 1e-5}, {"qk_norm", true}, {"cap_feat_dim", 64},
    {"rope_theta", 256.0}, {"t_scale", 1000.0}, {"axes_dims", {8, 12, 12}},
    {"axes_lens", {1536, 512, 512}}};

// 256 byte tokens + 3 special tokens.
constexpr int kVocab = 259;

const json kTextEncoder = {
    {"architectures", {"Qwen3Model"}}, {"model_type", "qwen3"}, {"vocab_size", kVocab},
    {"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 3},
    {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 16},
    {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0}, {"max_position_embeddings", 4096},
    {"tie_word_embeddings", true}, {"attention_bias", false}, {"hidden_act", "silu"}};

const json kVae = {
    {"_class_name", "AutoencoderKL"}, {"in_channels", 3}, {"out_channels", 3},
    {"latent_channels", 16}, {"block_out_channels", {32, 32, 32, 32}}, {"layers_per_block", 1},
    {"norm_num_groups", 8}, {"act_fn", "silu"},
    {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}},
    {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}},
    {"scaling_factor", 0.3611}, {"shift_factor", 0.1159}, {"use_quant_conv", false},
    {"use_post_quant_conv", false}, {"mid_block_add_attention", true}};

const json kScheduler = {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
                         {"num_train_timesteps", 1000},
                         {"shift", 3.0},
                         {"use_dynamic_shifting", false}};

// The tiny Qwen-Image pipeline: the shapes of the test fixtures, the vocabulary of the byte
// tokenizer above, Qwen-Image's scheduler config.
const json kQwenTransformer = {
    {"_class_name", "QwenImageTransformer2DModel"}, {"attention_head_dim", 16}, {"axes_dims_rope", {4, 6, 6}},
    {"guidance_embeds", false}, {"in_channels", 64}, {"joint_attention_dim", 64}, {"num_attention_heads", 2},
    {"num_layers", 2}, {"out_channels", 16}, {"patch_size", 2}};

const json kQwenTextEncoder = {
    {"architectures", {"Qwen2_5_VLForConditionalGeneration"}}, {"model_type", "qwen2_5_vl"},
    {"vocab_size", kVocab}, {"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 2},
    {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
    {"rope_scaling", {{"type", "mrope"}, {"mrope_section", {2, 3, 3}}}}, {"max_position_embeddings", 4096},
    {"tie_word_embeddings", false}, {"hidden_act", "silu"}};

const json kQwenVae = {
    {"_class_name", "AutoencoderKLQwenImage"}, {"attn_scales", json::array()}, {"base_dim", 8},
    {"dim_mult", {1, 2, 4, 4}}, {"dropout", 0.0}, {"input_channels", 3}, {"num_res_blocks", 2},
    {"temperal_downsample", {false, true, true}}, {"z_dim", 16},
    // Qwen-Image's per-channel latent statistics.
    {"latents_mean", {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
                      0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921}},
    {"latents_std", {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
                     1.5579, 1.6382, 1.1253, 2.8251, 1.916}}};

const json kQwenScheduler = {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
                             {"num_train_timesteps", 1000},
                             {"shift", 1.0},
                             {"use_dynamic_shifting", true},
                             {"base_shift", 0.5},
                             {"max_shift", 0.9},
                             {"base_image_seq_len", 256},
                             {"max_image_seq_len", 8192},
                             {"shift_terminal", 0.02},
                             {"time_shift_type", "exponential"}};

// GPT-2's byte → printable character table, as UTF-8.
std::string byte_char(int b) {
    int cp = b;
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (!printable) {
        int n = 0;
        for (int c = 0; c < b; ++c)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) ++n;
        cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) {
        s += char(cp);
    } else {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    }
    return s;
}

void write_tokenizer(const fs::path& dir) {
    fs::create_directories(dir);
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
    json added = json::array();
    const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; ++i)
        added.push_back({{"id", 256 + i}, {"content", specials[i]}, {"single_word", false},
                         {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                         {"special", true}});
    // Qwen2's pre-tokenizer split (a format fact of the real tokenizer.json).
    const std::string split =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
        "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    json tok = {
        {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
        {"normalizer", {{"type", "NFC"}}},
        {"pre_tokenizer",
         {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
        {"post_processor", nullptr},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model",
         {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
          {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
          {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", json::array()}}}};
    write_file_atomic((dir / "tokenizer.json").string(), tok.dump());
    // A minimal template that renders what Qwen3's does for one user message
    // and the generation prompt with thinking enabled.
    const std::string chat_template =
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}";
    json cfg = {{"tokenizer_class", "Qwen2Tokenizer"}, {"pad_token", "<|endoftext|>"},
                {"eos_token", "<|im_end|>"}, {"model_max_length", 131072},
                {"chat_template", chat_template}};
    write_file_atomic((dir / "tokenizer_config.json").string(), cfg.dump(2));
}

// Random weights for every parameter of `params`: normal(0, 0.2) scaled by
// 1/sqrt(fan-in) for matrices and kernels, 1 ± 0.1 for norm weights, small
// biases; deterministic for a given seed.
void write_weights(const fs::path& dir, const std::string& stem, const std::vector<ParamSpec>& params,
                   uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n(0.f, 1.f);
    std::vector<std::pair<std::string, Tensor>> ts;
    for (const ParamSpec& p : params) {
        Tensor t = Tensor::empty(p.shape, DType::F32);
        auto ends_with = [&](const std::string& end) {
            return p.name.size() > end.size() && p.name.compare(p.name.size() - end.size(), end.size(), end) == 0;
        };
        // RMS / layer norm weights, and the Qwen-Image VAE's RMS norm gammas [C, 1, ...].
        const bool norm = (p.name.find("norm") != std::string::npos && p.shape.size() == 1 && ends_with(".weight")) ||
                          ends_with(".gamma");
        int64_t fan_in = 1;
        for (size_t d = 1; d < p.shape.size(); ++d) fan_in *= p.shape[d];
        const float scale = p.shape.size() >= 2 ? 1.0f / std::sqrt(float(fan_in)) : 0.1f;
        for (int64_t i = 0; i < t.numel(); ++i)
            t.data<float>()[i] = norm ? 1.0f + 0.1f * n(rng) : scale * n(rng);
        ts.emplace_back(p.name, t.to(DType::BF16));
    }
    write_checkpoint(dir.string(), stem, ts, size_t(1) << 31);
}

void write_component(const fs::path& dir, const json& config, const std::string& stem,
                     const std::vector<ParamSpec>& params, uint64_t seed) {
    fs::create_directories(dir);
    write_file_atomic((dir / "config.json").string(), config.dump(2));
    write_weights(dir, stem, params, seed);
}

// A pipeline folder: model_index.json naming `pipeline` and the models' classes, the scheduler config,
// the byte tokenizer, and the transformer, text encoder and VAE with random weights (seeds seed,
// seed + 1, seed + 2).
void write_pipeline(const std::string& dir_str, const std::string& pipeline, const json& scheduler,
                    const json& text_encoder, const json& transformer, const json& vae,
                    const std::vector<ParamSpec>& vae_params, uint64_t seed) {
    const fs::path dir(dir_str);
    fs::create_directories(dir);
    json index = {{"_class_name", pipeline},
                  {"_diffusers_version", "0.42.1"},
                  {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                  {"text_encoder", {"transformers", text_encoder["architectures"][0]}},
                  {"tokenizer", {"transformers", "Qwen2Tokenizer"}},
                  {"transformer", {"diffusers", transformer["_class_name"]}},
                  {"vae", {"diffusers", vae["_class_name"]}}};
    write_file_atomic((dir / "model_index.json").string(), index.dump(2));
    fs::create_directories(dir / "scheduler");
    write_file_atomic((dir / "scheduler" / "scheduler_config.json").string(), scheduler.dump(2));
    write_tokenizer(dir / "tokenizer");
    write_component(dir / "transformer", transformer, "diffusion_pytorch_model",
                    model_spec_from_config(transformer, "built-in transformer").params, seed);
    write_component(dir / "text_encoder", text_encoder, "model",
                    model_spec_from_config(text_encoder, "built-in text encoder").params, seed + 1);
    write_component(dir / "vae", vae, "diffusion_pytorch_model", vae_params, seed + 2);
}

}  // namespace

void write_tiny_zimage(const std::string& dir) {
    write_pipeline(dir, "ZImagePipeline", kScheduler, kTextEncoder, kTransformer, kVae,
                   vae::decoder_params(vae::Config::from_json(kVae, "built-in vae")), 1);
}

void write_tiny_qwen_image(const std::string& dir) {
    write_pipeline(dir, "QwenImagePipeline", kQwenScheduler, kQwenTextEncoder, kQwenTransformer, kQwenVae,
                   model_spec_from_config(kQwenVae, "built-in vae").params, 4);
}

TinyPipeline parse_tiny_pipeline(const std::string& name, const std::string& field) {
    if (name == "zimage") return TinyPipeline::ZImage;
    if (name == "qwen-image") return TinyPipeline::QwenImage;
    raise<UsageError>("{} {}: allowed values are {}", field, name, kTinyPipelineNames);
}

const char* tiny_pipeline_title(TinyPipeline p) { return p == TinyPipeline::ZImage ? "Z-Image" : "Qwen-Image"; }

std::string ensure_tiny_pipeline(const std::string& cache_dir, TinyPipeline p) {
    const std::string name = p == TinyPipeline::ZImage ? "tiny-zimage-v1" : "tiny-qwen-image-v1";
    const fs::path dir = fs::path(cache_dir) / name;
    if (fs::exists(dir / "model_index.json")) return dir.string();
    std::error_code ec;
    fs::create_directories(cache_dir, ec);
    if (ec) raise<IoError>("cannot create the cache folder {}: {}", cache_dir, ec.message());
    const fs::path tmp = fs::path(cache_dir) / (name + ".partial-" + std::to_string(::getpid()));
    fs::remove_all(tmp, ec);
    try {
        if (p == TinyPipeline::ZImage)
            write_tiny_zimage(tmp.string());
        else
            write_tiny_qwen_image(tmp.string());
        fs::rename(tmp, dir, ec);
        // Another process may have finished first: its copy is identical.
        if (ec && !fs::exists(dir / "model_index.json"))
            raise<IoError>("cannot create {}: {}", dir.string(), ec.message());
        fs::remove_all(tmp, ec);
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
    return dir.string();
}

}  // namespace qdit
