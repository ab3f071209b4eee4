// The devices a model's fixture tests run on, as a gtest parameter (tests/models/): the CPU always,
// and CUDA:0 in a build with the CUDA backend. A CUDA instance skips, saying why, when this machine
// shows no GPU. The body of such a test is written once; what differs per device is its bound.
//
//   class Qwen3Encoder : public testutil::DeviceTest {};
//   TEST_P(Qwen3Encoder, Bf16MatchesTransformers) { ... ctx() ... }
//   QDIT_INSTANTIATE_ON_DEVICES(Qwen3Encoder);  // Device/Qwen3Encoder.Bf16MatchesTransformers/CPU, .../CUDA0
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/tensor.h"
#include "ops/context.h"

namespace qdit {
// How gtest prints a test's device parameter.
inline void PrintTo(const Device& d, std::ostream* os) { *os << d.str(); }
}  // namespace qdit

namespace qdit::testutil {

inline std::vector<Device> test_devices() {
    std::vector<Device> out = {Device{}};
#ifdef QDIT_WITH_CUDA
    out.push_back(Device{DeviceType::CUDA, 0});
#endif
    return out;
}

// "CPU", "CUDA0": the last part of the test's name.
inline std::string device_test_name(const testing::TestParamInfo<Device>& info) {
    return info.param.type == DeviceType::CUDA ? "CUDA" + std::to_string(info.param.index) : "CPU";
}

class DeviceTest : public testing::TestWithParam<Device> {
protected:
    void SetUp() override {
        if (GetParam().type == DeviceType::CUDA && ops::cuda_devices() <= GetParam().index)
            GTEST_SKIP() << "no CUDA device " << GetParam().index << " visible here (" << ops::cuda_devices()
                         << " found)";
    }
    // The device's context (default stream, default attention).
    ops::Context ctx() const { return ops::Context{GetParam()}; }
    bool on_gpu() const { return GetParam().type == DeviceType::CUDA; }
    // The attention kernels a model may pick here: a GPU's simple kernel and its Auto choice
    // (cuDNN where it takes the shape); the CPU has one.
    std::vector<ops::AttentionImpl> attention_impls() const {
        if (on_gpu()) return {ops::AttentionImpl::Simple, ops::AttentionImpl::Auto};
        return {ops::AttentionImpl::Auto};
    }
};

}  // namespace qdit::testutil

#define QDIT_INSTANTIATE_ON_DEVICES(suite)                                                                  \
    INSTANTIATE_TEST_SUITE_P(Device, suite, testing::ValuesIn(qdit::testutil::test_devices()), \
                             qdit::testutil::device_test_name)
