// qdit._qdit: the C++ pipeline for Python (nanobind). The public API, which
// turns the pixels into a PIL image, is python/qdit/__init__.py.
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "core/error.h"
#include "pipeline/frontend.h"
#include "pipeline/qwen_image_pipeline.h"
#include "pipeline/zimage_pipeline.h"
#include "quant/config.h"

namespace nb = nanobind;

namespace {

// The engine's messages name the command line's flags; Python's arguments are named differently.
std::string python_names(const std::string& s) {
    return qdit::rename_flags(s, {{"--quantization-config", "quantization_config"},
                                  {"--quantization", "quantization"},
                                  {"--steps", "steps"},
                                  {"--width", "width"},
                                  {"--height", "height"},
                                  {"--guidance", "guidance"},
                                  {"--true-cfg-scale", "true_cfg_scale"},
                                  {"--negative-prompt", "negative_prompt"},
                                  {"--max-sequence-length", "max_sequence_length"},
                                  {"--device", "device"}});
}

class Pipeline {
public:
    // `quantization` and `config_json` are empty when not given; `config_json` is the
    // quantization_config dict as JSON.
    Pipeline(const std::string& model, const std::string& quantization, const std::string& config_json,
             const std::string& device) {
        qdit::PipelineOptions po;
        device_ = device.empty() ? qdit::default_device_name(po.dtype) : device;
        po.device = qdit::parse_device(device_, "device");
        try {
            po.transformer_quant = qdit::resolve_quant_config({quantization, config_json, {}}, &warnings_);
        } catch (const qdit::Error& e) {
            throw qdit::ConfigError(python_names(e.what()));
        }
        for (std::string& w : warnings_) w = python_names(w);
        model_ = qdit::resolve_model_dir(model);
        quant_ = qdit::quant_method_name(po.transformer_quant.method);
        // model_index.json picks the pipeline; a folder whose index cannot be read goes the Z-Image
        // way, which reports what is wrong with it.
        try {
            if (qdit::pipeline_class(model_) == "QwenImagePipeline") class_name_ = "QwenImagePipeline";
        } catch (const qdit::Error&) {
        }
        try {
            if (class_name_ == "QwenImagePipeline")
                qwen_ = std::make_unique<qdit::QwenImagePipeline>(model_, po);
            else
                pipe_ = std::make_unique<qdit::ZImagePipeline>(model_, po);
        } catch (const qdit::UsageError& e) {  // e.g. a CUDA device in a CPU-only build
            throw qdit::UsageError(python_names(e.what()));
        }
    }

    // (RGB bytes, width, height, PNG metadata) of one image.
    // Z-Image takes `guidance` (negative_prompt used when > 0), Qwen-Image `true_cfg_scale` (true CFG
    // when > 1 and a negative prompt is given); the Python wrapper refuses the other one.
    nb::tuple generate(const std::string& prompt, const std::optional<std::string>& negative_prompt, int width,
                       int height, int steps, float guidance, float true_cfg_scale, uint64_t seed,
                       int max_sequence_length, nb::object progress) {
        qdit::GenerateOptions go;
        go.prompt = prompt;
        go.negative_prompt = negative_prompt.value_or("");
        go.width = width;
        go.height = height;
        go.steps = steps;
        go.guidance = guidance;
        go.seed = seed;
        go.max_sequence_length = max_sequence_length;
        qdit::QwenImageGenerateOptions qo;
        qo.prompt = prompt;
        qo.negative_prompt = negative_prompt;
        qo.width = width;
        qo.height = height;
        qo.steps = steps;
        qo.true_cfg_scale = true_cfg_scale;
        qo.seed = seed;
        qo.max_sequence_length = max_sequence_length;
        qdit::GenerateResult r;
        try {  // the bounds qdit generate checks (steps, sizes, RoPE table, prompt length)
            if (qwen_)
                qwen_->check(qo);
            else
                pipe_->check(go);
        } catch (const qdit::UsageError& e) {
            throw qdit::UsageError(python_names(e.what()));
        } catch (const qdit::ShapeError& e) {
            throw qdit::ShapeError(python_names(e.what()));
        }
        {
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mu_);  // one generation at a time per pipeline
            auto step = [&](int step, int total, double) {
                if (!progress.is_none()) {
                    nb::gil_scoped_acquire acquire;
                    progress(step, total);
                }
            };
            r = qwen_ ? qwen_->generate(qo, step) : pipe_->generate(go, step);
        }
        nb::dict meta;
        for (const auto& [k, v] : qwen_ ? qdit::image_metadata(qo, model_, quant_, device_)
                                        : qdit::image_metadata(go, model_, quant_, device_))
            meta[k.c_str()] = v;
        const size_t bytes = size_t(r.image.numel());
        return nb::make_tuple(nb::bytes(r.image.data<uint8_t>(), bytes), int(r.image.size(1)),
                              int(r.image.size(0)), meta);
    }

    const std::string& model() const { return model_; }
    const std::vector<std::string>& warnings() const { return warnings_; }
    const std::string& quantization() const { return quant_; }
    const std::string& device() const { return device_; }
    const std::string& pipeline() const { return class_name_; }
    int transformer_int8_layers() const {
        return qwen_ ? qwen_->transformer_int8_layers() : pipe_->transformer_int8_layers();
    }

private:
    std::string model_, quant_, device_, class_name_ = "ZImagePipeline";
    std::vector<std::string> warnings_;
    std::unique_ptr<qdit::ZImagePipeline> pipe_;        // one of the two
    std::unique_ptr<qdit::QwenImagePipeline> qwen_;
    std::mutex mu_;
};

}  // namespace

NB_MODULE(_qdit, m) {
    m.doc() = "qdit: diffusion-transformer inference with online W8A8 quantization";
    // The engine's errors as Python's: bad input is a ValueError, a file problem an OSError.
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const qdit::IoError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const qdit::UsageError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const qdit::ConfigError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const qdit::ShapeError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const qdit::FormatError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const qdit::Error& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });
    nb::class_<Pipeline>(m, "Pipeline")
        .def("__init__",
             [](Pipeline* self, const std::string& model, const std::string& quantization,
                const std::string& config_json, const std::string& device) {
                 nb::gil_scoped_release release;  // loading reads every weight
                 new (self) Pipeline(model, quantization, config_json, device);
             },
             nb::arg("model"), nb::arg("quantization"), nb::arg("config_json"), nb::arg("device"))
        .def("generate", &Pipeline::generate, nb::arg("prompt"), nb::arg("negative_prompt").none(), nb::arg("width"),
             nb::arg("height"), nb::arg("steps"), nb::arg("guidance"), nb::arg("true_cfg_scale"), nb::arg("seed"),
             nb::arg("max_sequence_length"), nb::arg("progress").none())
        .def_prop_ro("model", &Pipeline::model)
        .def_prop_ro("device", &Pipeline::device)
        .def_prop_ro("pipeline", &Pipeline::pipeline)
        .def_prop_ro("quantization", &Pipeline::quantization)
        .def_prop_ro("warnings", &Pipeline::warnings)
        .def_prop_ro("transformer_int8_layers", &Pipeline::transformer_int8_layers);
}
