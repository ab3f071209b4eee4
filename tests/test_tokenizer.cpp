// BpeTokenizer against transformers' Qwen2Tokenizer on the tiny fixture that
// scripts/fixtures/make_text_fixtures.py trains (tests/data/text/).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "core/error.h"
#include "io/files.h"
#include "models/text/tokenizer.h"
#include "pipeline/chat_template.h"
#include "tests/expect_error.h"

namespace fs = std::filesystem;
using namespace qdit;
using nlohmann::json;
using qdit::text::BpeTokenizer;

namespace {

using testutil::error_of;

const std::string kDir = std::string(QDIT_TEST_DATA) + "/text/tokenizer";
// The same tokenizer without tokenizer.json: vocab.json, merges.txt and tokenizer_config.json's
// added_tokens_decoder (the references are the same, checked against transformers by the script).
const std::string kVocabMergesDir = std::string(QDIT_TEST_DATA) + "/text/tokenizer_vocab_merges";
const std::string kReference = std::string(QDIT_TEST_DATA) + "/text/tokenizer_reference.json";

const json& reference() {
    static const json r = read_json_file(kReference);
    return r;
}

// The prompt ZImagePipeline builds with the tokenizer's chat template.
std::string templated(const BpeTokenizer& tok, const std::string& prompt) {
    return render_zimage_prompt(tok.chat_template(), tok.chat_template_path(), prompt);
}

std::vector<int32_t> ids_of(const json& j) {
    return j.get<std::vector<int32_t>>();
}

// A copy of the fixture folder whose files a test may rewrite; removed at the end.
struct ScratchDir {
    fs::path path;
    explicit ScratchDir(const std::string& name, const std::string& from = kDir)
        : path(fs::temp_directory_path() / ("qdit_tok_" + name)) {
        fs::remove_all(path);
        fs::create_directories(path);
        for (const auto& e : fs::directory_iterator(from))
            fs::copy_file(e.path(), path / e.path().filename());
    }
    ~ScratchDir() { fs::remove_all(path); }

    json read(const std::string& file) const { return read_json_file((path / file).string()); }
    void write(const std::string& file, const json& j) const {
        write_file_atomic((path / file).string(), j.dump(1));
    }
    void edit(const std::string& file, const std::function<void(json&)>& fn) const {
        json j = read(file);
        fn(j);
        write(file, j);
    }
};

// Message of loading the fixture with tokenizer.json edited; E is ConfigError
// for a setting that is valid but not implemented, FormatError for a broken file.
template <typename E>
std::string load_error_after(const std::string& name,
                             const std::function<void(json&)>& edit_tokenizer_json) {
    ScratchDir d(name);
    d.edit("tokenizer.json", edit_tokenizer_json);
    return error_of<E>([&] { BpeTokenizer::from_dir(d.path.string()); });
}

}  // namespace

TEST(Tokenizer, SpecialTokensAndSizes) {
    for (const std::string& dir : {kDir, kVocabMergesDir}) {
        SCOPED_TRACE(dir);
        BpeTokenizer tok = BpeTokenizer::from_dir(dir);
        const json& r = reference();
        EXPECT_EQ(tok.vocab_size(), r["vocab_size"].get<size_t>());
        EXPECT_EQ(tok.pad_token_id(), r["pad_token_id"].get<int32_t>());
        for (const auto& [name, id] : r["special_token_ids"].items())
            EXPECT_EQ(tok.token_to_id(name), id.get<int32_t>()) << name;
        EXPECT_EQ(tok.token_to_id("<|not_a_token|>"), std::nullopt);
        EXPECT_TRUE(tok.token_to_id("Ġthe").has_value());  // vocabulary tokens in their byte-level form
    }
}

