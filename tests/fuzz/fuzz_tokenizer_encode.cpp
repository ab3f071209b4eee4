// Fuzz target: `encode` of arbitrary bytes with the committed tiny Qwen
// tokenizer. Invalid UTF-8 must be a qdit::Error; valid text must encode to
// known ids, pad to the asked length, and (ASCII, which NFC leaves alone)
// decode back to itself.
#include <algorithm>
#include <string_view>

#include <fmt/format.h>

#include "fuzz_util.h"
#include "models/text/tokenizer.h"
#include "pipeline/chat_template.h"

using namespace qdit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const text::BpeTokenizer tok =
        text::BpeTokenizer::from_dir(QDIT_TEST_DATA "/text/tokenizer");
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    fuzz::only_qdit_errors([&] {
        const std::vector<int32_t> ids = tok.encode(input);
        for (int32_t id : ids)
            if (id < 0 || size_t(id) >= tok.vocab_size())
                fuzz::property_failed(fmt::format("encode gave id {} outside the vocabulary", id));
        const std::string back = tok.decode(ids);
        const bool ascii = std::all_of(input.begin(), input.end(),
                                       [](char c) { return static_cast<unsigned char>(c) < 0x80; });
        if (ascii && back != input)
            fuzz::property_failed(fmt::format("decode(encode(text)) is '{}', not the text", back));
        const text::PaddedTokens padded = tok.encode_padded(input, 8);
        if (padded.ids.size() != 8 || padded.attention_mask.size() != 8)
            fuzz::property_failed("encode_padded did not give 8 entries");
        (void)tok.encode(
            render_zimage_prompt(tok.chat_template(), tok.chat_template_path(), input));
    });
    return 0;
}
