// Reading a NumPy .npy file (format versions 1-3, C order) for `flashmask validate`: the way a
// user most easily hands the tool a startend_row_indices tensor (numpy.save).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "flashmask/types.hpp"

namespace flashmask::cli {

struct NpyArray {
    std::string descr;  // NumPy's dtype string, e.g. "<i4"
    std::vector<int64_t> shape;
    std::vector<std::byte> data;
};

// The library dtype of a little-endian NumPy descr, if it has one.
inline std::optional<DType> npy_dtype(const std::string& descr) {
    if (descr == "<i4") return DType::Int32;
    if (descr == "<f4") return DType::Float32;
    if (descr == "<f2") return DType::Float16;
    return std::nullopt;
}

namespace npy_detail {

// The text after `'key':` in the header dict, with leading spaces removed.
inline std::string value_after(const std::string& header, const std::string& key, const std::string& what) {
    const std::size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) throw UsageError(what + ": not a valid .npy file (no '" + key + "' in its header)");
    std::size_t colon = header.find(':', at);
    if (colon == std::string::npos) throw UsageError(what + ": not a valid .npy file (bad header)");
    ++colon;
    while (colon < header.size() && header[colon] == ' ') ++colon;
    return header.substr(colon);
}

inline uint64_t read_little_endian(const unsigned char* bytes, int count) {
    uint64_t value = 0;
    for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[i];
    return value;
}

}  // namespace npy_detail

// Reads `path`; `option` names the command-line option in messages ("--indices").
inline NpyArray read_npy(const std::string& path, const std::string& option) {
    const std::string what = option + " " + path;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UsageError(what + ": cannot open the file");
    constexpr char kMagic[] = "\x93NUMPY";
    constexpr std::size_t kMagicSize = 6;
    unsigned char preamble[kMagicSize + 2];
    if (!in.read(reinterpret_cast<char*>(preamble), sizeof preamble) || std::memcmp(preamble, kMagic, kMagicSize) != 0)
        throw UsageError(what + ": not a .npy file (no \\x93NUMPY magic)");
    const int major = preamble[kMagicSize];
    if (major < 1 || major > 3) throw UsageError(what + ": unsupported .npy format version " + std::to_string(major));
    const int length_bytes = major == 1 ? 2 : 4;  // v1: uint16 header length; v2, v3: uint32
    unsigned char length_field[4];
    if (!in.read(reinterpret_cast<char*>(length_field), length_bytes)) throw UsageError(what + ": truncated .npy header");
    std::string header(std::size_t(npy_detail::read_little_endian(length_field, length_bytes)), '\0');
    if (!in.read(header.data(), std::streamsize(header.size()))) throw UsageError(what + ": truncated .npy header");

    NpyArray array;
    const std::string descr = npy_detail::value_after(header, "descr", what);
    const char quote = descr.empty() ? '\'' : descr[0];
    const std::size_t descr_end = descr.find(quote, 1);
    if (descr.empty() || (quote != '\'' && quote != '"') || descr_end == std::string::npos)
        throw UsageError(what + ": not a valid .npy file (bad descr)");
    array.descr = descr.substr(1, descr_end - 1);
    if (npy_detail::value_after(header, "fortran_order", what).rfind("False", 0) != 0)
        throw UsageError(what + ": Fortran-ordered arrays are not supported; save a C-ordered array");
    const std::string shape = npy_detail::value_after(header, "shape", what);
    if (shape.empty() || shape[0] != '(') throw UsageError(what + ": not a valid .npy file (bad shape)");
    int64_t numel = 1;
    for (std::size_t i = 1; i < shape.size() && shape[i] != ')';) {
        if (shape[i] == ' ' || shape[i] == ',') { ++i; continue; }
        std::size_t used = 0;
        int64_t extent = 0;
        try {
            extent = std::stoll(shape.substr(i), &used);
        } catch (const std::exception&) {
            throw UsageError(what + ": not a valid .npy file (bad shape)");
        }
        if (extent < 0 || (extent > 0 && numel > std::numeric_limits<int64_t>::max() / extent))
            throw UsageError(what + ": not a valid .npy file (bad shape)");
        array.shape.push_back(extent);
        numel *= extent;
        i += used;
    }

    const char size_char = array.descr.empty() ? '0' : array.descr.back();
    const int64_t item_size = size_char >= '1' && size_char <= '8' ? size_char - '0' : 0;
    if (item_size == 0) throw UsageError(what + ": unsupported dtype '" + array.descr + "'");
    // A byte count that wrapped around would leave `data` smaller than the shape says, and every
    // later read of the array past its end.
    if (numel > std::numeric_limits<int64_t>::max() / item_size)
        throw UsageError(what + ": not a valid .npy file (its shape declares more than 2^63 bytes)");
    array.data.resize(std::size_t(numel * item_size));
    if (!in.read(reinterpret_cast<char*>(array.data.data()), std::streamsize(array.data.size())))
        throw UsageError(what + ": the file holds fewer than the " + std::to_string(numel) + " elements its header declares");
    return array;
}

}  // namespace flashmask::cli
