// qdit._qdit: the C++ pipeline for Python (nanobind). The public API, which
// turns the pixels into a PIL image, is python/qdit/__init__.py.
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "core/error.h"
#include "pipeline/frontend.h"
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
        try {
            pipe_ = std::make_unique<qdit::ZImagePipeline>(model_, po);
        } catch (const qdit::UsageError& e) {  // e.g. a CUDA device in a CPU-only build
            throw qdit::UsageError(python_names(e.what()));
        }
    }

    // (RGB bytes, width, height, PNG metadata) of one image.
    nb::tuple generate(const std::string& prompt, const std::string& negative_prompt, int width, int height,
                       int steps, float guidance, uint64_t seed, int max_sequence_length, nb::object progress) {
        qdit::GenerateOptions go;
        go.prompt = prompt;
        go.negative_prompt = negative_prompt;
        go.width = width;
        go.height = height;
        go.steps = steps;
        go.guidance = guidance;
        go.seed = seed;
        go.max_sequence_length = max_sequence_length;
        qdit::GenerateResult r;
        try {  // the bounds qdit generate checks (steps, sizes, RoPE table, prompt length)
            pipe_->check(go);
        } catch (const qdit::UsageError& e) {
            throw qdit::UsageError(python_names(e.what()));
        } catch (const qdit::ShapeError& e) {
            throw qdit::ShapeError(python_names(e.what()));
        }
        {
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mu_);  // one generation at a time per pipeline
            r = pipe_->generate(go, [&](int step, int total, double) {
                if (!progress.is_none()) {
                    nb::gil_scoped_acquire acquire;
                    progress(step, total);
                }
            });
        }
        nb::dict meta;
        for (const auto& [k, v] : qdit::image_metadata(go, model_, quant_, device_)) meta[k.c_str()] = v;
        const size_t bytes = size_t(r.image.numel());
        return nb::make_tuple(nb::bytes(r.image.data<uint8_t>(), bytes), int(r.image.size(1)),
                              int(r.image.size(0)), meta);
    }

    const std::string& model() const { return model_; }
    const std::vector<std::string>& warnings() const { return warnings_; }
    const std::string& quantization() const { return quant_; }
    int transformer_int8_layers() const { return pipe_->transformer_int8_layers(); }

private:
    std::string model_, quant_, device_;
    std::vector<std::string> warnings_;
    std::unique_ptr<qdit::ZImagePipeline> pipe_;
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
        .def("generate", &Pipeline::generate, nb::arg("prompt"), nb::arg("negative_prompt"), nb::arg("width"),
             nb::arg("height"), nb::arg("steps"), nb::arg("guidance"), nb::arg("seed"),
             nb::arg("max_sequence_length"), nb::arg("progress").none())
        .def_prop_ro("model", &Pipeline::model)
        .def_prop_ro("quantization", &Pipeline::quantization)
        .def_prop_ro("warnings", &Pipeline::warnings)
        .def_prop_ro("transformer_int8_layers", &Pipeline::transformer_int8_layers);
}
