// Qwen-Image's prompt encoding, as diffusers' QwenImagePipeline.encode_prompt does it (diffusers
// 0.42.1, _get_qwen_prompt_embeds):
//   1. each prompt is put in the fixed template (no chat template of the tokenizer is used):
//      "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture,
//      quantity, text, spatial relationships of the objects and background:<|im_end|>\n
//      <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";
//   2. tokenized with padding to the longest prompt and truncation at 1024 + 34 tokens (on the
//      tokenizer's truncation_side, the end by default);
//   3. hidden_states[-1] of the Qwen2.5-VL language model (the final norm's output);
//   4. each prompt's valid rows, minus the first 34 (the system block and "<|im_start|>user\n"
//      with Qwen2's tokenizer; 34 whatever the tokenizer), zero-padded to the longest with a 0/1 mask;
//   5. cut to max_sequence_length (the pipeline's default 512, at most 1024) columns; a mask of all
//      ones is dropped (diffusers: None).
// The negative prompt is encoded the same way, on its own.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "models/text/qwen25vl.h"
#include "models/text/tokenizer.h"

namespace qdit {

// QwenImagePipeline's prompt_template_encode around {prompt}, prompt_template_encode_start_idx and
// tokenizer_max_length, and the __call__ default and the limit of max_sequence_length.
inline constexpr std::string_view kQwenImagePromptPrefix =
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n";
inline constexpr std::string_view kQwenImagePromptSuffix = "<|im_end|>\n<|im_start|>assistant\n";
inline constexpr int64_t kQwenImageDropTokens = 34;
inline constexpr int64_t kQwenImageTokenizerMaxLength = 1024;
inline constexpr int64_t kQwenImageDefaultMaxSequenceLength = 512;
inline constexpr int64_t kQwenImageMaxSequenceLength = 1024;

// The template with `prompt` in it.
std::string render_qwen_image_prompt(std::string_view prompt);

// Step 2: ids and mask [batch, len] row-major, padded on the right with the tokenizer's pad token
// whatever its padding_side: step 3 runs each prompt over its valid tokens alone, so the side of the
// padding does not change the embeddings (transformers' Qwen2.5-VL places a left-padded prompt's
// tokens from position 0 too, and masks the padding).
struct QwenImageTokens {
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    int64_t batch = 0, len = 0;
};
QwenImageTokens tokenize_qwen_image_prompts(const text::BpeTokenizer& tokenizer,
                                            const std::vector<std::string>& prompts);

struct QwenImagePromptEmbeds {
    Tensor embeds;  // [batch, L, hidden] in the encoder's compute dtype, on the host or the encoder's device
    Tensor mask;    // U8 [batch, L] on the host; undefined when every entry is 1
};

// Steps 3-5 on tokens (each prompt runs alone over its valid tokens, which gives the padded batch's
// rows: the padding is masked, causal attention). `on_device` leaves the embeddings on the encoder's
// device. UsageError for a max_sequence_length outside 1..1024; ShapeError when a prompt keeps no
// token after the 34 dropped ones (only a tokenizer other than Qwen2's can make one that short).
QwenImagePromptEmbeds encode_qwen_image_prompts(const text::Qwen25VLTextModel& encoder, const QwenImageTokens& tokens,
                                                int64_t max_sequence_length = kQwenImageDefaultMaxSequenceLength,
                                                bool on_device = false);
// Steps 1-5.
QwenImagePromptEmbeds encode_qwen_image_prompts(const text::Qwen25VLTextModel& encoder,
                                                const text::BpeTokenizer& tokenizer,
                                                const std::vector<std::string>& prompts,
                                                int64_t max_sequence_length = kQwenImageDefaultMaxSequenceLength,
                                                bool on_device = false);

}  // namespace qdit
