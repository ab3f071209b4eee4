#include "pipeline/chat_template.h"

#include <algorithm>
#include <cctype>
#include <vector>

#include "core/error.h"

namespace qdit {

namespace {

// A template as a list of lines, one per output or statement tag, each a
// normalized token list: "out: '<|im_start|>' + message.role + ..." or
// "stmt: for message in messages". Literal text becomes an output of one
// string; adjacent outputs are joined with + and adjacent string literals
// folded, so the same rendering spelled differently gives the same lines.
using Program = std::vector<std::string>;

struct Token {
    bool is_string = false;
    std::string text;  // the decoded string, or the token as written
};

struct Tag {
    enum Kind { Text, Output, Statement, Comment } kind;
    std::string body;
    bool trim_before = false, keep_before = false, trim_after = false;
};

[[noreturn]] void malformed(const std::string& where, const std::string& what) {
    raise<ConfigError>("{}: the chat template cannot be read: {}", where, what);
}

// Text and tags, with whitespace control applied as transformers renders
// templates (trim_blocks and lstrip_blocks on, '-' markers).
std::vector<Tag> split_tags(const std::string& t, const std::string& where) {
    std::vector<Tag> tags;
    std::string text;
    size_t i = 0;
    while (i < t.size()) {
        const bool open = t[i] == '{' && i + 1 < t.size() &&
                          (t[i + 1] == '{' || t[i + 1] == '%' || t[i + 1] == '#');
        if (!open) {
            text += t[i++];
            continue;
        }
        tags.push_back({Tag::Text, text});
        text.clear();
        const char kind = t[i + 1], close = kind == '{' ? '}' : kind;
        Tag tag{kind == '{' ? Tag::Output : kind == '%' ? Tag::Statement : Tag::Comment, ""};
        size_t j = i + 2;
        if (j < t.size() && (t[j] == '-' || t[j] == '+')) {
            (t[j] == '-' ? tag.trim_before : tag.keep_before) = true;
            ++j;
        }
        char quote = 0;
        bool closed = false;
        for (; j < t.size(); ++j) {
            const char c = t[j];
            if (quote) {
                tag.body += c;
                if (c == '\\' && j + 1 < t.size()) tag.body += t[++j];
                else if (c == quote) quote = 0;
            } else if (kind != '#' && (c == '\'' || c == '"')) {
                quote = c;
                tag.body += c;
            } else if (c == close && j + 1 < t.size() && t[j + 1] == '}') {
                closed = true;
                break;
            } else {
                tag.body += c;
            }
        }
        if (!closed) malformed(where, fmt::format("a tag opened at offset {} is not closed", i));
        if (!tag.body.empty() && (tag.body.back() == '-' || tag.body.back() == '+')) {
            tag.trim_after = tag.body.back() == '-';
            tag.body.pop_back();
        }
        tags.push_back(tag);
        i = j + 2;
    }
    tags.push_back({Tag::Text, text});

    // Whitespace before a tag first ('-', lstrip_blocks: decided on the text
    // as written), then after it ('-', trim_blocks). Tags alternate with texts.
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    auto is_block = [](const Tag& t) { return t.kind == Tag::Statement || t.kind == Tag::Comment; };
    for (size_t k = 1; k + 1 < tags.size(); k += 2) {
        std::string& before = tags[k - 1].body;
        if (tags[k].trim_before) {
            while (!before.empty() && is_space(before.back())) before.pop_back();
        } else if (is_block(tags[k]) && !tags[k].keep_before) {
            const size_t line = before.find_last_of('\n');
            const size_t start = line == std::string::npos ? 0 : line + 1;
            const bool blank = before.find_first_not_of(" \t", start) == std::string::npos;
            if (blank && (line != std::string::npos || k == 1)) before.resize(start);
        }
    }
    for (size_t k = 1; k + 1 < tags.size(); k += 2) {
        std::string& after = tags[k + 1].body;
        if (tags[k].trim_after) {
            size_t n = 0;
            while (n < after.size() && is_space(after[n])) ++n;
            after.erase(0, n);
        } else if (is_block(tags[k]) && !after.empty() && after[0] == '\n') {
            after.erase(0, 1);
        }
    }
    return tags;
}

std::vector<Token> tokenize(const std::string& s, const std::string& where) {
    std::vector<Token> out;
    size_t i = 0;
    while (i < s.size()) {
        const char c = s[i];
        if (std::isspace(static_cast<unsigned char>(c))) {
            ++i;
        } else if (c == '\'' || c == '"') {
            Token t{true, ""};
            for (++i; i < s.size() && s[i] != c; ++i) {
                if (s[i] != '\\' || i + 1 >= s.size()) {
                    t.text += s[i];
                    continue;
                }
                const char e = s[++i];
                t.text += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            }
            if (i >= s.size()) malformed(where, "a string is not closed");
            ++i;
            out.push_back(t);
        } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i;
            while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
            out.push_back({false, s.substr(i, j - i)});
            i = j;
        } else {
            const std::string two = s.substr(i, 2);
            const bool pair = two == "==" || two == "!=" || two == "<=" || two == ">=" ||
                              two == "//" || two == "**";
            out.push_back({false, pair ? two : std::string(1, c == '~' ? '+' : c)});
            i += pair ? 2 : 1;
        }
    }
    // x['name'] and x["name"] are x.name.
    for (size_t k = 0; k + 2 < out.size(); ++k) {
        const bool subscript = k > 0 && !out[k - 1].is_string &&
                               (std::isalnum(static_cast<unsigned char>(out[k - 1].text[0])) ||
                                out[k - 1].text == "_" || out[k - 1].text == ")" || out[k - 1].text == "]");
        if (subscript && !out[k].is_string && out[k].text == "[" && out[k + 1].is_string &&
            !out[k + 2].is_string && out[k + 2].text == "]" && !out[k + 1].text.empty() &&
            out[k + 1].text.find_first_not_of("abcdefghijklmnopqrstuvwxyz_0123456789") ==
                std::string::npos) {
            out[k] = {false, "."};
            out[k + 1].is_string = false;
            out.erase(out.begin() + long(k) + 2);
        }
    }
    return out;
}

bool is_op(const Token& t, const char* op) { return !t.is_string && t.text == op; }

// Adjacent string literals joined by + become one, where both sides of the
// pair are the ends of the expression or another +.
void fold_strings(std::vector<Token>& ts) {
    for (size_t k = 0; k + 2 < ts.size();) {
        const bool left_free = k == 0 || is_op(ts[k - 1], "+");
        const bool right_free = k + 3 == ts.size() || is_op(ts[k + 3], "+");
        if (ts[k].is_string && is_op(ts[k + 1], "+") && ts[k + 2].is_string && left_free && right_free) {
            ts[k].text += ts[k + 2].text;
            ts.erase(ts.begin() + long(k) + 1, ts.begin() + long(k) + 3);
        } else {
            ++k;
        }
    }
}

std::string spell(const std::vector<Token>& ts) {
    std::string s;
    for (const Token& t : ts) {
        if (!s.empty()) s += ' ';
        if (!t.is_string) {
            s += t.text;
            continue;
        }
        s += '\'';
        for (char c : t.text) s += c == '\n' ? std::string("\\n") : c == '\'' ? std::string("\\'") : std::string(1, c);
        s += '\'';
    }
    return s;
}

Program normalize(const std::string& tpl, const std::string& where) {
    std::vector<std::vector<Token>> outputs_and_statements;
    std::vector<bool> is_output;
    for (const Tag& tag : split_tags(tpl, where)) {
        std::vector<Token> ts;
        if (tag.kind == Tag::Comment || (tag.kind == Tag::Text && tag.body.empty())) continue;
        if (tag.kind == Tag::Text)
            ts.push_back({true, tag.body});
        else
            ts = tokenize(tag.body, where);
        const bool output = tag.kind != Tag::Statement;
        if (output && !is_output.empty() && is_output.back()) {
            std::vector<Token>& prev = outputs_and_statements.back();
            prev.push_back({false, "+"});
            prev.insert(prev.end(), ts.begin(), ts.end());
        } else {
            outputs_and_statements.push_back(ts);
            is_output.push_back(output);
        }
    }
    // The loop variable over messages is called "message".
    std::string loop_var;
    for (size_t k = 0; k < outputs_and_statements.size(); ++k) {
        std::vector<Token>& ts = outputs_and_statements[k];
        if (!is_output[k] && ts.size() == 4 && ts[0].text == "for" && ts[2].text == "in" &&
            ts[3].text == "messages" && !ts[1].is_string)
            loop_var = ts[1].text;
        if (!loop_var.empty() && loop_var != "message")
            for (Token& t : ts)
                if (!t.is_string && t.text == loop_var) t.text = "message";
    }
    Program p;
    for (size_t k = 0; k < outputs_and_statements.size(); ++k) {
        fold_strings(outputs_and_statements[k]);
        p.push_back((is_output[k] ? "out: " : "stmt: ") + spell(outputs_and_statements[k]));
    }
    // The "add_generation_prompt defaults to false" preamble renders nothing.
    const Program preamble = {"stmt: if not add_generation_prompt is defined",
                              "stmt: set add_generation_prompt = false", "stmt: endif"};
    if (p.size() >= 3 && std::equal(preamble.begin(), preamble.end(), p.begin()))
        p.erase(p.begin(), p.begin() + 3);
    return p;
}

bool ends_with(const Program& p, const Program& tail) {
    return p.size() >= tail.size() && std::equal(tail.begin(), tail.end(), p.end() - long(tail.size()));
}

bool contains(const Program& p, const Program& lines) {
    for (const std::string& l : lines)
        if (std::find(p.begin(), p.end(), l) != p.end()) return true;
    return false;
}

// Qwen3's template (the one Z-Image's text encoder ships with): its user turn
// (content is message.content when that is a string) and its generation
// prompt, which adds an empty think block only when enable_thinking is false.
bool is_qwen3(const Program& p) {
    const Program turns = {
        normalize("{{ '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}", "")[0],
        normalize("{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
                  "")[0]};
    const Program generation = normalize(R"({%- if add_generation_prompt %}
            {{- '<|im_start|>assistant\n' }}
            {%- if enable_thinking is defined and enable_thinking is false %}
                {{- '<think>\n\n</think>\n\n' }}
            {%- endif %}
        {%- endif %})",
                                         "");
    return contains(p, turns) && ends_with(p, generation);
}

// Plain ChatML: every message as <|im_start|>role\ncontent<|im_end|>\n, then
// the assistant's opening after the loop or on its last turn.
bool is_chatml(const Program& p) {
    const char* forms[] = {
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{% if loop.last and add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
        "{% endfor %}",
    };
    for (const char* f : forms)
        if (p == normalize(f, "")) return true;
    return false;
}

}  // namespace

std::string render_zimage_prompt(const std::string& chat_template, const std::string& where,
                                 std::string_view prompt) {
    if (chat_template.empty())
        raise<ConfigError>("{}: no chat template ('chat_template' in tokenizer_config.json or "
                           "chat_template.jinja beside it)",
                           where);
    const Program p = normalize(chat_template, where);
    if (!is_qwen3(p) && !is_chatml(p))
        raise<ConfigError>(
            "{}: the chat template does not render a user turn as Qwen3's does "
            "('<|im_start|>user\\n' prompt '<|im_end|>\\n<|im_start|>assistant\\n'); accepted are "
            "Qwen3's template and plain ChatML templates (docs/usage.md)",
            where);
    std::string s = "<|im_start|>user\n";
    s.append(prompt);
    s += "<|im_end|>\n<|im_start|>assistant\n";
    return s;
}

}  // namespace qdit
