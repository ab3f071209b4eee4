// Test helper: one case of the committed pipeline reference (tests/data/pipeline/reference.json and
// reference.safetensors, written by scripts/fixtures/make_pipeline_fixtures.py) as GenerateOptions,
// with diffusers' initial noise.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
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

}  // namespace qdit::testutil
