// FlowMatchEulerDiscreteScheduler against diffusers' own values
// (tests/data/scheduler/reference.json, scripts/fixtures/make_scheduler_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "expect_error.h"
#include "io/files.h"
#include "pipeline/scheduler.h"

using namespace qdit;
using nlohmann::json;

namespace {

// Values are f32 computed by the same formulas; torch.linspace's vectorised
// f32 kernel can differ from the scalar formula by 1 ulp in the default sigmas,
// which carries through the shift: allow 4 ulps (≈ 5e-7 relative).
void expect_close(const std::vector<float>& got, const json& want, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        float w = want[i].get<float>();
        EXPECT_NEAR(got[i], w, 4.8e-7f * std::max(1.0f, std::fabs(w))) << what << "[" << i << "]";
    }
}

}  // namespace

TEST(Scheduler, MatchesDiffusersOnEveryConfigAndStepCount) {
    json ref = read_json_file(std::string(QDIT_TEST_DATA) + "/scheduler/reference.json");
    ASSERT_GT(ref["cases"].size(), 40u);
    for (const json& c : ref["cases"]) {
        SCOPED_TRACE(c["config_name"].get<std::string>() + " steps " + std::to_string(c["steps"].get<int>()) +
                     " seq " + std::to_string(c["image_seq_len"].get<int>()));
        FlowMatchConfig cfg = FlowMatchConfig::from_json(c["config"], "reference");
        double mu = calculate_shift(c["image_seq_len"].get<int64_t>(), cfg);
        EXPECT_NEAR(mu, c["mu"].get<double>(), 1e-12);
        std::vector<float> sig = zimage_default_sigmas(c["steps"].get<int>());
        expect_close(sig, c["default_sigmas"], "default sigmas");
        FlowMatchEulerScheduler s(cfg, sig, mu);
        expect_close(s.timesteps(), c["timesteps"], "timesteps");
        expect_close(s.sigmas(), c["sigmas"], "sigmas");

        std::vector<float> x = c["sample"].get<std::vector<float>>(), v = c["velocity"].get<std::vector<float>>();
        Tensor xs = Tensor::empty({int64_t(x.size())}, DType::F32), vs = Tensor::empty({int64_t(v.size())}, DType::F32);
        std::copy(x.begin(), x.end(), xs.data<float>());
        std::copy(v.begin(), v.end(), vs.data<float>());
        s.step(0, vs, xs);
        std::vector<float> stepped(xs.data<float>(), xs.data<float>() + xs.numel());
        expect_close(stepped, c["stepped"], "stepped sample");
    }
}

TEST(Scheduler, ConfigErrorsNameTheField) {
    json j = {{"_class_name", "DDIMScheduler"}};
    EXPECT_THROW(FlowMatchConfig::from_json(j, "s.json"), ConfigError);
    j = {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"use_karras_sigmas", true}};
    try {
        FlowMatchConfig::from_json(j, "s.json");
        FAIL();
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("use_karras_sigmas"), std::string::npos);
    }
    j = {{"_class_name", "FlowMatchEulerDiscreteScheduler"}, {"shift", "three"}};
    EXPECT_THROW(FlowMatchConfig::from_json(j, "s.json"), ConfigError);
    j = {{"_class_name", 7}};  // not a string: a ConfigError, not nlohmann's type_error
    EXPECT_THROW(FlowMatchConfig::from_json(j, "s.json"), ConfigError);
    // Sequence lengths at int's extremes (a config built in code; config files are bounded):
    // the slope's denominator is 2^32 - 1, not an overflow.
    FlowMatchConfig wide;
    wide.base_shift = 0.0;
    wide.max_shift = 4294967295.0;
    wide.base_image_seq_len = INT32_MIN;
    wide.max_image_seq_len = INT32_MAX;
    EXPECT_DOUBLE_EQ(calculate_shift(0, wide), 2147483648.0);
    EXPECT_THROW(zimage_default_sigmas(0), UsageError);
    FlowMatchConfig t;
    t.shift_terminal = 0.02;
    // One step ends the shifted schedule at sigma 1, which shift_terminal cannot stretch (diffusers
    // divides by zero there): refused, naming the flag; two steps run.
    const std::string one =
        testutil::error_of<UsageError>([&] { FlowMatchEulerScheduler(t, zimage_default_sigmas(1), 0.0); });
    EXPECT_NE(one.find("--steps 1: scheduler_config.json's shift_terminal 0.02"), std::string::npos) << one;
    EXPECT_NEAR(FlowMatchEulerScheduler(t, zimage_default_sigmas(2), 0.0).sigmas()[1], 0.02f, 1e-6f);
}
