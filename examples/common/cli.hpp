// examples/common/cli.hpp
// The examples' command-line flags: `--name value` pairs, `--help`, and exit code 2 with a
// usage line for anything else.
#pragma once

#include <fmt/format.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace common {

class cli {
public:
    explicit cli(std::string program) : program_(std::move(program)) {}

    cli& flag(std::string name, std::string& value, std::string help)
    {
        flags_.push_back({std::move(name), std::move(help), value,
                          [&value](std::string_view v) { value = v; return true; }});
        return *this;
    }

    template <class Int>
        requires std::is_integral_v<Int>
    cli& flag(std::string name, Int& value, std::string help)
    {
        flags_.push_back({std::move(name), std::move(help), std::to_string(value), [&value](std::string_view v) {
                              auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), value);
                              return ec == std::errc() && p == v.data() + v.size();
                          }});
        return *this;
    }

    /// Parses argv; prints usage and exits (0 for --help, 2 for bad usage).
    void parse(int argc, char** argv) const
    {
        for (int i = 1; i < argc; ++i) {
            const std::string_view arg = argv[i];
            if (arg == "--help" || arg == "-h") {
                usage(stdout);
                std::exit(0);
            }
            const flag_spec* f = find(arg);
            if (!f)
                fail(fmt::format("unknown option '{}'", arg));
            if (i + 1 >= argc)
                fail(fmt::format("option '{}' needs a value", arg));
            if (!f->set(argv[++i]))
                fail(fmt::format("bad value '{}' for option '{}'", argv[i], arg));
        }
    }

private:
    struct flag_spec {
        std::string name;
        std::string help;
        std::string default_value;
        std::function<bool(std::string_view)> set;
    };

    const flag_spec* find(std::string_view name) const
    {
        for (const auto& f : flags_)
            if (f.name == name)
                return &f;
        return nullptr;
    }

    [[noreturn]] void fail(const std::string& message) const
    {
        fmt::print(stderr, "{}: {}\n", program_, message);
        usage(stderr);
        std::exit(2);
    }

    void usage(std::FILE* out) const
    {
        fmt::print(out, "usage: {} [options]\n", program_);
        for (const auto& f : flags_)
            fmt::print(out, "  {:<24} {} (default: {})\n", f.name + " V", f.help, f.default_value);
    }

    std::string program_;
    std::vector<flag_spec> flags_;
};

} // namespace common
