#include "models/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <mutex>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/files.h"

namespace qdit::text {

using nlohmann::json;

namespace {

// ---- UTF-8 (ICU's macros) -----------------------------------------------------

// Length of the well-formed UTF-8 sequence at s[i] (> 0), or minus the
// length of its "maximal subpart" when it is ill-formed (Unicode ch. 3,
// "U+FFFD substitution of maximal subparts", which ICU's U8_NEXT, Rust's
// from_utf8_lossy and therefore the `tokenizers` decoder follow). *cp gets
// the code point (negative when ill-formed).
int utf8_step(std::string_view s, size_t i, UChar32* cp = nullptr) {
    const int32_t len = int32_t(std::min<size_t>(s.size() - i, U8_MAX_LENGTH));
    int32_t n = 0;
    UChar32 c;
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data() + i), n, len, c);
    if (cp) *cp = c;
    return c < 0 ? -n : n;
}

// Each maximal subpart of an ill-formed sequence becomes U+FFFD (ICU's conversion follows the rule).
std::string utf8_lossy(std::string_view bytes) {
    if (bytes.size() > size_t(INT32_MAX)) raise("decode: {} bytes of text, more than 2^31 - 1", bytes.size());
    std::string out;
    icu::UnicodeString::fromUTF8(icu::StringPiece(bytes.data(), int32_t(bytes.size()))).toUTF8String(out);
    return out;
}

void check_utf8(std::string_view text) {
    for (size_t i = 0; i < text.size();) {
        int n = utf8_step(text, i);
        if (n < 0) raise("tokenizer input is not valid UTF-8 (byte offset {})", i);
        i += n;
    }
}

// ---- byte-level mapping ----------------------------------------------------

// GPT-2's table: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100.. in byte order, so every byte is a visible character.
std::array<uint32_t, 256> byte_to_code_point() {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        t[b] = printable ? b : next++;
    }
    return t;
}

// ---- NFC (ICU) -------------------------------------------------------------

