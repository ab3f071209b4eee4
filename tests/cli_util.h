// Test helpers: run the qdit binary as a user would, and copies of the test
// pipeline folder whose components can be edited or broken one at a time.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "io/files.h"
#include "tiny_model.h"

namespace qdit::testutil {

struct CliResult {
    int status = -1;  // exit status, -1 when killed
    std::string out, err;
};

// `qdit ARGS` through the shell, stdout and stderr captured.
inline CliResult run_qdit(const std::string& args) {
    const fs::path err_file = fresh_dir("cli_err") / "stderr";
    const std::string cmd = std::string(QDIT_BINARY) + " " + args + " 2>" + err_file.string();
    CliResult r;
    FILE* p = popen(cmd.c_str(), "r");
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.err = read_text_file(err_file.string());
    return r;
}

inline const std::string& test_pipeline_dir() {
    static const std::string d = std::string(QDIT_TEST_DATA) + "/pipeline";
    return d;
}

// A copy of the test pipeline folder whose components link to the fixtures,
// so one can be broken without touching the others.
inline fs::path pipeline_copy(const std::string& name) {
    const fs::path src = test_pipeline_dir();
    fs::path d = fresh_dir(name);
    fs::copy_file(src / "model_index.json", d / "model_index.json");
    fs::copy(src / "scheduler", d / "scheduler", fs::copy_options::recursive);
    for (const char* c : {"transformer", "text_encoder", "tokenizer", "vae"})
        fs::create_directory_symlink(fs::canonical(src / c), d / c);
    return d;
}

// Makes `component` of a pipeline_copy a folder of its own: its config.json
// (and tokenizer files) copied, so they can be edited, the weights linked.
inline fs::path own_component(const fs::path& pipe, const std::string& component) {
    const fs::path dst = pipe / component, src = fs::canonical(dst);
    fs::remove(dst);
    fs::create_directory(dst);
    for (const auto& e : fs::directory_iterator(src)) {
        if (e.path().extension() == ".safetensors")
            fs::create_symlink(e.path(), dst / e.path().filename());
        else
            fs::copy_file(e.path(), dst / e.path().filename());
    }
    return dst;
}

inline void edit_json(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = read_json_file(file.string());
    edit(j);
    write_file_atomic(file.string(), j.dump(2));
}

// A pipeline_copy whose VAE weights are garbage. The VAE is the first model
// the pipeline loads, so a run on it that fails with any other message than
// the safetensors file's was refused before a weight was read.
inline fs::path pipeline_with_unreadable_weights(const std::string& name) {
    fs::path d = pipeline_copy(name);
    const fs::path vae = own_component(d, "vae");
    fs::remove(vae / "diffusion_pytorch_model.safetensors");
    write_file_atomic((vae / "diffusion_pytorch_model.safetensors").string(), "garbage!!");
    return d;
}

}  // namespace qdit::testutil
