// FlowMatchEulerDiscreteScheduler (diffusers) as the Z-Image pipeline drives
// it: custom sigmas, static or resolution-dependent (mu) shift, Euler steps.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace qdit {

struct FlowMatchConfig {
    int num_train_timesteps = 1000;
    double shift = 1.0;
    bool use_dynamic_shifting = false;
    double base_shift = 0.5, max_shift = 1.15;
    int base_image_seq_len = 256, max_image_seq_len = 4096;
    double shift_terminal = 0.0;  // 0: off
    bool exponential_time_shift = true;  // time_shift_type "exponential" (else "linear")

    // Reads scheduler_config.json; unknown classes and options qdit does not
    // implement (karras/beta/exponential sigmas, stochastic sampling,
    // invert_sigmas) are ConfigErrors naming the field.
    static FlowMatchConfig from_json(const nlohmann::json& j, const std::string& where);
};

// diffusers' calculate_shift: mu grows linearly with the image token count.
double calculate_shift(int64_t image_seq_len, const FlowMatchConfig& c);

// The Z-Image pipeline's default sigmas: linspace(1, 1/steps, steps) in f32.
std::vector<float> zimage_default_sigmas(int steps);

class FlowMatchEulerScheduler {
public:
    // sigmas: the unshifted schedule (one per step); mu is used with dynamic shifting.
    FlowMatchEulerScheduler(const FlowMatchConfig& c, const std::vector<float>& sigmas, double mu);

    int steps() const { return int(timesteps_.size()); }
    const std::vector<float>& timesteps() const { return timesteps_; }  // sigma * 1000
    const std::vector<float>& sigmas() const { return sigmas_; }        // shifted, plus a final 0

    // Step i's size: sigma[i+1] - sigma[i] (negative).
    float delta(int i) const;
    // Euler step in place: sample += delta(i) * velocity (all F32).
    void step(int i, const Tensor& velocity, Tensor& sample) const;

private:
    std::vector<float> timesteps_, sigmas_;
};

}  // namespace qdit
