// Fuzz target: tokenizer.json as arbitrary text (vocabulary, merges, added
// tokens, normalizer, split regex, ...). Loading must either give a tokenizer
// that encodes and decodes a fixed text, or throw a qdit::Error.
#include "fuzz_util.h"
#include "models/text/tokenizer.h"

using namespace qdit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static fuzz::MemFile file;
    file.write(data, size);
    fuzz::only_qdit_errors([&] {
        const text::BpeTokenizer tok = text::BpeTokenizer::from_file(file.path());
        const char* sample =
            "Hello, world! 42 caf\xC3\xA9 e\xCC\x81 \xE4\xB8\xAD\xE6\x96\x87\n\t<|im_end|>  end";
        (void)tok.decode(tok.encode(sample), true);
        (void)tok.token_to_id("<|im_end|>");
        (void)tok.vocab_size();
    });
    return 0;
}
