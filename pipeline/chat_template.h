// The prompt string ZImagePipeline builds from the tokenizer's chat template:
//   apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
//                       add_generation_prompt=True, enable_thinking=True)
// which for the templates Z-Image's text encoder knows is
//   "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n".
//
// There is no Jinja engine: a template is accepted when it is known to
// render that string, after normalizing how it is spelled (whitespace and
// its control markers as transformers renders them, single or double quotes,
// message.role or message['role'], + or ~, one output tag or several,
// literal text or string expressions, the loop variable's name, comments).
// The accepted forms (docs/usage.md):
//   - Qwen3's template: its user turn, and a generation prompt that opens
//     <think> only when enable_thinking is false;
//   - plain ChatML: every message as '<|im_start|>' role '\n' content
//     '<|im_end|>\n', then '<|im_start|>assistant\n' when
//     add_generation_prompt, optionally after the
//     "if not add_generation_prompt is defined / set it false" preamble.
// Anything else (a default system prompt, a generation prompt that opens
// <think>, another turn format) is a ConfigError naming the template's file.
#pragma once
#include <string>
#include <string_view>

namespace qdit {

// `chat_template` is the template text as loaded from `where` (named in
// messages); an empty one is a ConfigError (no template).
std::string render_zimage_prompt(const std::string& chat_template, const std::string& where,
                                 std::string_view prompt);

}  // namespace qdit