std::string to_nfc(std::string_view s) {
    if (std::all_of(s.begin(), s.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
        return std::string(s);
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(st);
    std::string out;
    icu::StringByteSink<std::string> sink(&out);
    if (U_SUCCESS(st))
        n->normalizeUTF8(0, icu::StringPiece(s.data(), static_cast<int32_t>(s.size())), sink,
                         nullptr, st);
    if (U_FAILURE(st)) raise("NFC normalization failed: {}", u_errorName(st));
    return out;
}

// ---- PCRE2 handles ---------------------------------------------------------

struct CodeFree {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataFree {
    void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

// Oniguruma, which `tokenizers` uses, takes \s as the Unicode White_Space
// property; PCRE2's \s (with UCP) also matches U+180E, which stopped being
// a space in Unicode 6.3. Spell the property out so both engines split
// alike. Other escapes are copied unchanged.
std::string onig_compatible(const std::string& pattern) {
    std::string out;
    for (size_t i = 0; i < pattern.size(); ++i) {
        if (pattern[i] == '\\' && i + 1 < pattern.size()) {
            char e = pattern[++i];
            if (e == 's')
                out += "\\p{White_Space}";
            else if (e == 'S')
                out += "\\P{White_Space}";
            else
                (out += '\\') += e;
        } else {
            out += pattern[i];
        }
    }
    return out;
}

// ---- tokenizer.json reading ------------------------------------------------

// Field access that names the file and the dotted field in every error.
struct JsonFile {
    std::string path;

    static std::string join(const std::string& parent, const char* key) {
        return parent.empty() ? key : parent + "." + key;
    }

    [[noreturn]] void malformed(const std::string& field, const std::string& what) const {
        raise<FormatError>("{}: field '{}' {}", path, field, what);
    }
    [[noreturn]] void unsupported(const std::string& field, const std::string& what) const {
        raise<ConfigError>("{}: field '{}' {}", path, field, what);
    }
    const json& get(const json& obj, const std::string& field, const char* key) const {
        if (!obj.is_object()) malformed(field, "is not an object");
        auto it = obj.find(key);
        if (it == obj.end()) malformed(join(field, key), "is missing");
        return *it;
    }
    std::string string(const json& v, const std::string& field) const {
        if (!v.is_string()) malformed(field, "is not a string");
        return v.get<std::string>();
    }
    // Optional settings the engine does not implement must hold their
    // neutral value (absent, null, false, "" or 0).
    void require_neutral(const json& obj, const std::string& field, const char* key) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return;
        bool neutral = (it->is_boolean() && !it->get<bool>()) ||
                       (it->is_string() && it->get<std::string>().empty()) ||
                       (it->is_number() && it->get<double>() == 0.0);
        if (!neutral)
            unsupported(join(field, key),
                        fmt::format("is {}; only the default is supported", it->dump()));
    }
};

// transformers' Qwen2Tokenizer pre-tokenizes with this regex (Split, Isolated) after NFC, then
// ByteLevel without a prefix space.
constexpr const char* kQwen2SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
};

}  // namespace

// ---- implementation ----------------------------------------------------------

struct BpeTokenizer::Impl {
    std::string path;  // tokenizer.json, for messages
    std::unordered_map<std::string, int32_t> vocab;
    // (left id, right id) → (rank, merged id)
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
    std::array<int32_t, 256> byte_id{};  // id of each byte's one-char token, or -1
    std::vector<AddedToken> added;       // longest first
    std::vector<std::string> id_text;    // bytes each id decodes to
    std::vector<uint8_t> id_kind;        // 0 unused id, 1 vocabulary, 2 added, 3 added special
    bool nfc = false;
    std::unique_ptr<pcre2_code, CodeFree> split;

    std::optional<int32_t> pad_id;
    bool pad_left = false, truncate_left = false;  // tokenizer_config.json's padding_side, truncation_side
    std::string config_path;
    std::string chat_template;       // empty: none
    std::string chat_template_path;  // the file it came from

    mutable std::mutex cache_mu;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    static uint64_t pair_key(int32_t a, int32_t b) {
        return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    }

    void load_model(const JsonFile& f, const json& model);
    void load_vocab(const JsonFile& f, const std::string& field, const json& v);
    // kMerged, kUnknownToken (a, b or a + b is not in the vocabulary), or the rank of an earlier merge
    // of the same pair.
    static constexpr int32_t kMerged = -1, kUnknownToken = -2;
    int32_t add_merge(const std::string& a, const std::string& b, int32_t rank);
    void map_bytes();
    void load_merges_txt(const std::string& merges_path);
    void load_added(const JsonFile& f, const json& list);
    void load_config_added(const JsonFile& f, const json& decoder);
    void sort_added();
    void load_pipeline(const JsonFile& f, const json& root);
    // Compiles the Split regex: "" when it compiles, else why not.
    std::string compile_split(const std::string& regex);
    // tokenizer.json's model, added tokens and pipeline (the id tables are built after).
    void load_tokenizer_json(const std::string& file);
    void build_id_tables();

    void bpe(std::string_view piece, std::vector<int32_t>& out) const;
    void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
};

void BpeTokenizer::Impl::load_model(const JsonFile& f, const json& model) {
    std::string type = f.string(f.get(model, "model", "type"), "model.type");
    if (type != "BPE")
        f.unsupported(
            "model.type",
            fmt::format("is '{}'; only 'BPE' (byte-level, as in Qwen2/Qwen3) is supported", type));
    for (const char* k : {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                          "byte_fallback", "ignore_merges"})
        f.require_neutral(model, "model", k);

    load_vocab(f, "model.vocab", f.get(model, "model", "vocab"));

    const json& m = f.get(model, "model", "merges");
    if (!m.is_array()) f.malformed("model.merges", "is not a list");
    for (size_t r = 0; r < m.size(); ++r) {
        const json& e = m[r];
        std::string a, b;
        // Older files write "a b"; newer ones ["a", "b"].
        if (e.is_string()) {
            std::string s = e.get<std::string>();
            size_t sp = s.find(' ');
            if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                f.malformed(fmt::format("model.merges[{}]", r),
                            fmt::format("'{}' is not two tokens separated by one space", s));
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
            a = e[0].get<std::string>();
            b = e[1].get<std::string>();
        } else {
            f.malformed(fmt::format("model.merges[{}]", r),
                        "is neither \"a b\" nor [\"a\", \"b\"]");
        }
        const int32_t got = add_merge(a, b, int32_t(r));
        if (got == kUnknownToken)
            f.malformed(fmt::format("model.merges[{}]", r),
                        fmt::format("merges '{}' and '{}', which (or whose result) are not in model.vocab", a, b));
        if (got != kMerged) f.malformed(fmt::format("model.merges[{}]", r), fmt::format("repeats model.merges[{}]", got));
    }
    map_bytes();
}

void BpeTokenizer::Impl::load_vocab(const JsonFile& f, const std::string& field, const json& v) {
    if (!v.is_object()) f.malformed(field, "is not an object of token: id");
    for (auto it = v.begin(); it != v.end(); ++it) {
        if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX)
            f.malformed(field, fmt::format("maps '{}' to {}, not an id", it.key(), it->dump()));
        vocab.emplace(it.key(), it->get<int32_t>());
    }
}