TEST(Tokenizer, MatchesTransformersOnEveryPrompt) {
    for (const std::string& dir : {kDir, kVocabMergesDir}) {
        SCOPED_TRACE(dir);
        BpeTokenizer tok = BpeTokenizer::from_dir(dir);
        const json& r = reference();
        const size_t max_length = r["max_length"].get<size_t>();
        ASSERT_GE(r["prompts"].size(), 15u);
        for (const json& p : r["prompts"]) {
            SCOPED_TRACE(p["name"].get<std::string>());
            const std::string prompt = p["prompt"].get<std::string>();
            const std::string text = templated(tok, prompt);
            EXPECT_EQ(text, p["templated"].get<std::string>());
            text::PaddedTokens padded = tok.encode_padded(text, max_length);
            EXPECT_EQ(padded.ids, ids_of(p["input_ids"]));
            EXPECT_EQ(padded.attention_mask, ids_of(p["attention_mask"]));
            EXPECT_EQ(tok.encode(prompt), ids_of(p["plain_ids"]));
        }
    }
}

TEST(Tokenizer, DecodeRoundTrips) {
    BpeTokenizer tok = BpeTokenizer::from_dir(kDir);
    for (const json& p : reference()["prompts"]) {
        SCOPED_TRACE(p["name"].get<std::string>());
        const std::string prompt = p["prompt"].get<std::string>();
        // decode gives the NFC form of the input, which is the input itself
        // unless it had decomposed characters.
        const std::string decoded = tok.decode(tok.encode(prompt));
        EXPECT_EQ(decoded, p["decoded_plain"].get<std::string>());
        if (p["name"] != "nfc_decomposed") {
            EXPECT_EQ(decoded, prompt);
        }
        const std::string text = templated(tok, prompt);
        EXPECT_EQ(tok.decode(tok.encode(text)), templated(tok, decoded));
    }
}

TEST(Tokenizer, DecodeMatchesTransformers) {
    BpeTokenizer tok = BpeTokenizer::from_dir(kDir);
    // Includes special tokens kept and skipped, and cuts inside a character (U+FFFD).
    for (const std::string& dir : {kDir, kVocabMergesDir}) {
        const BpeTokenizer t = BpeTokenizer::from_dir(dir);
        for (const json& c : reference()["decode"])
            EXPECT_EQ(t.decode(ids_of(c["ids"]), c["skip_special_tokens"].get<bool>()), c["text"].get<std::string>())
                << dir << ": " << c["ids"].dump();
    }
    EXPECT_NE(error_of<Error>([&] { tok.decode({int32_t(tok.vocab_size())}); }).find("token id"),
              std::string::npos);
    EXPECT_NE(error_of<Error>([&] { tok.decode({-1}); }).find("-1"), std::string::npos);
}

TEST(Tokenizer, PaddingAndTruncation) {
    BpeTokenizer tok = BpeTokenizer::from_dir(kDir);
    std::vector<int32_t> full = tok.encode("a red fox in the snow");
    ASSERT_GT(full.size(), 3u);
    text::PaddedTokens cut = tok.encode_padded("a red fox in the snow", 3);
    EXPECT_EQ(cut.ids, std::vector<int32_t>(full.begin(), full.begin() + 3));
    EXPECT_EQ(cut.attention_mask, std::vector<int32_t>(3, 1));
    text::PaddedTokens padded = tok.encode_padded("", 4);
    EXPECT_EQ(padded.ids, std::vector<int32_t>(4, tok.pad_token_id()));
    EXPECT_EQ(padded.attention_mask, std::vector<int32_t>(4, 0));
    EXPECT_THROW(tok.encode_padded("x", 0), UsageError);
}

// tokenizer_config.json's padding_side and truncation_side as transformers applies them.
TEST(Tokenizer, PaddingAndTruncationSidesMatchTransformers) {
    const json& r = reference();
    const size_t max_length = r["max_length"].get<size_t>();
    ASSERT_EQ(r["sides"].size(), 6u);
    for (const std::string& dir : {kDir, kVocabMergesDir}) {
        ScratchDir d("sides", dir);
        for (const json& c : r["sides"]) {
            SCOPED_TRACE(dir + " " + c.dump().substr(0, 80));
            d.edit("tokenizer_config.json", [&](json& j) {
                j["padding_side"] = c["padding_side"];
                j["truncation_side"] = c["truncation_side"];
            });
            const BpeTokenizer tok = BpeTokenizer::from_dir(d.path.string());
            const json* p = nullptr;
            for (const json& q : r["prompts"])
                if (q["name"] == c["name"]) p = &q;
            ASSERT_NE(p, nullptr);
            const text::PaddedTokens padded = tok.encode_padded((*p)["templated"].get<std::string>(), max_length);
            EXPECT_EQ(padded.ids, ids_of(c["input_ids"]));
            EXPECT_EQ(padded.attention_mask, ids_of(c["attention_mask"]));
            // The ids encode_truncated keeps are the unpadded ones of encode_padded.
            std::vector<int32_t> kept;
            for (size_t i = 0; i < padded.ids.size(); ++i)
                if (padded.attention_mask[i]) kept.push_back(padded.ids[i]);
            EXPECT_EQ(tok.encode_truncated((*p)["templated"].get<std::string>(), max_length), kept);
        }
    }
}

