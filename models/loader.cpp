#include "models/loader.h"

#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "io/files.h"
#include "quant/int8.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qdit {

namespace {

std::string scale_key(const LinearSpec& l) { return l.name + ".weight_scale"; }

// "a, b, c and 12 more"
std::string list_some(const std::vector<std::string>& v, size_t n = 8) {
    std::vector<std::string> head(v.begin(), v.begin() + long(std::min(n, v.size())));
    std::string s = fmt::format("{}", fmt::join(head, ", "));
    if (v.size() > n) s += fmt::format(" and {} more", v.size() - n);
    return s;
}

}  // namespace

ModelFolder locate_model(const std::string& path) {
    ModelFolder f;
    f.root = path;
    std::error_code ec;
    if (!fs::is_directory(path, ec)) raise<IoError>("model folder {} does not exist", path);
    if (fs::exists(fs::path(path) / "model_index.json")) {
        f.is_pipeline = true;
        f.transformer_dir = (fs::path(path) / "transformer").string();
        if (!fs::is_directory(f.transformer_dir))
            raise<IoError>("{} is a pipeline folder (model_index.json) without a transformer/ "
                           "component",
                           path);
    } else {
        f.transformer_dir = path;
    }
    f.config_path = (fs::path(f.transformer_dir) / "config.json").string();
    if (!fs::exists(f.config_path))
        raise<IoError>("{} is missing: {} is neither a diffusers pipeline folder "
                       "(model_index.json) nor a transformer folder (config.json)",
                       f.config_path, path);
    f.config = read_json_file(f.config_path);
    return f;
}

PreparedModel prepare_model(const std::string& path, const QuantConfig& requested) {
    PreparedModel m;
    m.folder = locate_model(path);
    m.spec = model_spec_from_config(m.folder.config, m.folder.config_path);

    QuantConfig config = requested;
    if (m.folder.config.contains("quantization_config")) {
        m.stored_config = parse_quant_config(m.folder.config["quantization_config"],
                                             m.folder.config_path + " quantization_config");
        if (requested.enabled() && requested.method != m.stored_config->method)
            raise<ConfigError>(
                "{} is pre-quantized with method '{}'; it cannot be loaded as '{}' (use the "
                "original checkpoint for that)",
                m.folder.root, quant_method_name(m.stored_config->method),
                quant_method_name(requested.method));
        config.method = m.stored_config->method;
        for (const std::string& p : m.stored_config->ignored_layers)
            if (std::find(config.ignored_layers.begin(), config.ignored_layers.end(), p) ==
                config.ignored_layers.end())
                config.ignored_layers.push_back(p);
    }

    m.checkpoint = std::make_unique<Checkpoint>(m.folder.transformer_dir);
    const Checkpoint& ck = *m.checkpoint;
    // Again with the checkpoint's key names, for a family with several key layouts.
    m.spec = model_spec_from_config(m.folder.config, m.folder.config_path,
                                    [&](const std::string& k) { return ck.contains(k); });
    auto ignored = [&](const std::string& k) {
        for (const std::string& p : m.spec.ignored_prefixes)
            if (k.compare(0, p.size(), p) == 0) return true;
        return false;
    };

    // Which layers are stored as int8, and what every key should look like.
    std::map<std::string, Shape> expected;
    for (const ParamSpec& p : m.spec.params) expected[p.name] = p.shape;
    std::vector<DType> stored(m.spec.linears.size(), DType::BF16);
    std::vector<bool> preq(m.spec.linears.size(), false);
    for (size_t i = 0; i < m.spec.linears.size(); ++i) {
        const LinearSpec& l = m.spec.linears[i];
        const std::string wkey = l.name + ".weight";
        if (!ck.contains(wkey)) continue;  // reported below with the other missing keys
        DType dt = ck.info(wkey).dtype;
        if (dt == DType::I8) {
            if (!m.stored_config)
                raise<FormatError>("{}: '{}' is int8 but {} has no quantization_config", ck.path(),
                                   wkey, m.folder.config_path);
            preq[i] = true;
            expected[scale_key(l)] = {l.out_features, 1};
            stored[i] = l.bias && ck.contains(l.name + ".bias") ? ck.info(l.name + ".bias").dtype
                                                                 : DType::BF16;
        } else if (!is_float(dt)) {
            raise<FormatError>("{}: '{}' has dtype {}, expected a float type or I8", ck.path(),
                               wkey, dtype_name(dt));
        } else {
            stored[i] = dt;
        }
    }

    std::vector<std::string> missing, unexpected;
    for (auto& [name, shape] : expected)
        if (!ck.contains(name)) missing.push_back(name);
    for (const ParamSpec& p : m.spec.optional_params)
        if (ck.contains(p.name)) expected[p.name] = p.shape;
    // An extra key of a module the model has (a bias its config does not declare, a scale of a layer
    // stored in high precision) means the checkpoint is not what the config says: refused. A key of
    // no module of the model is skipped unread, as diffusers and transformers do (with a warning).
    std::set<std::string> modules;
    for (auto& [name, shape] : expected) modules.insert(name.substr(0, name.rfind('.')));
    for (const ParamSpec& p : m.spec.optional_params) modules.insert(p.name.substr(0, p.name.rfind('.')));
    for (const std::string& k : ck.keys())
        if (!expected.count(k) && !ignored(k))
            (modules.count(k.substr(0, k.rfind('.'))) ? unexpected : m.unused_keys).push_back(k);
    if (!missing.empty() || !unexpected.empty()) {
        std::string msg = fmt::format("{} does not match {} ({})", ck.path(), m.spec.class_name,
                                      m.folder.config_path);
        if (!missing.empty())
            msg += fmt::format("; {} missing key(s): {}", missing.size(), list_some(missing));
        if (!unexpected.empty())
            msg += fmt::format("; {} unexpected key(s): {}", unexpected.size(),
                               list_some(unexpected));
        throw ShapeError(msg);
    }
    for (auto& [name, shape] : expected) {
        const TensorInfo& info = ck.info(name);
        bool ok = info.shape == shape;
        // A weight_scale may also be stored flat as [out].
        if (!ok && name.size() > 13 && name.compare(name.size() - 13, 13, ".weight_scale") == 0)
            ok = info.shape == Shape{shape[0]};
        if (!ok)
            raise<ShapeError>("{}: tensor '{}' has shape {}, but {} says it is {}", ck.path(), name,
                              shape_str(info.shape), m.folder.config_path, shape_str(shape));
    }
    m.plan = make_quant_plan(m.spec, config, stored, preq);
    if (!m.unused_keys.empty())
        fmt::print(stderr, "warning: {}: {} key(s) of no module of {} are skipped, never read: {}\n", ck.path(),
                   m.unused_keys.size(), m.spec.class_name, list_some(m.unused_keys));
    return m;
}

