#include "pipeline/scheduler.h"

#include <cmath>

#include "core/error.h"
#include "io/files.h"

using nlohmann::json;

namespace qdit {

FlowMatchConfig FlowMatchConfig::from_json(const json& j, const std::string& where) {
    if (!j.is_object()) raise<ConfigError>("{}: not a JSON object", where);
    std::string cls;
    read_config_field(j, where, "_class_name", &cls);
    if (cls != "FlowMatchEulerDiscreteScheduler")
        raise<ConfigError>("{}: scheduler class '{}' is not supported (supported: "
                           "FlowMatchEulerDiscreteScheduler)",
                           where, cls);
    FlowMatchConfig c;
    auto get = [&](const char* key, auto* out) { read_config_field(j, where, key, out); };
    read_config_field(j, where, "num_train_timesteps", &c.num_train_timesteps, {1, 1000000});
    read_config_field(j, where, "shift", &c.shift, {1e-6, 1e6});
    get("use_dynamic_shifting", &c.use_dynamic_shifting);
    read_config_field(j, where, "base_shift", &c.base_shift, {-1e6, 1e6});
    read_config_field(j, where, "max_shift", &c.max_shift, {-1e6, 1e6});
    read_config_field(j, where, "base_image_seq_len", &c.base_image_seq_len, {1, 1 << 30});
    read_config_field(j, where, "max_image_seq_len", &c.max_image_seq_len, {1, 1 << 30});
    read_config_field(j, where, "shift_terminal", &c.shift_terminal, {0.0, 0.999999});
    std::string shift_type = "exponential";
    get("time_shift_type", &shift_type);
    if (shift_type != "exponential" && shift_type != "linear")
        raise<ConfigError>("{}: time_shift_type '{}' is not one of exponential, linear", where,
                           shift_type);
    c.exponential_time_shift = shift_type == "exponential";
    for (const char* flag : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                             "stochastic_sampling", "invert_sigmas"}) {
        bool on = false;
        get(flag, &on);
        if (on) raise<ConfigError>("{}: '{}' is not supported by qdit's scheduler", where, flag);
    }
    if (c.use_dynamic_shifting && c.max_image_seq_len == c.base_image_seq_len)
        raise<ConfigError>("{}: max_image_seq_len must differ from base_image_seq_len", where);
    return c;
}

double calculate_shift(int64_t image_seq_len, const FlowMatchConfig& c) {
    // The difference in double: in int it overflows for lengths of opposite sign.
    double m = (c.max_shift - c.base_shift) /
               (double(c.max_image_seq_len) - double(c.base_image_seq_len));
    double b = c.base_shift - m * double(c.base_image_seq_len);
    return double(image_seq_len) * m + b;
}

std::vector<float> zimage_default_sigmas(int steps) {
    if (steps <= 0) raise<UsageError>("the number of steps must be positive (got {})", steps);
    // Like torch.linspace in f32: the first half counts up from the start, the
    // second half down from the end.
    const float start = 1.0f, end = float(1.0 / steps);
    const float step = steps > 1 ? (end - start) / float(steps - 1) : 0.f;
    std::vector<float> s(static_cast<size_t>(steps));
    for (int i = 0; i < steps; ++i)
        s[size_t(i)] = i < steps / 2 ? start + step * float(i) : end - step * float(steps - 1 - i);
    return s;
}

FlowMatchEulerScheduler::FlowMatchEulerScheduler(const FlowMatchConfig& c,
                                                 const std::vector<float>& sigmas, double mu) {
    QDIT_CHECK(!sigmas.empty(), "empty sigma schedule");
    // diffusers does this arithmetic on float32 numpy arrays with Python-float
    // scalars, which numpy rounds to float32 first.
    const float shift = float(c.shift), emu = float(std::exp(mu)), fmu = float(mu);
    for (float s : sigmas) {
        float r;
        if (c.use_dynamic_shifting)
            r = (c.exponential_time_shift ? emu : fmu) / ((c.exponential_time_shift ? emu : fmu) +
                                                          (1.0f / s - 1.0f));
        else
            r = shift * s / (1.0f + (shift - 1.0f) * s);
        sigmas_.push_back(r);
    }
    if (c.shift_terminal > 0) {
        if (sigmas_.back() == 1.0f)  // 1 step: diffusers divides by zero here and denoises with NaN
            raise<UsageError>("--steps {}: scheduler_config.json's shift_terminal {} stretches the schedule to end "
                              "there, which a schedule ending at sigma 1 cannot do{}",
                              sigmas.size(), c.shift_terminal, sigmas.size() == 1 ? "; use at least 2 steps" : "");
        const float scale = (1.0f - sigmas_.back()) / float(1.0 - c.shift_terminal);
        for (float& s : sigmas_) s = 1.0f - (1.0f - s) / scale;
    }
    for (float s : sigmas_) timesteps_.push_back(s * float(c.num_train_timesteps));
    sigmas_.push_back(0.0f);
}

float FlowMatchEulerScheduler::delta(int i) const {
    QDIT_CHECK(i >= 0 && i < steps(), "step {} out of range (0..{})", i, steps() - 1);
    return sigmas_[size_t(i) + 1] - sigmas_[size_t(i)];
}

void FlowMatchEulerScheduler::step(int i, const Tensor& velocity, Tensor& sample) const {
    QDIT_CHECK(velocity.dtype() == DType::F32 && sample.dtype() == DType::F32 &&
                   velocity.numel() == sample.numel(),
               "scheduler step needs F32 tensors of one size");
    const float dt = delta(i);
    const float* v = velocity.data<float>();
    float* x = sample.data<float>();
    for (int64_t k = 0; k < sample.numel(); ++k) x[k] = x[k] + dt * v[k];
}

}  // namespace qdit