// transformers 5 leaves a BPE tokenizer's decode alone when clean_up_tokenization_spaces is true.
TEST(Tokenizer, CleanUpTokenizationSpacesAsTransformers) {
    const json& c = reference()["clean_up"];
    ScratchDir d("clean_up");
    d.edit("tokenizer_config.json", [](json& j) { j["clean_up_tokenization_spaces"] = true; });
    const BpeTokenizer tok = BpeTokenizer::from_dir(d.path.string());
    EXPECT_EQ(tok.decode(ids_of(c["ids"])), c["text"].get<std::string>());
    EXPECT_NE(c["text"].get<std::string>().find(" n't"), std::string::npos);  // the case it could have changed
}

TEST(Tokenizer, QwenFileLayout) {
    // The real Qwen3 tokenizer.json, written by an older `tokenizers`, stores
    // merges as "a b" and has a ByteLevel post-processor; the ids are the same.
    ScratchDir d("qwen_layout");
    d.edit("tokenizer.json", [](json& j) {
        for (json& m : j["model"]["merges"])
            m = m[0].get<std::string>() + " " + m[1].get<std::string>();
        j["post_processor"] = json::parse(
            R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})");
    });
    BpeTokenizer b = BpeTokenizer::from_dir(d.path.string());
    for (const json& p : reference()["prompts"])
        EXPECT_EQ(b.encode(p["prompt"].get<std::string>()), ids_of(p["plain_ids"]));
}