void write_quantized(const PreparedModel& m, const std::string& out_dir,
                     const std::function<void(size_t, size_t)>& progress) {
    if (!m.plan.config.enabled())
        raise<ConfigError>("nothing to quantize: choose a method (--quantization int8)");
    if (m.stored_config)
        raise<ConfigError>("{} is already pre-quantized ({})", m.folder.root,
                           quant_method_name(m.stored_config->method));
    std::error_code ec;
    if (fs::exists(out_dir, ec) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
        raise<IoError>("output folder {} already exists and is not empty", out_dir);
    fs::path out = fs::absolute(out_dir);
    fs::path tmp = out.parent_path() / (out.filename().string() + ".partial");
    if (!fs::is_directory(out.parent_path(), ec))
        raise<IoError>("cannot write {}: folder {} does not exist", out_dir,
                       out.parent_path().string());
    fs::remove_all(tmp, ec);
    try {
        fs::path tdir = tmp;
        if (m.folder.is_pipeline) {
            // Copy every other component as it is; the transformer is rewritten.
            fs::create_directories(tmp);
            for (auto& e : fs::directory_iterator(m.folder.root))
                if (e.path().filename() != "transformer")
                    fs::copy(e.path(), tmp / e.path().filename(), fs::copy_options::recursive);
            tdir = tmp / "transformer";
        }
        fs::create_directories(tdir);

        std::map<std::string, const LayerPlan*> by_weight;
        for (const LayerPlan& l : m.plan.layers)
            if (int8_weights(l.precision)) by_weight[l.spec.name + ".weight"] = &l;

        const Checkpoint& ck = *m.checkpoint;
        std::vector<std::pair<std::string, Tensor>> tensors;
        size_t done = 0;
        for (const std::string& key : ck.keys()) {
            auto it = by_weight.find(key);
            if (it == by_weight.end()) {
                tensors.emplace_back(key, ck.get(key));
            } else {
                Tensor q, scale;
                nn::quantize_weight_int8(ck.get(key), &q, &scale);
                tensors.emplace_back(key, q);
                tensors.emplace_back(scale_key(it->second->spec),
                                     scale.view({it->second->spec.out_features, 1}));
            }
            if (progress) progress(++done, ck.keys().size());
        }
        bool diffusers_name = fs::path(ck.path()).filename().string().rfind(
                                  "diffusion_pytorch_model", 0) == 0;
        write_checkpoint(tdir.string(), diffusers_name ? "diffusion_pytorch_model" : "model",
                         tensors, size_t(5) << 30);
        json config = m.folder.config;
        config["quantization_config"] = m.plan.config.to_json();
        write_file_atomic((tdir / "config.json").string(), config.dump(2) + "\n");
        // Copy any other small files of the transformer folder (e.g. a README).
        for (auto& e : fs::directory_iterator(m.folder.transformer_dir)) {
            std::string n = e.path().filename().string();
            bool weights = e.path().extension() == ".safetensors" ||
                           n.find(".safetensors.index.json") != std::string::npos;
            if (!weights && n != "config.json" && !fs::exists(tdir / n))
                fs::copy(e.path(), tdir / n, fs::copy_options::recursive);
        }
        if (fs::exists(out)) fs::remove(out);  // an empty folder
        fs::rename(tmp, out);
    } catch (...) {
        fs::remove_all(tmp, ec);
        throw;
    }
}

}  // namespace qdit
