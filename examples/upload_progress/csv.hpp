// examples/upload_progress/csv.hpp
// A streaming RFC 4180 record reader over text already in memory: one record at a time, fields
// as views into the text (or into the reader's buffer for fields with doubled quotes), nothing
// else kept, so a 64 MiB upload is never materialised as rows.
//
// The dialect, precisely:
// - Fields are separated by `,`; a record ends at a line end outside quotes, or at the end of
//   the text. A line end is CRLF, LF or a bare CR: a bare CR outside quotes ends the line (as
//   in old Mac exports and in text/event-stream), it is never field data. Line numbers count
//   each of these once.
// - A field that starts with `"` is quoted: it runs to the next `"` not doubled, may contain
//   `,`, CR and LF verbatim, and `""` inside it reads as one `"`.
// - Malformed quoting is an error of that record only: a `"` inside an unquoted field, or
//   anything but `,` or a line end after a closing quote. The record is returned with
//   `malformed` set and the fields read before the fault; reading resumes after the end of the
//   physical line where the fault was found (quotes ignored up to it).
// - A quoted field still open at the end of the text is fatal: csv::error, naming the line
//   where that field's opening quote is.
// - A UTF-8 byte-order mark at the very start is skipped. Empty lines are not records (a line
//   of spaces is: one field). A trailing line end does not make an empty last record.
// - Bytes are passed through as they are; decoding and validating UTF-8 is the caller's job.
// SPDX-License-Identifier: BSL-1.0
#ifndef SSEPP_EXAMPLES_UPLOAD_PROGRESS_CSV_HPP
#define SSEPP_EXAMPLES_UPLOAD_PROGRESS_CSV_HPP

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace upload::csv {

/// Fatal: a quoted field is not closed before the end of the text.
class error : public std::runtime_error {
public:
    explicit error(std::uint64_t line)
        : std::runtime_error("unterminated quoted field starting at line " + std::to_string(line)),
          line_(line)
    {
    }
    /// The 1-based line of the field's opening quote.
    [[nodiscard]] std::uint64_t line() const noexcept { return line_; }

private:
    std::uint64_t line_;
};

/// What is wrong with a malformed record's quoting.
enum class fault : std::uint8_t {
    none,
    quote_in_unquoted_field,   // `ab"c`
    text_after_closing_quote,  // `"ab"c`
};

/// One record. The views are valid until the reader's next call (and while the text lives).
struct record {
    /// 1-based line where the record starts.
    std::uint64_t line = 0;
    /// Byte offset in the text where the record starts (for reader::seek).
    std::size_t offset = 0;
    /// The fields, unquoted and unescaped; for a malformed record, the complete fields before
    /// the faulty one.
    std::span<const std::string_view> fields;
    /// The record's quoting is broken (see above); its fields are not to be trusted.
    bool malformed = false;
    /// For a malformed record: what, and in which field (0-based).
    csv::fault fault = csv::fault::none;
    std::size_t fault_field = 0;
};

class reader {
public:
    explicit reader(std::string_view text) noexcept : text_(text)
    {
        if (text_.starts_with("\xEF\xBB\xBF"))
            pos_ = 3;
    }

    /// The next record into `out`; false at the end of the text. Throws csv::error.
    bool next(record& out) { return advance<true>(&out); }
    /// Steps over the next record without building its fields (the same rules, faster);
    /// false at the end of the text. Throws csv::error.
    bool skip() { return advance<false>(nullptr); }

    /// Bytes consumed so far.
    [[nodiscard]] std::size_t offset() const noexcept { return pos_; }

    /// Goes back (or ahead) to a record read before from the same text: `offset` and `line` as
    /// that record had them. Reading then goes on from there as usual.
    void seek(std::size_t offset, std::uint64_t line) noexcept
    {
        pos_ = offset;
        line_ = line;
    }

private:
    struct field_span {
        std::size_t begin;
        std::size_t size;
        bool escaped; // holds `""` pairs to collapse
    };

    static bool plain(char c) noexcept
    {
        return c != ',' && c != '"' && c != '\n' && c != '\r';
    }

    template <bool Keep>
    bool advance(record* out);
    void build_fields();

    std::string_view text_;
    std::size_t pos_ = 0;
    std::uint64_t line_ = 1;
    std::vector<field_span> spans_;
    std::vector<std::string_view> fields_;
    std::string unescaped_;
};

template <bool Keep>
bool reader::advance(record* out)
{
    const char* const text = text_.data();
    const std::size_t size = text_.size();
    std::size_t p = pos_;

    // Empty lines are not records.
    for (;;) {
        if (p == size) {
            pos_ = p;
            return false;
        }
        if (text[p] == '\n') {
            ++p;
        } else if (text[p] == '\r') {
            p += p + 1 < size && text[p + 1] == '\n' ? 2 : 1;
        } else {
            break;
        }
        ++line_;
    }

    const std::uint64_t start_line = line_;
    const std::size_t start = p;
    if constexpr (Keep)
        spans_.clear();
    bool malformed = false;
    csv::fault what = csv::fault::none;
    std::size_t field_index = 0;
    for (;; ++field_index) { // one field per iteration; p is at its first byte
        if (p < size && text[p] == '"') {
            const std::uint64_t quote_line = line_;
            const std::size_t begin = p + 1;
            std::size_t q = begin;
            bool escaped = false;
            for (;;) {
                while (q < size && text[q] != '"') {
                    // CRLF counts once, at its LF.
                    if (text[q] == '\n'
                        || (text[q] == '\r' && (q + 1 == size || text[q + 1] != '\n')))
                        ++line_;
                    ++q;
                }
                if (q == size) {
                    pos_ = size;
                    throw error(quote_line);
                }
                if (q + 1 < size && text[q + 1] == '"') {
                    escaped = true;
                    q += 2;
                    continue;
                }
                break;
            }
            p = q + 1; // after the closing quote
            if (p < size && text[p] != ',' && text[p] != '\n' && text[p] != '\r') {
                malformed = true;
                what = csv::fault::text_after_closing_quote;
                break;
            }
            if constexpr (Keep)
                spans_.push_back({begin, q - begin, escaped});
        } else {
            const std::size_t begin = p;
            while (p < size && plain(text[p]))
                ++p;
            if (p < size && text[p] == '"') {
                malformed = true;
                what = csv::fault::quote_in_unquoted_field;
                break;
            }
            if constexpr (Keep)
                spans_.push_back({begin, p - begin, false});
        }
        if (p < size && text[p] == ',') {
            ++p;
            continue;
        }
        break; // at a line end or the end of the text
    }
    if (malformed) {
        while (p < size && text[p] != '\n' && text[p] != '\r')
            ++p;
    }
    if (p < size) { // the line end
        p += text[p] == '\r' && p + 1 < size && text[p + 1] == '\n' ? 2 : 1;
        ++line_;
    }
    pos_ = p;

    if constexpr (Keep) {
        build_fields();
        out->line = start_line;
        out->offset = start;
        out->fields = fields_;
        out->malformed = malformed;
        out->fault = what;
        out->fault_field = malformed ? field_index : 0;
    }
    return true;
}

inline void reader::build_fields()
{
    fields_.clear();
    std::size_t escaped_bytes = 0;
    for (const auto& s : spans_)
        if (s.escaped)
            escaped_bytes += s.size;
    if (escaped_bytes != 0) {
        unescaped_.clear();
        unescaped_.reserve(escaped_bytes); // no reallocation below: the views stay put
    }
    for (const auto& s : spans_) {
        if (!s.escaped) {
            fields_.emplace_back(text_.data() + s.begin, s.size);
            continue;
        }
        const std::size_t start = unescaped_.size();
        for (std::size_t i = s.begin, end = s.begin + s.size; i < end; ++i) {
            unescaped_.push_back(text_[i]);
            if (text_[i] == '"')
                ++i; // the second of the pair
        }
        fields_.emplace_back(unescaped_.data() + start, unescaped_.size() - start);
    }
}

/// Records in the text, by the same rules as reader (blank lines are not records; a malformed
/// record counts once). Throws csv::error.
inline std::uint64_t count_records(std::string_view text)
{
    reader r(text);
    std::uint64_t n = 0;
    while (r.skip())
        ++n;
    return n;
}

} // namespace upload::csv

#endif // SSEPP_EXAMPLES_UPLOAD_PROGRESS_CSV_HPP