TEST(Tokenizer, ChatTemplateSources) {
    BpeTokenizer fixture = BpeTokenizer::from_dir(kDir);
    const std::string jinja = read_text_file(kDir + "/chat_template.jinja");
    EXPECT_EQ(fixture.chat_template(), jinja);
    EXPECT_EQ(fixture.chat_template_path(), kDir + "/chat_template.jinja");
    {
        // The template inline in tokenizer_config.json, as in the Qwen3 repositories.
        ScratchDir d("inline_template");
        fs::remove(d.path / "chat_template.jinja");
        d.edit("tokenizer_config.json", [&](json& j) { j["chat_template"] = jinja; });
        BpeTokenizer inline_tok = BpeTokenizer::from_dir(d.path.string());
        EXPECT_EQ(inline_tok.chat_template(), jinja);
        EXPECT_EQ(fs::path(inline_tok.chat_template_path()).filename(), "tokenizer_config.json");
        EXPECT_EQ(templated(inline_tok, "x"), "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
    }
    {
        ScratchDir d("no_template");
        fs::remove(d.path / "chat_template.jinja");
        std::string e = error_of<ConfigError>(
            [&] { templated(BpeTokenizer::from_dir(d.path.string()), "x"); });
        EXPECT_NE(e.find("no chat template"), std::string::npos) << e;
    }
    {
        // Qwen2.5's template (default system prompt) renders differently and is refused.
        ScratchDir d("qwen25_template");
        write_file_atomic(
            (d.path / "chat_template.jinja").string(),
            "{%- for message in messages %}{%- if loop.first and message.role != 'system' %}"
            "{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
            "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- "
            "endif %}");
        std::string e = error_of<ConfigError>(
            [&] { templated(BpeTokenizer::from_dir(d.path.string()), "x"); });
        EXPECT_NE(e.find("does not render a user turn as Qwen3's does"), std::string::npos) << e;
        EXPECT_NE(e.find("chat_template.jinja"), std::string::npos) << e;
    }
    // tokenizer.json alone has neither a pad token nor a template.
    BpeTokenizer bare = BpeTokenizer::from_file(kDir + "/tokenizer.json");
    EXPECT_EQ(bare.encode("snow"), fixture.encode("snow"));
    EXPECT_THROW(bare.pad_token_id(), ConfigError);
    EXPECT_THROW(templated(bare, "x"), ConfigError);
}

TEST(Tokenizer, MissingFileAndBadJson) {
    std::string e =
        error_of<IoError>([] { BpeTokenizer::from_dir("/nonexistent/qdit_tokenizer"); });
    EXPECT_NE(e.find("/nonexistent/qdit_tokenizer/tokenizer.json"), std::string::npos) << e;

    ScratchDir d("bad_json");
    write_file_atomic((d.path / "tokenizer.json").string(), "{\"model\": {\"type\": \"BPE\",");
    e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
    EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << e;
    EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;

    ScratchDir c("no_config");
    fs::remove(c.path / "tokenizer_config.json");
    e = error_of<IoError>([&] { BpeTokenizer::from_dir(c.path.string()); });
    EXPECT_NE(e.find("tokenizer_config.json"), std::string::npos) << e;
}

TEST(Tokenizer, UnsupportedOrMalformedFieldsAreNamed) {
    struct Case {
        const char* name;
        std::function<void(json&)> edit;
        std::vector<std::string> expect;  // substrings of the message
    };
    // Broken files: FormatError.
    const std::vector<Case> malformed = {
        {"no_vocab", [](json& j) { j["model"].erase("vocab"); }, {"model.vocab", "missing"}},
        {"bad_merge", [](json& j) { j["model"]["merges"][3] = "Ġ"; }, {"model.merges[3]"}},
        {"unknown_merge",
         [](json& j) {
             j["model"]["merges"][0] = json::array({"Ġ", "not-a-token"});
         },
         {"model.merges[0]", "not-a-token"}},
        {"repeated_merge",
         [](json& j) { j["model"]["merges"].push_back(j["model"]["merges"][0]); },
         {"repeats model.merges[0]"}},
        {"bad_regex",
         [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
         {"pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile"}},
        // \C matches one byte and could end a piece inside a character.
        {"backslash_c",
         [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\C|\\s+"; },
         {"pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile"}},
        // An id far past the vocabulary would size the id tables (2^31 entries here).
        {"sparse_id",
         [](json& j) { j["added_tokens"][0]["id"] = 2147483647; },
         {"token id 2147483647", "dense"}},
    };
    for (const Case& c : malformed) {
        std::string e = load_error_after<FormatError>(c.name, c.edit);
        for (const std::string& s : c.expect)
            EXPECT_NE(e.find(s), std::string::npos) << c.name << ": " << e;
        EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << c.name << ": " << e;
    }
    // Valid settings the engine does not implement: ConfigError.
    const std::vector<Case> unsupported = {
        {"wordpiece",
         [](json& j) { j["model"]["type"] = "WordPiece"; },
         {"model.type", "'WordPiece'", "BPE"}},
        {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"}},
        {"nfkc",
         [](json& j) {
             j["normalizer"] = {{"type", "NFKC"}};
         },
         {"normalizer.type", "'NFKC'"}},
        {"lstrip",
         [](json& j) { j["added_tokens"][2]["lstrip"] = true; },
         {"added_tokens[2].lstrip"}},
        {"normalized",
         [](json& j) { j["added_tokens"][0]["normalized"] = true; },
         {"added_tokens[0].normalized"}},
        {"split_contiguous",
         [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Contiguous"; },
         {"pre_tokenizer.pretokenizers[0].behavior"}},
        {"prefix_space",
         [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
         {"pre_tokenizer.pretokenizers[1].add_prefix_space"}},
        {"bos_template",
         [](json& j) {
             j["post_processor"]["single"] =
                 json::parse(R"([{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                                            {"Sequence": {"id": "A", "type_id": 0}}])");
         },
         {"post_processor", "adds tokens"}},
        {"truncation",
         [](json& j) {
             j["truncation"] = {{"max_length", 8}};
         },
         {"truncation"}},
    };
    for (const Case& c : unsupported) {
        std::string e = load_error_after<ConfigError>(c.name, c.edit);
        for (const std::string& s : c.expect)
            EXPECT_NE(e.find(s), std::string::npos) << c.name << ": " << e;
        EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << c.name << ": " << e;
    }

    ScratchDir d("bad_sides");
    for (const char* k : {"padding_side", "truncation_side"}) {
        d.edit("tokenizer_config.json", [&](json& j) { j[k] = "middle"; });
        std::string e = error_of<ConfigError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find(std::string("tokenizer_config.json: field '") + k + "' is \"middle\""), std::string::npos)
            << e;
        d.edit("tokenizer_config.json", [&](json& j) { j.erase(k); });
    }
    d.edit("tokenizer_config.json", [](json& j) {
        j["clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"] = true;
    });
    std::string e = error_of<ConfigError>([&] { BpeTokenizer::from_dir(d.path.string()); });
    EXPECT_NE(e.find("field 'clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output'"),
              std::string::npos)
        << e;

    // No pad_token: Qwen2Tokenizer's default, <|endoftext|>; null: none; no default for other classes.
    ScratchDir n("no_pad");
    n.edit("tokenizer_config.json", [](json& j) { j.erase("pad_token"); });
    EXPECT_EQ(BpeTokenizer::from_dir(n.path.string()).pad_token_id(), reference()["pad_token_id"].get<int32_t>());
    n.edit("tokenizer_config.json", [](json& j) { j["pad_token"] = nullptr; });
    e = error_of<ConfigError>(
        [&] { BpeTokenizer::from_dir(n.path.string()).encode_padded("x", 4); });
    EXPECT_NE(e.find("tokenizer_config.json: field 'pad_token' is missing or null"), std::string::npos)
        << e;
    n.edit("tokenizer_config.json", [](json& j) {
        j.erase("pad_token");
        j["tokenizer_class"] = "PreTrainedTokenizerFast";
    });
    EXPECT_THROW(BpeTokenizer::from_dir(n.path.string()).pad_token_id(), ConfigError);

    ScratchDir p("unknown_pad");
    p.edit("tokenizer_config.json", [](json& j) { j["pad_token"] = "<pad>"; });
    e = error_of<ConfigError>([&] { BpeTokenizer::from_dir(p.path.string()); });
    EXPECT_NE(e.find("'<pad>'"), std::string::npos) << e;
}

// A split regex that matches the empty string at the end of the text (here '$') ends
// the split there; the text still round-trips.
TEST(Tokenizer, SplitRegexMatchingEmptyAtTheEnd) {
    ScratchDir d("empty_match_at_end");
    d.edit("tokenizer.json", [](json& j) {
        j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|$";
    });
    BpeTokenizer tok = BpeTokenizer::from_dir(d.path.string());
    const std::vector<int32_t> ids = tok.encode("red fox, 42");
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), "red fox, 42");
}

TEST(Tokenizer, RefusesInvalidUtf8) {
    BpeTokenizer tok = BpeTokenizer::from_dir(kDir);
    std::string e = error_of<Error>([&] { tok.encode("ok \xF0\x9F\x91 cut"); });
    EXPECT_NE(e.find("not valid UTF-8 (byte offset 3)"), std::string::npos) << e;
}

// tokenizer_config.json's added_tokens_decoder adds tokens that tokenizer.json lacks, as transformers
// does; one that gives an id or a text of tokenizer.json's to another token is refused.
TEST(Tokenizer, AddedTokensOfTheConfig) {
    const BpeTokenizer base = BpeTokenizer::from_dir(kDir);
    const int32_t next = int32_t(base.vocab_size());
    const json token = {{"content", "<|newtok|>"}, {"lstrip", false}, {"normalized", false},
                        {"rstrip", false}, {"single_word", false}, {"special", true}};
    ScratchDir d("config_added");
    d.edit("tokenizer_config.json", [&](json& j) { j["added_tokens_decoder"][std::to_string(next)] = token; });
    const BpeTokenizer tok = BpeTokenizer::from_dir(d.path.string());
    EXPECT_EQ(tok.vocab_size(), size_t(next) + 1);
    std::vector<int32_t> want = base.encode("a fox ");
    want.push_back(next);
    EXPECT_EQ(tok.encode("a fox <|newtok|>"), want);
    EXPECT_EQ(tok.decode(want, true), "a fox ");
    EXPECT_NE(base.encode("a fox <|newtok|>"), want);  // without the entry: byte-level pieces

    // Entries equal to tokenizer.json's change nothing; a clash names the field and both tokens.
    const int32_t im_end = *base.token_to_id("<|im_end|>");
    d.edit("tokenizer_config.json", [&](json& j) {
        j["added_tokens_decoder"][std::to_string(im_end)] = token;
        j["added_tokens_decoder"][std::to_string(im_end)]["content"] = "<|im_end|>";
    });
    EXPECT_EQ(BpeTokenizer::from_dir(d.path.string()).encode("x<|im_end|>"), base.encode("x<|im_end|>"));
    d.edit("tokenizer_config.json", [&](json& j) {
        j["added_tokens_decoder"][std::to_string(im_end)]["content"] = "<|other|>";
    });
    std::string e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
    EXPECT_NE(e.find("field 'added_tokens_decoder." + std::to_string(im_end) + "' is '<|other|>'"), std::string::npos)
        << e;
    EXPECT_NE(e.find("'<|im_end|>'"), std::string::npos) << e;
    d.edit("tokenizer_config.json", [&](json& j) {
        j["added_tokens_decoder"].erase(std::to_string(im_end));
        j["added_tokens_decoder"]["5"] = token;  // a vocabulary id
    });
    e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
    EXPECT_NE(e.find("added_tokens_decoder.5"), std::string::npos) << e;
    d.edit("tokenizer_config.json", [&](json& j) {
        j["added_tokens_decoder"].erase("5");
        j["added_tokens_decoder"]["x1"] = token;
    });
    e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
    EXPECT_NE(e.find("added_tokens_decoder.x1' has a key that is not a token id"), std::string::npos) << e;
}

// The folder without tokenizer.json: what it needs, and its errors name the file and the line.
TEST(Tokenizer, VocabMergesLayoutErrors) {
    {
        ScratchDir d("vm_class", kVocabMergesDir);
        d.edit("tokenizer_config.json", [](json& j) { j["tokenizer_class"] = "GPT2Tokenizer"; });
        std::string e = error_of<ConfigError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find("tokenizer_config.json: field 'tokenizer_class' is \"GPT2Tokenizer\""), std::string::npos) << e;
    }
    {
        ScratchDir d("vm_no_added", kVocabMergesDir);
        d.edit("tokenizer_config.json", [](json& j) { j.erase("added_tokens_decoder"); });
        std::string e = error_of<ConfigError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find("field 'added_tokens_decoder' is missing"), std::string::npos) << e;
    }
    {
        ScratchDir d("vm_bad_line", kVocabMergesDir);
        std::string m = read_text_file((d.path / "merges.txt").string());
        m.insert(m.find('\n') + 1, "a b c\n");  // line 2
        write_file_atomic((d.path / "merges.txt").string(), m);
        std::string e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find("merges.txt: line 2 ('a b c')"), std::string::npos) << e;
    }
    {
        ScratchDir d("vm_unknown", kVocabMergesDir);
        write_file_atomic((d.path / "merges.txt").string(), "#version: 0.2\ni n\nq zz\n");
        std::string e = error_of<FormatError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find("merges.txt: line 3 merges 'q' and 'zz'"), std::string::npos) << e;
        EXPECT_NE(e.find("vocab.json"), std::string::npos) << e;
    }
    {
        ScratchDir d("vm_no_merges", kVocabMergesDir);
        fs::remove(d.path / "merges.txt");
        std::string e = error_of<IoError>([&] { BpeTokenizer::from_dir(d.path.string()); });
        EXPECT_NE(e.find("tokenizer.json: no such file, and no vocab.json + merges.txt"), std::string::npos) << e;
    }
}
