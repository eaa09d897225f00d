// Formatting for the flashmask tool: printf-style strings, thousands separators, durations and
// a minimal JSON writer for --json.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace flashmask::cli {

inline std::string format(const char* fmt, auto... args) {
    char buffer[512];
    std::snprintf(buffer, sizeof buffer, fmt, args...);
    return buffer;
}

// 12345678 -> "12,345,678"
inline std::string with_commas(int64_t value) {
    std::string digits = std::to_string(value < 0 ? -value : value), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return value < 0 ? "-" + out : out;
}

inline std::string format_seconds(double seconds) {
    if (seconds < 1e-3) return format("%.1f us", seconds * 1e6);
    if (seconds < 1.0) return format("%.3f ms", seconds * 1e3);
    return format("%.3f s", seconds);
}

inline std::string join_numbers(const std::vector<int64_t>& values) {
    std::string out;
    for (std::size_t i = 0; i < values.size(); ++i) out += (i ? " " : "") + std::to_string(values[i]);
    return out;
}

inline std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') { out += "\\n"; continue; }
        out += c;
    }
    return out + "\"";
}

inline std::string json_number(double value) {
    if (!std::isfinite(value)) return "null";
    return format("%.6g", value);
}

// A flat, ordered JSON object; values are already JSON text.
struct JsonObject {
    std::vector<std::pair<std::string, std::string>> fields;
    JsonObject& add(const std::string& key, const std::string& json) { fields.emplace_back(key, json); return *this; }
    JsonObject& text(const std::string& key, const std::string& value) { return add(key, json_string(value)); }
    JsonObject& number(const std::string& key, double value) { return add(key, json_number(value)); }
    JsonObject& integer(const std::string& key, int64_t value) { return add(key, std::to_string(value)); }
    JsonObject& boolean(const std::string& key, bool value) { return add(key, value ? "true" : "false"); }
    std::string str() const {
        std::string out = "{";
        for (std::size_t i = 0; i < fields.size(); ++i)
            out += (i ? ", " : "") + json_string(fields[i].first) + ": " + fields[i].second;
        return out + "}";
    }
};

inline std::string json_array(const std::vector<std::string>& items) {
    std::string out = "[";
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
    return out + "]";
}

}  // namespace flashmask::cli
