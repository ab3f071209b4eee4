// Test helpers: one case of the committed pipeline reference (tests/data/pipeline/reference.json and
// reference.safetensors, written by scripts/fixtures/make_pipeline_fixtures.py) as GenerateOptions,
// with diffusers' initial noise; and the Z-Image denoising loop as the pipeline ran it with the
// latents on the host.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "io/safetensors.h"
#include "models/zimage/transformer.h"
#include "pipeline/scheduler.h"
#include "pipeline/zimage_pipeline.h"

namespace qdit::testutil {

inline GenerateOptions reference_case(const nlohmann::json& meta, const nlohmann::json& c, const SafetensorsFile& ref) {
    GenerateOptions o;
    o.prompt = c["prompt"];
    o.negative_prompt = c["negative_prompt"];
    o.guidance = c["guidance"];
    o.steps = c["steps"];
    o.width = c["width"];
    o.height = c["height"];
    o.max_sequence_length = meta["max_sequence_length"];
    o.latents = ref.get(c["name"].get<std::string>() + ".latents");
    return o;
}

// The final latents of the Z-Image pipeline folder `dir` for o (which must carry its initial latents),
// denoised as the pipeline did while it kept the latents on the host: every step the transformer's
// host forward (ZImageTransformer::forward: the latents patchified, cast and moved to the model's
// device, the velocity brought back and unpatchified), then the guidance and the scheduler's Euler
// step on the host in f32. `pipe` gives the prompt embeddings, `model` is its transformer (same
// weights, dtype and device). The pipeline, which keeps the latents on the transformer's device
// instead, must give these bit for bit.
inline Tensor host_loop_latents(const ZImagePipeline& pipe, const std::string& dir, const GenerateOptions& o,
                                const zimage::ZImageTransformer& model) {
    const FlowMatchConfig sc =
        FlowMatchConfig::from_json(read_json_file(dir + "/scheduler/scheduler_config.json"), dir + "/scheduler");
    const bool cfg = o.guidance > 0;
    const Tensor pos = pipe.encode_prompt(o.prompt, o.max_sequence_length);
    const Tensor neg = cfg ? pipe.encode_prompt(o.negative_prompt, o.max_sequence_length) : Tensor();
    const int64_t C = pipe.latent_channels(), h = o.latents.size(o.latents.dim() - 2),
                  w = o.latents.size(o.latents.dim() - 1);
    Tensor latents = o.latents.to(DType::F32).view({1, C, h, w});
    FlowMatchEulerScheduler sched(sc, zimage_default_sigmas(o.steps), calculate_shift((h / 2) * (w / 2), sc));
    for (int i = 0; i < sched.steps(); ++i) {
        Tensor t = Tensor::empty({cfg ? 2 : 1}, DType::F32);
        for (int64_t b = 0; b < t.numel(); ++b) t.data<float>()[b] = (1000.0f - sched.timesteps()[size_t(i)]) / 1000.0f;
        std::vector<Tensor> xs = {latents.view({C, 1, h, w})}, caps = {pos};
        if (cfg) {
            xs.push_back(xs[0]);
            caps.push_back(neg);
        }
        const std::vector<Tensor> out = model.forward(xs, t, caps);
        Tensor v = out[0].to(DType::F32);
        float* vp = v.data<float>();
        if (cfg) {
            const Tensor n = out[1].to(DType::F32);
            for (int64_t k = 0; k < v.numel(); ++k) vp[k] = vp[k] + o.guidance * (vp[k] - n.data<float>()[k]);
        }
        for (int64_t k = 0; k < v.numel(); ++k) vp[k] = -vp[k];
        sched.step(i, v, latents);
    }
    return latents;
}

}  // namespace qdit::testutil
