// The chat templates the Z-Image prompt accepts (pipeline/chat_template.h):
// each accepted form renders, as transformers' apply_chat_template does for a
// lone user message with add_generation_prompt, the Qwen3 user turn; templates
// that render something else are refused with the file named.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "io/files.h"
#include "pipeline/chat_template.h"
#include "tests/expect_error.h"

using namespace qdit;

namespace {

const std::string kQwen3 = read_text_file(std::string(QDIT_TEST_DATA) + "/text/tokenizer/chat_template.jinja");
const std::string kTurn = "<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n";

std::string render(const std::string& tpl) { return render_zimage_prompt(tpl, "tpl/chat_template.jinja", "a red fox"); }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
    return s;
}

}  // namespace

TEST(ChatTemplate, Qwen3AsShipped) {
    ASSERT_NE(kQwen3.find("enable_thinking"), std::string::npos);
    EXPECT_EQ(render(kQwen3), kTurn);
}

TEST(ChatTemplate, Qwen3RespelledByAnotherExporter) {
    // Subscripts for attributes, ~ for +, double quotes, no indentation.
    std::string t = replace_all(kQwen3, "message.role", "message['role']");
    t = replace_all(t, "'<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n'",
                    "\"<|im_start|>\" ~ message[\"role\"] ~ \"\\n\" ~ content ~ \"<|im_end|>\\n\"");
    t = replace_all(t, "\n    ", "\n");
    ASSERT_NE(t, kQwen3);
    EXPECT_EQ(render(t), kTurn);
}

TEST(ChatTemplate, PlainChatMLInEachSpelling) {
    const std::vector<std::pair<const char*, std::string>> forms = {
        // transformers' former default ChatML template
        {"one line, subscripts",
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% endif %}"},
        {"indented, trim markers, ~",
         "{%- for message in messages %}\n    {{- '<|im_start|>' ~ message.role ~ '\\n' ~ message.content ~ "
         "'<|im_end|>\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' "
         "}}\n{%- endif %}\n"},
        {"literal text, another loop variable, trim_blocks newlines",
         "{% for m in messages %}\n<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\n"
         "{% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}"},
        {"several output tags, double quotes, a comment",
         "{# ChatML #}{% for message in messages %}{{ \"<|im_start|>\" }}{{ message.role }}{{ \"\\n\" }}"
         "{{ message.content }}{{ \"<|im_end|>\" + \"\\n\" }}{% endfor %}"
         "{% if add_generation_prompt %}{{ \"<|im_start|>assistant\\n\" }}{% endif %}"},
        {"add_generation_prompt preamble",
         "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% endif %}"},
        {"generation prompt on the last turn",
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n'}}{% if loop.last and add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% endif %}{% endfor %}"},
        {"lstrip_blocks: indented block tags, a line kept with {%+",
         "{% for message in messages %}\n  {{- '<|im_start|>' + message.role + '\\n' + message.content + "
         "'<|im_end|>\\n' -}}\n  {% endfor %}\n  {% if add_generation_prompt %}\n<|im_start|>assistant\n"
         "  {% endif %}"},
    };
    for (const auto& [name, tpl] : forms) EXPECT_EQ(render(tpl), kTurn) << name;
}

TEST(ChatTemplate, TemplatesThatRenderAnotherTurnAreRefused) {
    const std::vector<std::pair<const char*, std::string>> refused = {
        {"a generation prompt that opens <think> (Qwen3 thinking models)",
         replace_all(kQwen3, "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}")},
        {"a default system prompt (Qwen2.5)",
         "{%- for message in messages %}{%- if loop.first and message.role != 'system' %}"
         "{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
         "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
         "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"},
        {"no newline after the role",
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + message['content'] + "
         "'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
        {"a blank line the literal text keeps (no trim after the output tag)",
         "{% for m in messages %}\n<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"},
        {"the content trimmed",
         "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + "
         "'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
        {"Llama 3's turns",
         "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
         "message['content'] + '<|eot_id|>' }}{% endfor %}"},
    };
    for (const auto& [name, tpl] : refused) {
        const std::string e = testutil::error_of<ConfigError>([&] { render(tpl); });
        EXPECT_NE(e.find("tpl/chat_template.jinja: the chat template does not render a user turn as Qwen3's"),
                  std::string::npos)
            << name << ": " << e;
    }
}

TEST(ChatTemplate, MissingOrUnreadableTemplate) {
    std::string e = testutil::error_of<ConfigError>([] { render_zimage_prompt("", "tok", "x"); });
    EXPECT_NE(e.find("tok: no chat template"), std::string::npos) << e;
    e = testutil::error_of<ConfigError>([] { render("{% for message in messages %}{{ message.role "); });
    EXPECT_NE(e.find("tpl/chat_template.jinja: the chat template cannot be read"), std::string::npos) << e;
    e = testutil::error_of<ConfigError>([] { render("{{ 'unclosed }}"); });
    EXPECT_NE(e.find("cannot be read"), std::string::npos) << e;
}
