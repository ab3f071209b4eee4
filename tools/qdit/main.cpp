// qdit: command-line front end. Exit status 0 on success, 2 on a usage error,
// 1 on any other error, which is printed as one line starting with "error:".
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "core/error.h"
#include "quant/config.h"
#include "quant/model.h"

namespace {

using namespace qdit;

struct QuantFlags {
    std::string quantization, config, ignored;
    void add(CLI::App* cmd) {
        cmd->add_option("--quantization", quantization, "Quantization method: none, int8");
        cmd->add_option("--ignored-layers", ignored,
                        "Comma-separated layers kept in high precision; a name matches a layer "
                        "when it equals it or a run of its dotted components (feed_forward, "
                        "layers.3, layers.3.attention.to_q)");
        cmd->add_option("--quantization-config", config,
                        "Quantization config as inline JSON or a JSON file: {\"method\": "
                        "\"int8\", \"ignored_layers\": [...], \"activation_scheme\": \"dynamic\"}");
    }
    QuantConfig resolve() const {
        QuantArgs a{quantization, config, {}};
        if (!ignored.empty()) a.ignored_layers = split_layer_list(ignored, "--ignored-layers");
        std::vector<std::string> warnings;
        QuantConfig c = resolve_quant_config(a, &warnings);
        for (const std::string& w : warnings) fmt::print(stderr, "warning: {}\n", w);
        return c;
    }
};

void print_warnings(const QuantPlan& plan) {
    for (const std::string& w : plan.warnings) fmt::print(stderr, "warning: {}\n", w);
}

void print_pattern_hits(const QuantPlan& plan) {
    for (const std::string& p : plan.config.ignored_layers)
        fmt::print("ignored_layers '{}' kept {} layer(s)\n", p, plan.pattern_hits.at(p));
}

int cmd_inspect(const std::string& dir, const QuantFlags& q) {
    QuantConfig config = q.resolve();
    PreparedModel m = prepare_model(dir, config);
    fmt::print("model: {} ({})\n", m.spec.class_name, m.folder.transformer_dir);
    fmt::print("checkpoint: {} ({} file(s), {} tensors)\n", m.checkpoint->path(),
               m.checkpoint->files().size(), m.checkpoint->keys().size());
    fmt::print("parameters: {}\n", m.spec.parameter_count());
    fmt::print("quantization: {}{}\n", quant_method_name(m.plan.config.method),
               m.stored_config ? " (pre-quantized checkpoint)" : "");
    print_pattern_hits(m.plan);
    fmt::print("{}", format_plan(m.plan));
    print_warnings(m.plan);
    return 0;
}

int cmd_quantize(const std::string& dir, const std::string& out, const QuantFlags& q) {
    QuantConfig config = q.resolve();
    if (!config.enabled())
        throw UsageError("quantize needs a method: --quantization int8 (or a "
                         "--quantization-config with one)");
    auto t0 = std::chrono::steady_clock::now();
    PreparedModel m = prepare_model(dir, config);
    print_warnings(m.plan);
    print_pattern_hits(m.plan);
    fmt::print(stderr, "quantizing {} of {} Linear layers of {} to {}\n",
               m.plan.quantized_count(), m.plan.layers.size(), m.folder.root,
               quant_method_name(m.plan.config.method));
    const bool tty = ::isatty(2);
    size_t last_decile = 0;
    write_quantized(m, out, [&](size_t done, size_t total) {
        if (tty) {
            fmt::print(stderr, "\r  tensors {}/{}", done, total);
            if (done == total) fmt::print(stderr, "\n");
        } else if (done * 10 / total > last_decile || done == total) {
            last_decile = done * 10 / total;
            fmt::print(stderr, "  tensors {}/{}\n", done, total);
        }
    });
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print("wrote {} ({} int8 layers; Linear weights {} -> {} bytes) in {:.1f} s\n", out,
               m.plan.quantized_count(), m.plan.bytes_before(), m.plan.bytes_after(), secs);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"qdit: diffusion-transformer inference with online W8A8 quantization"};
    app.require_subcommand(1);
    app.set_help_all_flag("--help-all", "Help for every command");

    QuantFlags inspect_q, quantize_q;
    std::string inspect_dir, quantize_dir, quantize_out;

    CLI::App* inspect = app.add_subcommand(
        "inspect", "List each Linear layer (name, shape, precision it would get) and the weight "
                   "bytes before and after quantization, without running the model");
    inspect->add_option("model_dir", inspect_dir,
                        "Diffusers pipeline folder or transformer folder")
        ->required();
    inspect_q.add(inspect);

    CLI::App* quantize = app.add_subcommand(
        "quantize", "Write a pre-quantized copy of a model (int8 weights + per-channel "
                    "weight_scale tensors, quantization_config in config.json)");
    quantize->add_option("model_dir", quantize_dir, "Diffusers pipeline folder or transformer folder")
        ->required();
    quantize->add_option("-o,--output", quantize_out, "Output folder (must not exist or be empty)")
        ->required();
    quantize_q.add(quantize);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return 0;
    } catch (const CLI::CallForAllHelp&) {
        std::cout << app.help("", CLI::AppFormatMode::All);
        return 0;
    } catch (const CLI::ParseError& e) {
        fmt::print(stderr, "error: {} (see qdit --help)\n", e.what());
        return 2;
    }

    try {
        if (inspect->parsed()) return cmd_inspect(inspect_dir, inspect_q);
        if (quantize->parsed()) return cmd_quantize(quantize_dir, quantize_out, quantize_q);
    } catch (const UsageError& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
    return 2;
}