int32_t BpeTokenizer::Impl::add_merge(const std::string& a, const std::string& b, int32_t rank) {
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    if (ia == vocab.end() || ib == vocab.end() || iab == vocab.end()) return kUnknownToken;
    // A repeated pair would make its rank ambiguous.
    auto [at, fresh] = merges.emplace(pair_key(ia->second, ib->second), std::make_pair(rank, iab->second));
    return fresh ? kMerged : at->second.first;
}

void BpeTokenizer::Impl::map_bytes() {
    const auto table = byte_to_code_point();
    for (int byte = 0; byte < 256; ++byte) {
        char ch[U8_MAX_LENGTH];
        int32_t n = 0;
        U8_APPEND_UNSAFE(ch, n, table[byte]);
        auto it = vocab.find(std::string(ch, size_t(n)));
        byte_id[byte] = it == vocab.end() ? -1 : it->second;
    }
}

// merges.txt as `tokenizers` reads it (BPE.from_file): lines starting with "#version" are skipped, every
// other line is two tokens separated by one space, ranked in file order.
void BpeTokenizer::Impl::load_merges_txt(const std::string& merges_path) {
    const std::string text = read_text_file(merges_path);
    int32_t rank = 0;
    size_t line_no = 0;
    for (size_t pos = 0; pos < text.size();) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("#version", 0) == 0) continue;
        const size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
            raise<FormatError>("{}: line {} ('{}') is not two tokens separated by one space", merges_path, line_no,
                               line);
        const std::string a = line.substr(0, sp), b = line.substr(sp + 1);
        const int32_t got = add_merge(a, b, rank++);
        if (got == kUnknownToken)
            raise<FormatError>("{}: line {} merges '{}' and '{}', which (or whose result) are not in {}", merges_path,
                               line_no, a, b, path);
        if (got != kMerged)
            raise<FormatError>("{}: line {} repeats the merge '{} {}' of rank {}", merges_path, line_no, a, b, got);
    }
    map_bytes();
}

void BpeTokenizer::Impl::load_added(const JsonFile& f, const json& list) {
    if (!list.is_array()) f.malformed("added_tokens", "is not a list");
    for (size_t i = 0; i < list.size(); ++i) {
        std::string field = fmt::format("added_tokens[{}]", i);
        const json& t = list[i];
        const json& id = f.get(t, field, "id");
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
            f.malformed(field + ".id", "is not a token id");
        std::string content = f.string(f.get(t, field, "content"), field + ".content");
        if (content.empty()) f.malformed(field + ".content", "is empty");
        // Qwen's added tokens match verbatim; strip/word-boundary rules and
        // matching on normalized text are not implemented.
        for (const char* k : {"single_word", "lstrip", "rstrip", "normalized"})
            f.require_neutral(t, field, k);
        const json& special = f.get(t, field, "special");
        if (!special.is_boolean()) f.malformed(field + ".special", "is not true/false");
        added.push_back({content, id.get<int32_t>(), special.get<bool>()});
    }
    sort_added();
}

