#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <nlohmann/json.hpp>

#include "io/files.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qdit {

// ---------------------------------------------------------------- MappedFile

MappedFile::MappedFile(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) raise<IoError>("cannot open {}: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        raise<IoError>("cannot open {}: not a regular file", path);
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            ::close(fd);
            raise<IoError>("cannot map {}: {}", path, std::strerror(err));
        }
        ptr_ = static_cast<uint8_t*>(p);
    }
    ::close(fd);
}

MappedFile::~MappedFile() {
    if (ptr_) ::munmap(ptr_, size_);
}

// ----------------------------------------------------------- SafetensorsFile

namespace {

std::string known_dtypes() {
    std::string s;
    for (DType t : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                    DType::I8, DType::U8, DType::F8_E4M3}) {
        if (!s.empty()) s += ", ";
        s += dtype_name(t);
    }
    return s;
}

uint64_t json_uint(const json& v, const std::string& file, const std::string& tensor,
                   const char* field) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
        raise<FormatError>("{}: tensor '{}' has an invalid {} entry {} (expected a non-negative integer)",
                           file, tensor, field, v.dump());
    return v.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : map_(std::make_shared<MappedFile>(path)) {
    const size_t size = map_->size();
    if (size < 8)
        raise<FormatError>("{} is truncated: {} bytes, too short for the 8-byte header length",
                           path, size);
    uint64_t n = 0;
    std::memcpy(&n, map_->data(), 8);  // little-endian on every supported host
    if (n > kMaxSafetensorsHeader)
        raise<FormatError>("{}: header length {} exceeds the {} byte limit (corrupt file?)", path,
                           n, kMaxSafetensorsHeader);
    if (n > size - 8)
        raise<FormatError>("{} is truncated: header length {} runs past the end of the file ({} bytes)",
                           path, n, size);
    data_start_ = 8 + size_t(n);
    const size_t data_size = size - data_start_;

    json header;
    try {
        header = json::parse(reinterpret_cast<const char*>(map_->data()) + 8,
                             reinterpret_cast<const char*>(map_->data()) + data_start_);
    } catch (const json::exception& e) {
        raise<FormatError>("{}: header is not valid JSON: {}", path, e.what());
    }
    if (!header.is_object())
        raise<FormatError>("{}: header is not a JSON object", path);

    std::vector<const TensorInfo*> by_offset;
    for (auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object())
                raise<FormatError>("{}: __metadata__ is not an object of strings", path);
            for (auto& [k, v] : entry.items()) {
                if (!v.is_string())
                    raise<FormatError>("{}: __metadata__ entry '{}' is not a string", path, k);
                metadata_[k] = v.get<std::string>();
            }
            continue;
        }
        if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
            !entry.contains("data_offsets"))
            raise<FormatError>("{}: tensor '{}' needs dtype, shape and data_offsets", path, name);
        TensorInfo info;
        info.name = name;
        const json& dt = entry["dtype"];
        if (!dt.is_string() || !dtype_from_name(dt.get<std::string>(), &info.dtype))
            raise<FormatError>("{}: tensor '{}' has unknown or unsupported dtype {} (supported: {})",
                               path, name, dt.dump(), known_dtypes());
        const json& shape = entry["shape"];
        if (!shape.is_array())
            raise<FormatError>("{}: tensor '{}' has a shape that is not a list", path, name);
        uint64_t numel = 1;
        for (const json& d : shape) {
            uint64_t v = json_uint(d, path, name, "shape");
            if (v > (uint64_t(1) << 48) || __builtin_mul_overflow(numel, v, &numel))
                raise<FormatError>("{}: tensor '{}' has an absurd shape {}", path, name,
                                   shape.dump());
            info.shape.push_back(int64_t(v));
        }
        const json& off = entry["data_offsets"];
        if (!off.is_array() || off.size() != 2)
            raise<FormatError>("{}: tensor '{}' data_offsets must be [begin, end]", path, name);
        info.begin = json_uint(off[0], path, name, "data_offsets");
        info.end = json_uint(off[1], path, name, "data_offsets");
        if (info.begin > info.end || info.end > data_size)
            raise<FormatError>(
                "{}: tensor '{}' data_offsets [{}, {}] are out of range (data region is {} bytes)",
                path, name, info.begin, info.end, data_size);
        uint64_t want = 0;
        if (__builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &want) ||
            want != info.end - info.begin)
            raise<FormatError>("{}: tensor '{}' ({} {}) needs {} bytes but data_offsets span {}",
                               path, name, dtype_name(info.dtype), shape_str(info.shape), want,
                               info.end - info.begin);
        keys_.push_back(name);
        index_.emplace(name, std::move(info));
    }
    for (auto& [name, info] : index_) by_offset.push_back(&info);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo* a = by_offset[i - 1];
        const TensorInfo* b = by_offset[i];
        if (b->begin < a->end && b->end > b->begin && a->end > a->begin)
            raise<FormatError>("{}: tensors '{}' and '{}' overlap (bytes [{}, {}) and [{}, {}))",
                               path, a->name, b->name, a->begin, a->end, b->begin, b->end);
    }
    std::sort(keys_.begin(), keys_.end(), [&](const std::string& a, const std::string& b) {
        return index_.at(a).begin < index_.at(b).begin;
    });
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) raise<ShapeError>("{}: no tensor named '{}'", path(), name);
    return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
    const TensorInfo& i = info(name);
    Tensor view(map_, data_start_ + i.begin, i.shape, i.dtype);
    // The format does not promise aligned data (writers pad the header to 8 bytes, but
    // need not): a tensor whose bytes cannot be read as its element type in place
    // (an F64 at an odd offset) is copied to aligned memory.
    if (reinterpret_cast<uintptr_t>(view.raw()) % dtype_size(i.dtype) == 0) return view;
    Tensor copy = Tensor::empty(i.shape, i.dtype);
    std::memcpy(copy.raw(), view.raw(), view.nbytes());
    return copy;
}

