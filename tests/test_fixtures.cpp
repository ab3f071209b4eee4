// The committed checkpoints written by diffusers itself (scripts/fixtures/):
// our loader must accept their layout and our default plan must quantize
// exactly the layers the reference W8A8 simulation quantized.
#include <gtest/gtest.h>

#include <set>

#include "io/files.h"
#include "models/loader.h"

using namespace qdit;

namespace {
const std::string kData = QDIT_TEST_DATA;
}

TEST(DiffusersFixtures, LoadAndDefaultPlanMatchesTheReferenceSimulation) {
    for (const char* name : {"h3_b1", "h5_b2", "h2_l3_sharded"}) {
        SCOPED_TRACE(name);
        nlohmann::json fx = read_json_file(kData + "/zimage/" + name + "/fixture.json");
        for (const char* sub : {"transformer", "transformer-bf16"}) {
            std::string dir = kData + "/zimage/" + name + "/" + sub;
            if (!std::filesystem::exists(dir)) continue;
            PreparedModel m = prepare_model(dir, QuantConfig{QuantMethod::Int8, {}, "dynamic"});
            EXPECT_EQ(m.spec.parameter_count(), fx["param_count"].get<int64_t>());
            std::vector<std::string> linears, quantized;
            for (const LayerPlan& l : m.plan.layers) {
                linears.push_back(l.spec.name);
                if (l.precision == Precision::Int8) quantized.push_back(l.spec.name);
            }
            auto as_set = [](const std::vector<std::string>& v) {
                return std::set<std::string>(v.begin(), v.end());
            };
            EXPECT_EQ(as_set(linears), as_set(fx["linear_layers"].get<std::vector<std::string>>()));
            EXPECT_EQ(as_set(quantized),
                      as_set(fx["w8a8_quantized_layers"].get<std::vector<std::string>>()));
        }
    }
}

TEST(DiffusersFixtures, PublishedConfigAsSavedByDiffusers) {
    ModelSpec s = load_model_spec(kData + "/zimage/published");
    EXPECT_EQ(s.parameter_count(), 6154908736);
}