// tokenizer_config.json's added_tokens_decoder {"id": {"content": ..., "special": ...}}: transformers
// adds these to the tokenizer (in a folder without tokenizer.json they are the only added tokens).
// One that tokenizer.json already has is the same token; one whose id or content tokenizer.json
// gives to another token is refused.
void BpeTokenizer::Impl::load_config_added(const JsonFile& f, const json& decoder) {
    if (!decoder.is_object()) f.malformed("added_tokens_decoder", "is not an object of id: token");
    std::unordered_map<int32_t, const std::string*> vocab_by_id;
    if (!decoder.empty())
        for (const auto& [tok, vid] : vocab) vocab_by_id.emplace(vid, &tok);
    for (auto it = decoder.begin(); it != decoder.end(); ++it) {
        const std::string field = "added_tokens_decoder." + it.key();
        int64_t parsed = -1;
        try {
            size_t used = 0;
            parsed = std::stoll(it.key(), &used);
            if (used != it.key().size()) parsed = -1;
        } catch (const std::exception&) {
            parsed = -1;
        }
        if (parsed < 0 || parsed > INT32_MAX) f.malformed(field, "has a key that is not a token id");
        const int32_t id = int32_t(parsed);
        const json& t = it.value();
        const std::string content = f.string(f.get(t, field, "content"), field + ".content");
        if (content.empty()) f.malformed(field + ".content", "is empty");
        for (const char* k : {"single_word", "lstrip", "rstrip", "normalized"}) f.require_neutral(t, field, k);
        auto sp = t.find("special");
        if (sp != t.end() && !sp->is_boolean()) f.malformed(field + ".special", "is not true/false");
        const bool special = sp != t.end() && sp->get<bool>();
        bool known = false;
        for (const AddedToken& a : added) {
            if (a.id == id && a.content == content) known = true;
            else if (a.id == id || a.content == content)
                f.malformed(field, fmt::format("is '{}', but {} has the added token '{}' as id {}", content, path,
                                               a.content, a.id));
        }
        // A vocabulary token may be added under its own id only.
        const auto v = vocab.find(content);
        const auto owner = vocab_by_id.find(id);
        if (v != vocab.end() && v->second != id)
            f.malformed(field, fmt::format("is '{}', but {} has it as id {}", content, path, v->second));
        if (owner != vocab_by_id.end() && *owner->second != content)
            f.malformed(field, fmt::format("is '{}', but {} has '{}' as id {}", content, path, *owner->second, id));
        if (!known) added.push_back({content, id, special});
    }
    sort_added();
}

void BpeTokenizer::Impl::sort_added() {
    // Longest first: the first hit at a position is then the leftmost-longest match.
    std::stable_sort(added.begin(), added.end(), [](const AddedToken& x, const AddedToken& y) {
        return x.content.size() > y.content.size();
    });
}