TensorBytes SafetensorsFile::bytes_of(const std::string& name) const {
    const TensorInfo& i = info(name);
    return {path(), uint64_t(data_start_ + i.begin), i.end - i.begin};
}

// ---------------------------------------------------------------- Checkpoint

namespace {

// The checkpoint file inside a model folder.
std::string find_in_folder(const std::string& dir) {
    for (const char* stem : {"diffusion_pytorch_model", "model"}) {
        fs::path index = fs::path(dir) / (std::string(stem) + ".safetensors.index.json");
        fs::path single = fs::path(dir) / (std::string(stem) + ".safetensors");
        if (path_exists(index.string())) return index.string();
        if (path_exists(single.string())) return single.string();
    }
    std::vector<std::string> found;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        if (it->path().extension() == ".safetensors") found.push_back(it->path().string());
    if (ec) raise<IoError>("cannot list {}: {}", dir, ec.message());
    if (found.size() == 1) return found[0];
    if (found.empty()) raise<IoError>("{} holds no .safetensors file", dir);
    raise<IoError>("{} holds {} .safetensors files and no *.safetensors.index.json saying how "
                   "they belong together",
                   dir, found.size());
}

}  // namespace

Checkpoint::Checkpoint(const std::string& path) {
    if (!path_exists(path)) raise<IoError>("{} does not exist", path);
    std::error_code ec;
    path_ = fs::is_directory(path, ec) ? find_in_folder(path) : path;
    const std::string suffix = ".json";
    bool is_index = path_.size() > suffix.size() &&
                    path_.compare(path_.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!is_index) {
        auto f = std::make_unique<SafetensorsFile>(path_);
        for (const std::string& k : f->keys()) shard_of_[k] = path_;
        shards_[path_] = std::move(f);
    } else {
        json index = read_json_file(path_);
        if (!index.is_object() || !index.contains("weight_map") ||
            !index["weight_map"].is_object())
            raise<FormatError>("{}: an index needs a \"weight_map\" object of tensor -> file",
                               path_);
        fs::path dir = fs::path(path_).parent_path();
        for (auto& [name, file] : index["weight_map"].items()) {
            // A plain file name next to the index: no folder part, and no NUL, which the
            // operating system would take as the end of the name.
            const std::string* s = file.is_string() ? file.get_ptr<const std::string*>() : nullptr;
            if (!s || s->empty() || *s == "." || *s == ".." ||
                s->find_first_of(std::string("/\0", 2)) != std::string::npos)
                raise<FormatError>("{}: weight_map entry for '{}' must be a file name, not {}",
                                   path_, name, file.dump());
            fs::path shard = dir / *s;
            if (!path_exists(shard.string()))
                raise<IoError>("{}: shard {} (holding '{}') is missing", path_, shard.string(),
                               name);
            shard_of_[name] = shard.string();
        }
    }
    for (auto& [k, f] : shard_of_) keys_.push_back(k);
}

const SafetensorsFile& Checkpoint::shard(const std::string& file) const {
    auto it = shards_.find(file);
    if (it == shards_.end()) it = shards_.emplace(file, std::make_unique<SafetensorsFile>(file)).first;
    return *it->second;
}

