// Command-line parsing for the flashmask tool: a table of options per command, strict value
// parsing, and one exception type (UsageError) for every bad argument. The tool turns a
// UsageError into one line on stderr and exit status 2.
#pragma once

#include <charconv>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace flashmask::cli {

// A bad command line. The message names the option, what was given and what was expected.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct OptionSpec {
    std::string name;        // without the leading "--"
    std::string value_name;  // e.g. "N"; empty for a flag that takes no value
    std::string help;
};

// The options of one command, parsed from `--name VALUE`, `--name=VALUE` and `--flag`.
// Unknown options, missing values, repeated options and positional arguments are refused.
class ParsedArgs {
public:
    ParsedArgs(const std::vector<OptionSpec>& specs, const std::vector<std::string>& args) {
        for (std::size_t i = 0; i < args.size(); ++i) {
            const std::string& arg = args[i];
            if (arg.size() < 3 || arg.compare(0, 2, "--") != 0)
                throw UsageError("unexpected argument '" + arg + "' (options start with --; see --help)");
            std::string name = arg.substr(2);
            std::optional<std::string> inline_value;
            if (const auto eq = name.find('='); eq != std::string::npos) {
                inline_value = name.substr(eq + 1);
                name.resize(eq);
            }
            const OptionSpec* spec = find(specs, name);
            if (!spec) throw UsageError("unknown option '--" + name + "' (see --help)");
            if (values_.count(name)) throw UsageError("option '--" + name + "' given more than once");
            if (spec->value_name.empty()) {
                if (inline_value) throw UsageError("option '--" + name + "' takes no value");
                values_[name] = "";
            } else if (inline_value) {
                values_[name] = *inline_value;
            } else {
                if (i + 1 >= args.size())
                    throw UsageError("option '--" + name + "' needs a value (" + spec->value_name + ")");
                values_[name] = args[++i];
            }
        }
    }

    bool has(const std::string& name) const { return values_.count(name) != 0; }

    std::optional<std::string> text(const std::string& name) const {
        const auto it = values_.find(name);
        if (it == values_.end()) return std::nullopt;
        return it->second;
    }

    std::string required_text(const std::string& name) const {
        const auto value = text(name);
        if (!value) throw UsageError("option '--" + name + "' is required (see --help)");
        return *value;
    }

    // An integer in [min, max]; `fallback` when the option is absent.
    int64_t integer(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
        const auto value = text(name);
        return value ? parse_integer(name, *value, min, max) : fallback;
    }

    // One of `choices`; `fallback` when absent.
    std::string choice(const std::string& name, const std::string& fallback,
                       const std::vector<std::string>& choices) const {
        const auto value = text(name);
        if (!value) return fallback;
        for (const auto& c : choices)
            if (c == *value) return c;
        throw UsageError("--" + name + ": unknown value '" + *value + "' (expected one of: " + join(choices, ", ") + ")");
    }

    static int64_t parse_integer(const std::string& name, std::string_view text, int64_t min, int64_t max) {
        int64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || ptr != end)
            throw UsageError("--" + name + ": expected an integer, got '" + std::string(text) + "'");
        if (value < min || value > max)
            throw UsageError("--" + name + ": expected an integer in [" + std::to_string(min) + ", " +
                             std::to_string(max) + "], got " + std::string(text));
        return value;
    }

    static uint64_t parse_unsigned(const std::string& name, std::string_view text) {
        uint64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || ptr != end)
            throw UsageError("--" + name + ": expected a non-negative integer below 2^64, got '" + std::string(text) + "'");
        return value;
    }

    static std::string join(const std::vector<std::string>& items, const std::string& separator) {
        std::string out;
        for (std::size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
        return out;
    }

private:
    static const OptionSpec* find(const std::vector<OptionSpec>& specs, const std::string& name) {
        for (const auto& spec : specs)
            if (spec.name == name) return &spec;
        return nullptr;
    }

    std::map<std::string, std::string> values_;
};

// "  --seqlen N          query sequence length ..." lines for a command's --help.
inline std::string options_help(const std::vector<OptionSpec>& specs) {
    constexpr std::size_t kNameColumn = 26;  // wide enough for "--device auto|cpu|cuda"
    std::string out;
    for (const auto& spec : specs) {
        std::string left = "  --" + spec.name + (spec.value_name.empty() ? "" : " " + spec.value_name);
        if (left.size() + 2 > kNameColumn) {
            out += left + "\n" + std::string(kNameColumn, ' ');
        } else {
            out += left + std::string(kNameColumn - left.size(), ' ');
        }
        out += spec.help + "\n";
    }
    return out;
}

}  // namespace flashmask::cli