void BpeTokenizer::Impl::load_pipeline(const JsonFile& f, const json& root) {
    for (const char* k : {"truncation", "padding"}) {
        auto it = root.find(k);
        if (it != root.end() && !it->is_null())
            f.unsupported(k, "is set; only null is supported (pass lengths to encode_padded)");
    }

    const json& norm = f.get(root, "", "normalizer");
    if (!norm.is_null()) {
        std::string type = f.string(f.get(norm, "normalizer", "type"), "normalizer.type");
        if (type != "NFC")
            f.unsupported("normalizer.type",
                          fmt::format("is '{}'; only NFC or null is supported", type));
        nfc = true;
    }

    // Sequence[Split(Regex, Isolated), ByteLevel(no prefix space, no regex)], as in Qwen2/Qwen3.
    const json& pre = f.get(root, "", "pre_tokenizer");
    const char* expected =
        "must be Sequence[Split(Regex, Isolated), ByteLevel(add_prefix_space=false, "
        "use_regex=false)]";
    if (pre.is_null()) f.unsupported("pre_tokenizer", expected);
    if (f.string(f.get(pre, "pre_tokenizer", "type"), "pre_tokenizer.type") != "Sequence")
        f.unsupported("pre_tokenizer.type", expected);
    const json& steps = f.get(pre, "pre_tokenizer", "pretokenizers");
    if (!steps.is_array() || steps.size() != 2)
        f.unsupported("pre_tokenizer.pretokenizers", expected);
    const std::string s0 = "pre_tokenizer.pretokenizers[0]", s1 = "pre_tokenizer.pretokenizers[1]";
    if (f.string(f.get(steps[0], s0, "type"), s0 + ".type") != "Split")
        f.unsupported(s0 + ".type", expected);
    if (f.string(f.get(steps[0], s0, "behavior"), s0 + ".behavior") != "Isolated")
        f.unsupported(s0 + ".behavior", "must be 'Isolated'");
    f.require_neutral(steps[0], s0, "invert");
    const json& pat = f.get(steps[0], s0, "pattern");
    std::string regex = f.string(f.get(pat, s0 + ".pattern", "Regex"), s0 + ".pattern.Regex");
    if (f.string(f.get(steps[1], s1, "type"), s1 + ".type") != "ByteLevel")
        f.unsupported(s1 + ".type", expected);
    f.require_neutral(steps[1], s1, "add_prefix_space");
    f.require_neutral(steps[1], s1, "use_regex");

    if (const std::string why = compile_split(regex); !why.empty()) f.malformed(s0 + ".pattern.Regex", why);

    // Encoding adds no tokens: null, ByteLevel (offsets only) or a template
    // that is just the sequence itself.
    const json& post = f.get(root, "", "post_processor");
    if (!post.is_null()) {
        std::string type = f.string(f.get(post, "post_processor", "type"), "post_processor.type");
        bool identity = type == "ByteLevel";
        if (type == "TemplateProcessing") {
            const json& single = f.get(post, "post_processor", "single");
            identity = single.is_array() && single.size() == 1 && single[0].contains("Sequence");
        }
        if (!identity)
            f.unsupported("post_processor",
                          "adds tokens; only null, ByteLevel or a TemplateProcessing whose "
                          "'single' is the bare sequence are supported");
    }

    const json& dec = f.get(root, "", "decoder");
    if (dec.is_null() || f.string(f.get(dec, "decoder", "type"), "decoder.type") != "ByteLevel")
        f.unsupported("decoder", "must be ByteLevel");
}

std::string BpeTokenizer::Impl::compile_split(const std::string& regex) {
    std::string translated = onig_compatible(regex);
    int err = 0;
    PCRE2_SIZE offset = 0;
    // \C (one code unit) could end a match inside a character, where the next match
    // cannot start; Oniguruma has no such escape.
    split.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C, &err, &offset,
                              nullptr));
    if (!split) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return fmt::format("does not compile at offset {} of '{}': {}", offset, translated,
                           reinterpret_cast<const char*>(msg));
    }
    // The JIT is only a speed-up; the interpreter gives the same matches.
    pcre2_jit_compile(split.get(), PCRE2_JIT_COMPLETE);
    return {};
}

void BpeTokenizer::Impl::build_id_tables() {
    int32_t max_id = -1;
    for (const auto& [tok, id] : vocab) max_id = std::max(max_id, id);
    for (const auto& t : added) max_id = std::max(max_id, t.id);
    // The tables below hold one entry per id up to the largest, so an id beyond the
    // number of tokens (ids are dense as tokenizers writes them) is refused rather than
    // allocated for.
    if (max_id >= 0 && size_t(max_id) >= vocab.size() + added.size())
        raise<FormatError>("{}: token id {} is not below the {} tokens of model.vocab and "
                           "added_tokens (ids must be dense)",
                           path, max_id, vocab.size() + added.size());
    id_text.assign(size_t(max_id + 1), {});
    id_kind.assign(size_t(max_id + 1), 0);

    std::unordered_map<uint32_t, char> cp_to_byte;
    const auto table = byte_to_code_point();
    for (int b = 0; b < 256; ++b) cp_to_byte[table[b]] = char(b);
    // The ByteLevel decoder maps each character back to its byte; a token with
    // any other character is passed through as its own UTF-8 (tokenizers does
    // the same, for added tokens too).
    auto to_bytes = [&](const std::string& tok) {
        std::string bytes;
        for (size_t i = 0; i < tok.size();) {
            UChar32 cp;
            int n = utf8_step(tok, i, &cp);
            if (n < 0) return tok;
            auto it = cp_to_byte.find(uint32_t(cp));
            if (it == cp_to_byte.end()) return tok;
            bytes += it->second;
            i += n;
        }
        return bytes;
    };
    for (const auto& [tok, id] : vocab) {
        id_text[id] = to_bytes(tok);
        id_kind[id] = 1;
    }
    for (const auto& t : added) {
        id_text[t.id] = to_bytes(t.content);
        id_kind[t.id] = t.special ? 3 : 2;
    }
}