const std::string& Checkpoint::file_of(const std::string& name) const {
    auto it = shard_of_.find(name);
    if (it == shard_of_.end()) raise<ShapeError>("{}: no tensor named '{}'", path_, name);
    return it->second;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
    const std::string& file = file_of(name);
    const SafetensorsFile& f = shard(file);
    if (!f.contains(name))
        raise<FormatError>("{}: the index puts '{}' in {}, which does not hold it", path_, name,
                           file);
    return f.info(name);
}

namespace {
std::mutex g_observer_mu;
std::function<void(uint64_t)> g_observer;
}  // namespace

void set_checkpoint_read_observer(std::function<void(uint64_t bytes)> observer) {
    std::lock_guard<std::mutex> lk(g_observer_mu);
    g_observer = std::move(observer);
}

Tensor Checkpoint::get(const std::string& name) const {
    info(name);  // validates the index entry
    Tensor t = shard(file_of(name)).get(name);
    std::lock_guard<std::mutex> lk(g_observer_mu);
    if (g_observer) g_observer(t.nbytes());
    return t;
}

TensorBytes Checkpoint::bytes_of(const std::string& name) const {
    info(name);  // validates the index entry
    return shard(file_of(name)).bytes_of(name);
}

Tensor Checkpoint::get_as(const std::string& name, DType dtype) const {
    Tensor t = get(name);
    return t.dtype() == dtype ? t : t.to(dtype);
}

std::vector<std::string> Checkpoint::files() const {
    std::vector<std::string> out;
    for (auto& [k, f] : shard_of_)
        if (std::find(out.begin(), out.end(), f) == out.end()) out.push_back(f);
    std::sort(out.begin(), out.end());
    return out;
}

// -------------------------------------------------------------------- writing

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    size_t offset = 0;
    for (auto& [name, t] : tensors) {
        QDIT_CHECK(t.device().type == DeviceType::CPU, "tensor '{}' is not on the host", name);
        if (header.contains(name)) raise<Error>("{}: tensor '{}' written twice", path, name);
        header[name] = {{"dtype", dtype_name(t.dtype())},
                        {"shape", t.shape()},
                        {"data_offsets", {offset, offset + t.nbytes()}}};
        offset += t.nbytes();
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // keeps the data region 8-byte aligned
    uint64_t n = h.size();

    std::string tmp = temp_path_for(path);
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) raise<IoError>("cannot write {}: {}", path, std::strerror(errno));
    bool ok = std::fwrite(&n, 8, 1, f) == 1 && std::fwrite(h.data(), 1, h.size(), f) == h.size();
    for (auto& [name, t] : tensors)
        ok = ok && std::fwrite(t.raw(), 1, t.nbytes(), f) == t.nbytes();
    ok = (std::fflush(f) == 0) && ok;
    ok = (std::fclose(f) == 0) && ok;
    std::error_code ec;
    if (ok) fs::rename(tmp, path, ec);
    if (!ok || ec) {
        std::string why = ec ? ec.message() : std::strerror(errno);
        std::remove(tmp.c_str());
        raise<IoError>("cannot write {}: {}", path, why);
    }
}

std::vector<std::string> write_checkpoint(
    const std::string& dir, const std::string& stem,
    const std::vector<std::pair<std::string, Tensor>>& tensors, size_t max_shard_bytes) {
    std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
    size_t bytes = 0, total = 0;
    for (auto& entry : tensors) {
        size_t b = entry.second.nbytes();
        if (!shards.back().empty() && bytes + b > max_shard_bytes) {
            shards.emplace_back();
            bytes = 0;
        }
        shards.back().push_back(entry);
        bytes += b;
        total += b;
    }
    std::vector<std::string> written;
    if (shards.size() == 1) {
        std::string name = stem + ".safetensors";
        write_safetensors((fs::path(dir) / name).string(), shards[0]);
        written.push_back(name);
        return written;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
    for (size_t i = 0; i < shards.size(); ++i) {
        std::string name =
            fmt::format("{}-{:05d}-of-{:05d}.safetensors", stem, i + 1, shards.size());
        write_safetensors((fs::path(dir) / name).string(), shards[i]);
        for (auto& [k, t] : shards[i]) index["weight_map"][k] = name;
        written.push_back(name);
    }
    std::string index_name = stem + ".safetensors.index.json";
    write_file_atomic((fs::path(dir) / index_name).string(), index.dump(2) + "\n");
    written.push_back(index_name);
    return written;
}

}  // namespace qdit
