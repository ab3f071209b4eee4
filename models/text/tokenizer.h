// Byte-level BPE tokenizer that reads a Hugging Face tokenizer.json of the
// Qwen2 / Qwen3 kind (or a Qwen2Tokenizer's vocab.json + merges.txt) and gives
// the same token ids as transformers' Qwen2Tokenizer (the `tokenizers` backend):
//   added tokens (special or not) are cut out first, leftmost-longest;
//   the text between them is NFC-normalized, split by the file's Split regex
//   (Isolated), mapped byte → unicode (GPT-2 table) and merged by BPE rank.
// Anything else a tokenizer.json can say (other models, normalizers,
// pre-tokenizers, post-processors, added-token flags) is refused on load with
// an error naming the file and the field, rather than silently tokenized
// differently.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qdit::text {

struct PaddedTokens {
    std::vector<int32_t> ids;             // exactly max_length entries
    std::vector<int32_t> attention_mask;  // 1 for real tokens, 0 for padding
};

class BpeTokenizer {
public:
    // Loads a tokenizer folder as save_pretrained writes it: tokenizer.json, or
    // (a Qwen2Tokenizer saved without it) vocab.json + merges.txt with the
    // class's own pipeline; tokenizer_config.json (pad token, padding and
    // truncation sides, the added tokens of added_tokens_decoder) and the chat template from
    // tokenizer_config.json or chat_template.jinja.
    static BpeTokenizer from_dir(const std::string& dir);

    // Loads tokenizer.json alone: encode/decode work, but there is no pad
    // token and no chat template.
    static BpeTokenizer from_file(const std::string& tokenizer_json_path);

    BpeTokenizer(BpeTokenizer&&) noexcept;
    BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
    ~BpeTokenizer();

    // Token ids of `text` (valid UTF-8), no special tokens added; added-token
    // literals in the text ("<|im_end|>") become their ids, as in transformers.
    std::vector<int32_t> encode(std::string_view text) const;

    // encode(text) cut to at most max_length tokens from tokenizer_config.json's
    // truncation_side (the end unless it says "left").
    std::vector<int32_t> encode_truncated(std::string_view text, size_t max_length) const;

    // What `tokenizer(text, padding="max_length", max_length=n,
    // truncation=True)` returns: encode_truncated, then padded to n tokens
    // with the pad token on tokenizer_config.json's padding_side (the right
    // unless it says "left").
    PaddedTokens encode_padded(std::string_view text, size_t max_length) const;

    // Text of `ids`. Byte sequences that are not valid UTF-8 (a cut inside a
    // character) become U+FFFD, as in transformers. Throws on unknown ids.
    std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

    // Id of a vocabulary or added token given in its stored form (byte-level
    // characters for vocabulary tokens, e.g. "Ġthe").
    std::optional<int32_t> token_to_id(std::string_view token) const;

    int32_t pad_token_id() const;  // ConfigError when the folder names no pad token
    size_t vocab_size() const;     // largest id + 1 (vocabulary and added tokens)

    // The chat template as loaded (tokenizer_config.json "chat_template", else
    // chat_template.jinja; empty when neither) and the file it came from.
    // Rendering it is the pipeline's business (pipeline/chat_template.h).
    const std::string& chat_template() const;
    const std::string& chat_template_path() const;

private:
    struct Impl;
    explicit BpeTokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace qdit::text
