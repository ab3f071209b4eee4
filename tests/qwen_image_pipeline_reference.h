// Test helpers for the Qwen-Image pipeline: one case of the committed reference
// (tests/data/qwen_image_pipeline/reference.json and reference.safetensors, written by diffusers) as
// QwenImageGenerateOptions, and the denoising loop as the pipeline ran it with the latents on the host.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/qwen_image/transformer.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/scheduler.h"

namespace qdit::testutil {

inline QwenImageGenerateOptions qwen_image_reference_case(const nlohmann::json& meta, const nlohmann::json& c,
                                                          const SafetensorsFile& ref, bool packed = true) {
    QwenImageGenerateOptions o;
    o.prompt = c["prompt"];
    if (!c["negative_prompt"].is_null()) o.negative_prompt = c["negative_prompt"].get<std::string>();
    o.true_cfg_scale = c["true_cfg_scale"];
    o.steps = c["steps"];
    o.width = c["width"];
    o.height = c["height"];
    o.max_sequence_length = meta["max_sequence_length"];
    o.latents = ref.get(c["name"].get<std::string>() + (packed ? ".packed_latents" : ".latents"));
    return o;
}

// The final packed latents of the Qwen-Image pipeline folder `dir` (a VAE of scale 8) for o, which
// must carry packed initial latents [1, L, F], denoised as the pipeline did while it kept the latents
// on the host: every step the transformer's host forward (the latents cast and moved to the model's
// device, the velocity brought back; with true CFG one call on the pipeline's batch of 2, the
// latents once per item and the prompts as qwen_image_cfg_batch puts them), then true CFG with the
// norm rescale and the scheduler's step on the host, rounded to the pipeline's dtype. `pipe` gives
// the prompt embeddings, `model` is its transformer (same weights, dtype and device; it keeps the
// modulation of the schedule's timesteps while it runs, as the pipeline's does). The pipeline,
// which keeps the latents on the transformer's device instead, must give these bit for bit.
inline Tensor qwen_image_host_loop_latents(const QwenImagePipeline& pipe, const std::string& dir,
                                           const QwenImageGenerateOptions& o,
                                           const qwen_image::QwenImageTransformer& model) {
    const std::string sp = dir + "/scheduler/scheduler_config.json";
    const FlowMatchConfig sc = FlowMatchConfig::from_json(read_json_file(sp), sp);
    const DType dt = pipe.dtype();
    const bool cfg = o.true_cfg();
    const Tensor pos = pipe.encode_prompt(o.prompt, o.max_sequence_length);
    const QwenImageCfgBatch text =
        cfg ? qwen_image_cfg_batch(pos, pipe.encode_prompt(*o.negative_prompt, o.max_sequence_length))
            : QwenImageCfgBatch{pos, Tensor()};
    const int64_t B = cfg ? 2 : 1;
    Tensor latents = o.latents.to(DType::F32);
    const int64_t L = latents.size(1), F = latents.size(2);
    Tensor input = Tensor::empty({B, L, F}, DType::F32);
    const std::array<int64_t, 3> grid{1, o.height / 16, o.width / 16};
    float* x = latents.data<float>();
    for (int64_t k = 0; k < L * F; ++k) x[k] = round_to_dtype(x[k], dt);
    FlowMatchEulerScheduler sched(sc, qwen_image_default_sigmas(o.steps), calculate_shift(L, sc));
    std::vector<float> sigmas(size_t(sched.steps()));
    for (size_t i = 0; i < sigmas.size(); ++i)
        sigmas[i] = round_to_dtype(round_to_dtype(sched.timesteps()[i], dt) / 1000.0f, dt);
    model.set_timesteps(sigmas);  // as the pipeline: the schedule's modulation kept
    for (int i = 0; i < sched.steps(); ++i) {
        Tensor sigma = Tensor::empty({B}, DType::F32);
        for (int64_t b = 0; b < B; ++b) {
            sigma.data<float>()[b] = sigmas[size_t(i)];
            std::copy(x, x + L * F, input.data<float>() + b * L * F);
        }
        // Item 0: the prompt's velocity; item 1: the negative prompt's.
        Tensor v = model.forward(input, text.embeds, text.mask, sigma, grid).to(DType::F32);
        float* vp = v.data<float>();
        if (cfg) {
            const float* np = vp + L * F;
            for (int64_t tok = 0; tok < L; ++tok) {
                float* c = vp + tok * F;
                const float* u = np + tok * F;
                std::vector<float> comb(static_cast<size_t>(F));
                double cond_sq = 0, comb_sq = 0;
                for (int64_t f = 0; f < F; ++f) {
                    const float d = round_to_dtype(c[f] - u[f], dt);
                    comb[size_t(f)] = round_to_dtype(u[f] + round_to_dtype(o.true_cfg_scale * d, dt), dt);
                    cond_sq += double(c[f]) * double(c[f]);
                    comb_sq += double(comb[size_t(f)]) * double(comb[size_t(f)]);
                }
                const float cond_norm = round_to_dtype(float(std::sqrt(cond_sq)), dt),
                            comb_norm = round_to_dtype(float(std::sqrt(comb_sq)), dt);
                const float ratio = round_to_dtype(cond_norm / comb_norm, dt);
                for (int64_t f = 0; f < F; ++f) c[f] = round_to_dtype(comb[size_t(f)] * ratio, dt);
            }
        }
        const float step = sched.sigmas()[size_t(i) + 1] - sched.sigmas()[size_t(i)];
        for (int64_t k = 0; k < L * F; ++k) x[k] = round_to_dtype(x[k] + round_to_dtype(step * vp[k], dt), dt);
    }
    model.set_timesteps({});
    return latents;
}

}  // namespace qdit::testutil
