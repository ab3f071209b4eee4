#include "pipeline/qwen_image_prompt.h"

#include <algorithm>

#include "core/error.h"
#include "ops/context.h"

namespace qdit {

std::string render_qwen_image_prompt(std::string_view prompt) {
    std::string s;
    s.reserve(kQwenImagePromptPrefix.size() + prompt.size() + kQwenImagePromptSuffix.size());
    s.append(kQwenImagePromptPrefix).append(prompt).append(kQwenImagePromptSuffix);
    return s;
}

QwenImageTokens tokenize_qwen_image_prompts(const text::BpeTokenizer& tokenizer,
                                            const std::vector<std::string>& prompts) {
    if (prompts.empty()) raise<UsageError>("Qwen-Image prompt encoding: no prompt given");
    const size_t max_length = size_t(kQwenImageTokenizerMaxLength + kQwenImageDropTokens);
    std::vector<std::vector<int32_t>> rows;
    size_t len = 0;
    for (const std::string& p : prompts) {
        std::vector<int32_t> ids = tokenizer.encode_truncated(render_qwen_image_prompt(p), max_length);
        len = std::max(len, ids.size());
        rows.push_back(std::move(ids));
    }
    QwenImageTokens t;
    t.batch = int64_t(prompts.size());
    t.len = int64_t(len);
    const int32_t pad = tokenizer.pad_token_id();
    for (const std::vector<int32_t>& r : rows) {
        t.ids.insert(t.ids.end(), r.begin(), r.end());
        t.ids.insert(t.ids.end(), len - r.size(), pad);
        t.mask.insert(t.mask.end(), r.size(), 1);
        t.mask.insert(t.mask.end(), len - r.size(), 0);
    }
    return t;
}

QwenImagePromptEmbeds encode_qwen_image_prompts(const text::Qwen25VLTextModel& encoder, const QwenImageTokens& tokens,
                                                int64_t max_sequence_length, bool on_device) {
    if (max_sequence_length < 1 || max_sequence_length > kQwenImageMaxSequenceLength)
        raise<UsageError>("max_sequence_length is {}; it must be between 1 and {}", max_sequence_length,
                          kQwenImageMaxSequenceLength);
    const int64_t B = tokens.batch, T = tokens.len, drop = kQwenImageDropTokens;
    if (B < 1 || T < 1 || tokens.ids.size() != size_t(B * T) || tokens.mask.size() != tokens.ids.size())
        raise<ShapeError>("Qwen-Image prompt encoding: {} ids and {} mask values for {} prompts of {} tokens",
                          tokens.ids.size(), tokens.mask.size(), B, T);
    const ops::Context& ctx = encoder.context();
    // Each prompt's hidden_states[-1] over its valid tokens, then the rows past the dropped prefix.
    std::vector<Tensor> states(static_cast<size_t>(B));
    std::vector<int64_t> keep(static_cast<size_t>(B), 0);
    int64_t longest = 0;
    for (int64_t b = 0; b < B; ++b) {
        const std::vector<int32_t> ids(tokens.ids.begin() + b * T, tokens.ids.begin() + (b + 1) * T);
        const std::vector<uint8_t> mask(tokens.mask.begin() + b * T, tokens.mask.begin() + (b + 1) * T);
        states[size_t(b)] = encoder.encode_device(ids, mask, 1);
        keep[size_t(b)] = states[size_t(b)].size(0) - drop;
        if (keep[size_t(b)] <= 0)
            raise<ShapeError>("Qwen-Image prompt encoding: prompt {} has {} tokens with its template; the pipeline "
                              "drops the first {}, which leaves none (is the tokenizer Qwen2's?)",
                              b, states[size_t(b)].size(0), drop);
        longest = std::max(longest, keep[size_t(b)]);
    }
    const int64_t L = std::min(longest, max_sequence_length), D = encoder.config().hidden_size;
    Tensor embeds = ops::zeros({B * L, D}, encoder.compute_dtype(), ctx);
    Tensor mask = Tensor::zeros({B, L}, DType::U8);
    bool all_ones = true;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = std::min(keep[size_t(b)], L);
        ops::copy_rows(embeds, b * L, states[size_t(b)], drop, n, ctx);
        std::fill(mask.data<uint8_t>() + b * L, mask.data<uint8_t>() + b * L + n, uint8_t(1));
        all_ones = all_ones && n == L;
    }
    states.clear();
    QwenImagePromptEmbeds r;
    r.embeds = (on_device ? embeds : ops::to_host(embeds, ctx)).view({B, L, D});
    if (!all_ones) r.mask = mask;
    return r;
}

QwenImagePromptEmbeds encode_qwen_image_prompts(const text::Qwen25VLTextModel& encoder,
                                                const text::BpeTokenizer& tokenizer,
                                                const std::vector<std::string>& prompts,
                                                int64_t max_sequence_length, bool on_device) {
    if (max_sequence_length < 1 || max_sequence_length > kQwenImageMaxSequenceLength)
        raise<UsageError>("max_sequence_length is {}; it must be between 1 and {}", max_sequence_length,
                          kQwenImageMaxSequenceLength);
    return encode_qwen_image_prompts(encoder, tokenize_qwen_image_prompts(tokenizer, prompts), max_sequence_length,
                                     on_device);
}

}  // namespace qdit
