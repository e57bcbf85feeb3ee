// tests/examples/support/upload_support.hpp
// For the upload_server end-to-end tests: CSV files generated with known good and bad rows
// (and what the server must say about each), multipart bodies, the server started on a temp db.
#pragma once

#include "examples/support/http_client.hpp"
#include "examples/support/process.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace e2e::upload {

using json = nlohmann::json;

struct expected_error {
    std::uint64_t line;
    std::string sku;
    std::string reason;
};

struct product {
    std::string name;
    std::int64_t price_cents;
    std::int64_t quantity;
};

struct generated_csv {
    std::string text;
    std::uint64_t rows = 0; // data rows
    std::vector<expected_error> errors;
    std::map<std::string, product> good; // by sku
};

/// The row-error reasons of malformed quoting in the name column.
inline const std::string text_after_quote_in_name
    = "malformed quotes in the name field: text after its closing quote (a quoted field ends at its closing quote)";
inline const std::string quote_inside_name
    = "malformed quotes in the name field: a quote in an unquoted field (quote the whole field and double the quotes in it)";

/// `rows` data rows after the header `sku,name,price,quantity`; when `bad_every` > 0, every
/// bad_every-th row (1-based) is bad, cycling through the kinds the importer reports. Skus are
/// spread so that the file is not in sku order, and start with `prefix`. Line ends are LF, or
/// CRLF with `crlf`.
inline generated_csv make_csv(std::uint64_t rows, std::uint64_t bad_every = 0, bool crlf = false,
                              const std::string& prefix = "SKU-")
{
    generated_csv g;
    const std::string eol = crlf ? "\r\n" : "\n";
    g.text.reserve(rows * 40 + 64);
    g.text += "sku,name,price,quantity" + eol;
    std::string last_good_sku;
    std::uint64_t first_line_of_last_good = 0;
    std::map<std::string, std::uint64_t> first_line;
    for (std::uint64_t i = 1; i <= rows; ++i) {
        const std::uint64_t line = i + 1;
        // A bijection of 0..rows-1 keeps skus unique but out of order.
        const std::uint64_t n = (i * 7919) % 10'000'019;
        const std::string sku = prefix + std::to_string(10'000'000 + n);
        const std::int64_t cents = static_cast<std::int64_t>(i % 100'000);
        const std::int64_t qty = static_cast<std::int64_t>(i % 97);
        const std::string price = std::to_string(cents / 100) + "." + (cents % 100 < 10 ? "0" : "")
                                  + std::to_string(cents % 100);
        const std::string name = "Product " + std::to_string(i);
        if (bad_every > 0 && i % bad_every == 0 && !last_good_sku.empty()) {
            switch ((i / bad_every) % 6) {
            case 0:
                g.text += sku + "," + name + ",12.345," + std::to_string(qty) + eol;
                g.errors.push_back({line, sku, "price must be a number with at most 2 decimals"});
                break;
            case 1:
                g.text += sku + "," + name + "," + price + ",-1" + eol;
                g.errors.push_back({line, sku, "quantity must not be negative"});
                break;
            case 2:
                g.text += sku + ",," + price + "," + std::to_string(qty) + eol;
                g.errors.push_back({line, sku, "name is empty"});
                break;
            case 3:
                g.text += last_good_sku + "," + name + "," + price + "," + std::to_string(qty) + eol;
                g.errors.push_back({line, last_good_sku,
                                    "duplicate sku (first at line " + std::to_string(first_line_of_last_good) + ")"});
                break;
            case 4:
                g.text += sku + ",\"bad \"quote\"," + price + "," + std::to_string(qty) + eol;
                g.errors.push_back({line, sku, text_after_quote_in_name});
                break;
            default:
                g.text += "," + name + "," + price + "," + std::to_string(qty) + eol;
                g.errors.push_back({line, "", "sku is empty"});
                break;
            }
            ++g.rows;
            continue;
        }
        // Every 10th name is quoted with a comma and a doubled quote in it.
        if (i % 10 == 0) {
            g.text += sku + ",\"" + name + ", \"\"deluxe\"\"\"," + price + "," + std::to_string(qty) + eol;
            g.good[sku] = {name + ", \"deluxe\"", cents, qty};
        } else {
            g.text += sku + "," + name + "," + price + "," + std::to_string(qty) + eol;
            g.good[sku] = {name, cents, qty};
        }
        last_good_sku = sku;
        first_line_of_last_good = line;
        ++g.rows;
    }
    return g;
}

inline const std::string boundary = "----e2eBoundary7MA4YWxkTrZu0gW";

/// A multipart/form-data body with one file part named `field`.
inline std::string multipart_body(std::string_view content, std::string_view field = "file",
                                  std::string_view filename = "products.csv")
{
    std::string b;
    b += "--" + boundary + "\r\n";
    b += "Content-Disposition: form-data; name=\"note\"\r\n\r\nbulk import\r\n";
    b += "--" + boundary + "\r\n";
    b += "Content-Disposition: form-data; name=\"" + std::string(field) + "\"; filename=\"" + std::string(filename)
         + "\"\r\n";
    b += "Content-Type: text/csv\r\n\r\n";
    b += content;
    b += "\r\n--" + boundary + "--\r\n";
    return b;
}

inline header_list multipart_headers()
{
    return {{"Content-Type", "multipart/form-data; boundary=" + boundary}};
}

/// upload_server on port 0 with a database in a temp dir of its own.
struct server {
    temp_dir dir;
    fs::path db = dir / "upload.db";
    server_process proc;

    explicit server(std::vector<std::string> extra = {})
        : proc(example_binary("upload_server", "SSEPP_UPLOAD_SERVER"), args(db, std::move(extra)))
    {
    }

    std::uint16_t port() const { return proc.port(); }

    static std::vector<std::string> args(const fs::path& db, std::vector<std::string> extra)
    {
        std::vector<std::string> a{"--port", "0", "--db", db.string()};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    /// POSTs a CSV (multipart, or raw text/csv); the response.
    http_response upload(std::string_view csv, bool multipart = true)
    {
        if (multipart)
            return request(port(), "POST", "/api/upload/csv", multipart_headers(), multipart_body(csv));
        return request(port(), "POST", "/api/upload/csv", {{"Content-Type", "text/csv; charset=utf-8"}}, csv);
    }

    /// POSTs a CSV that must be accepted; its transaction id.
    std::string accepted(std::string_view csv, bool multipart = true)
    {
        auto r = upload(csv, multipart);
        if (r.status != 202)
            throw std::runtime_error("upload not accepted: " + std::to_string(r.status) + " " + r.body);
        return json::parse(r.body).at("transaction_id").get<std::string>();
    }

    json status(const std::string& id)
    {
        auto r = request(port(), "GET", "/api/upload/" + id);
        if (r.status != 200)
            throw std::runtime_error("status: " + std::to_string(r.status) + " " + r.body);
        return json::parse(r.body);
    }
};

} // namespace e2e::upload