// Byte-level BPE of one pre-token: start from one symbol per byte and apply
// the lowest-ranked merge present, leftmost first, until none applies (the
// order `tokenizers` uses). A linked list plus a heap keeps it O(n log n);
// heap entries made stale by an earlier merge are skipped when popped.
void BpeTokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
    {
        std::lock_guard<std::mutex> lock(cache_mu);
        auto it = cache.find(std::string(piece));
        if (it != cache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    struct Sym {
        int32_t id, prev, next;
    };
    std::vector<Sym> sym;
    for (char c : piece) {
        int32_t id = byte_id[static_cast<unsigned char>(c)];
        // A byte missing from the vocabulary is dropped, as `tokenizers`
        // does when there is no unk_token (never the case for Qwen).
        if (id < 0) continue;
        int32_t i = int32_t(sym.size());
        sym.push_back({id, i - 1, -1});
        if (i > 0) sym[i - 1].next = i;
    }
    struct Cand {
        int32_t rank, pos, left, right, merged;
        bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int32_t pos) {
        if (pos < 0 || sym[pos].next < 0) return;
        int32_t nx = sym[pos].next;
        auto it = merges.find(pair_key(sym[pos].id, sym[nx].id));
        if (it != merges.end())
            heap.push({it->second.first, pos, sym[pos].id, sym[nx].id, it->second.second});
    };
    for (int32_t i = 0; i + 1 < int32_t(sym.size()); ++i) push(i);
    std::vector<bool> dead(sym.size(), false);
    while (!heap.empty()) {
        Cand c = heap.top();
        heap.pop();
        int32_t nx = sym[c.pos].next;
        if (dead[c.pos] || nx < 0 || sym[c.pos].id != c.left || sym[nx].id != c.right) continue;
        sym[c.pos].id = c.merged;
        dead[nx] = true;
        sym[c.pos].next = sym[nx].next;
        if (sym[nx].next >= 0) sym[sym[nx].next].prev = c.pos;
        push(sym[c.pos].prev);
        push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
    out.insert(out.end(), ids.begin(), ids.end());

    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() >= 10000) cache.clear();  // bounded; prompts repeat few pieces
    cache.emplace(std::string(piece), std::move(ids));
}

// Text between added tokens: normalize, split by the regex (matches and the
// gaps between them are both pieces), BPE each piece.
void BpeTokenizer::Impl::encode_segment(std::string_view raw, std::vector<int32_t>& out) const {
    std::string text = nfc ? to_nfc(raw) : std::string(raw);
    std::unique_ptr<pcre2_match_data, MatchDataFree> md(
        pcre2_match_data_create_from_pattern(split.get(), nullptr));
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0, gap = 0;
    while (pos < text.size()) {
        int rc = pcre2_match(split.get(), subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(),
                             nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) raise("{}: split regex failed to match (PCRE2 error {})", path, rc);
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        size_t start = ov[0], end = ov[1];
        if (start < pos || end < start || end > text.size())
            raise("{}: split regex gave the match [{}, {}) searching from {}", path, start, end,
                  pos);
        if (start == text.size()) break;  // an empty match at the end
        if (end == start) {  // an empty match is no piece; move on one character
            pos = start + size_t(utf8_step(text, start));
            continue;
        }
        if (start > gap) bpe(std::string_view(text).substr(gap, start - gap), out);
        bpe(std::string_view(text).substr(start, end - start), out);
        gap = pos = end;
    }
    if (gap < text.size()) bpe(std::string_view(text).substr(gap), out);
}

// ---- public API --------------------------------------------------------------

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

void BpeTokenizer::Impl::load_tokenizer_json(const std::string& file) {
    JsonFile f{file};
    json root = read_json_file(f.path);
    if (!root.is_object()) f.malformed("(root)", "is not an object");
    path = f.path;
    load_model(f, f.get(root, "", "model"));
    load_added(f, f.get(root, "", "added_tokens"));
    load_pipeline(f, root);
}

BpeTokenizer BpeTokenizer::from_file(const std::string& tokenizer_json_path) {
    auto impl = std::make_unique<Impl>();
    impl->load_tokenizer_json(tokenizer_json_path);
    impl->build_id_tables();
    return BpeTokenizer(std::move(impl));
}

BpeTokenizer BpeTokenizer::from_dir(const std::string& dir) {
    namespace fs = std::filesystem;
    const fs::path d(dir);
    const std::string tokenizer_json = (d / "tokenizer.json").string(), vocab_json = (d / "vocab.json").string(),
                      merges_txt = (d / "merges.txt").string();
    const bool one_file = path_exists(tokenizer_json);
    if (!one_file && !(path_exists(vocab_json) && path_exists(merges_txt)))
        raise<IoError>("{}: no such file, and no vocab.json + merges.txt beside it (a tokenizer folder holds one "
                       "or the other)",
                       tokenizer_json);
    JsonFile f{(d / "tokenizer_config.json").string()};
    json cfg = read_json_file(f.path);
    if (!cfg.is_object()) f.malformed("(root)", "is not an object");
    const auto cls = cfg.find("tokenizer_class");
    const bool qwen2_class =
        cls != cfg.end() && (*cls == "Qwen2Tokenizer" || *cls == "Qwen2TokenizerFast");

    auto impl = std::make_unique<Impl>();
    if (one_file) {
        impl->load_tokenizer_json(tokenizer_json);
    } else {
        // vocab.json + merges.txt, as a Qwen2Tokenizer saved without tokenizer.json: transformers
        // builds that class's own pipeline around them.
        if (!qwen2_class)
            f.unsupported("tokenizer_class",
                          fmt::format("is {}; a folder without tokenizer.json is read only for Qwen2Tokenizer",
                                      cls == cfg.end() ? std::string("missing") : cls->dump()));
        impl->path = vocab_json;
        impl->load_vocab(JsonFile{vocab_json}, "(root)", read_json_file(vocab_json));
        impl->load_merges_txt(merges_txt);
        impl->nfc = true;
        if (const std::string why = impl->compile_split(kQwen2SplitRegex); !why.empty())
            raise("the Qwen2 split regex {}", why);
        if (!cfg.contains("added_tokens_decoder"))
            f.unsupported("added_tokens_decoder",
                          "is missing; without tokenizer.json the added tokens are read from it (the older "
                          "added_tokens.json alone is not supported)");
    }
    Impl& im = *impl;
    if (auto dec = cfg.find("added_tokens_decoder"); dec != cfg.end() && !dec->is_null())
        im.load_config_added(f, *dec);
    im.build_id_tables();
    im.config_path = f.path;

    // Settings that would change what transformers returns and are not implemented.
    // clean_up_tokenization_spaces is not among them: transformers 5 ignores it for a BPE tokenizer
    // unless the flag below forces it.
    for (const char* k : {"split_special_tokens", "add_bos_token", "add_eos_token", "add_prefix_space",
                          "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"})
        f.require_neutral(cfg, "", k);
    auto side = [&](const char* k) {
        auto it = cfg.find(k);
        if (it == cfg.end() || it->is_null()) return false;
        if (*it != "left" && *it != "right")
            f.unsupported(k, fmt::format("is {}; it must be \"right\" or \"left\"", it->dump()));
        return *it == "left";
    };
    im.pad_left = side("padding_side");
    im.truncate_left = side("truncation_side");

    BpeTokenizer tok(std::move(impl));
    // A plain string, or the older {"content": ...} AddedToken object; absent, Qwen2Tokenizer's default.
    auto pad = cfg.find("pad_token");
    std::optional<std::string> pad_name;
    if (pad != cfg.end() && !pad->is_null())
        pad_name = pad->is_object() ? f.string(f.get(*pad, "pad_token", "content"), "pad_token.content")
                                    : f.string(*pad, "pad_token");
    else if (pad == cfg.end() && qwen2_class)
        pad_name = "<|endoftext|>";
    if (pad_name) {
        im.pad_id = tok.token_to_id(*pad_name);
        if (!im.pad_id)
            f.unsupported("pad_token", fmt::format("is '{}'{}, which {} does not define", *pad_name,
                                                   pad == cfg.end() ? " (Qwen2Tokenizer's default)" : "", im.path));
    }

    auto tpl = cfg.find("chat_template");
    if (tpl != cfg.end() && !tpl->is_null()) {
        im.chat_template = f.string(*tpl, "chat_template");
        im.chat_template_path = f.path;
    } else if (path_exists((d / "chat_template.jinja").string())) {
        im.chat_template_path = (d / "chat_template.jinja").string();
        im.chat_template = read_text_file(im.chat_template_path);
    }
    return tok;
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
    check_utf8(text);
    const Impl& im = *impl_;
    std::vector<int32_t> out;
    size_t seg = 0;  // start of the text not yet encoded
    for (size_t i = 0; i < text.size();) {
        const AddedToken* hit = nullptr;
        for (const auto& t : im.added)  // content is never empty; its first byte rules out most
            if (t.content[0] == text[i] && text.compare(i, t.content.size(), t.content) == 0) {
                hit = &t;
                break;
            }
        if (!hit) {
            ++i;
            continue;
        }
        if (i > seg) im.encode_segment(text.substr(seg, i - seg), out);
        out.push_back(hit->id);
        i += hit->content.size();
        seg = i;
    }
    if (seg < text.size()) im.encode_segment(text.substr(seg), out);
    return out;
}

std::vector<int32_t> BpeTokenizer::encode_truncated(std::string_view text, size_t max_length) const {
    if (max_length == 0) raise<UsageError>("encode_truncated: max_length must be at least 1");
    std::vector<int32_t> ids = encode(text);
    if (ids.size() > max_length && impl_->truncate_left)
        ids.erase(ids.begin(), ids.end() - ptrdiff_t(max_length));
    else if (ids.size() > max_length)
        ids.resize(max_length);
    return ids;
}

PaddedTokens BpeTokenizer::encode_padded(std::string_view text, size_t max_length) const {
    const int32_t pad = pad_token_id();
    PaddedTokens r;
    r.ids = encode_truncated(text, max_length);
    const size_t n = max_length - r.ids.size();
    const auto ids_at = impl_->pad_left ? r.ids.begin() : r.ids.end();
    r.ids.insert(ids_at, n, pad);
    r.attention_mask.assign(max_length, 1);
    std::fill_n(impl_->pad_left ? r.attention_mask.begin() : r.attention_mask.end() - ptrdiff_t(n), n, 0);
    return r;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    const Impl& im = *impl_;
    std::string bytes;
    for (int32_t id : ids) {
        if (id < 0 || size_t(id) >= im.id_kind.size() || im.id_kind[id] == 0)
            raise("decode: token id {} is not in {}", id, im.path);
        if (skip_special_tokens && im.id_kind[id] == 3) continue;
        bytes += im.id_text[id];
    }
    return utf8_lossy(bytes);
}

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
    for (const auto& t : impl_->added)
        if (t.content == token) return t.id;
    auto it = impl_->vocab.find(std::string(token));
    if (it == impl_->vocab.end()) return std::nullopt;
    return it->second;
}

int32_t BpeTokenizer::pad_token_id() const {
    if (!impl_->pad_id) {
        if (impl_->config_path.empty())
            raise<ConfigError>("{}: no pad token without tokenizer_config.json (use from_dir)",
                               impl_->path);
        raise<ConfigError>("{}: field 'pad_token' is missing or null", impl_->config_path);
    }
    return *impl_->pad_id;
}

size_t BpeTokenizer::vocab_size() const {
    return impl_->id_kind.size();
}

const std::string& BpeTokenizer::chat_template() const { return impl_->chat_template; }
const std::string& BpeTokenizer::chat_template_path() const { return impl_->chat_template_path; }

}  // namespace qdit::text
