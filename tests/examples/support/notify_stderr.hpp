// tests/examples/support/notify_stderr.hpp
// Captures a child server's stderr in a file, for tests that assert a clean exit (no sanitizer
// report). server_process lets the child inherit the test's stderr: this points the test's own
// fd 2 at a file while the child is started, then puts it back.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <unistd.h>

namespace e2e {

class stderr_redirect {
public:
    explicit stderr_redirect(const std::filesystem::path& file)
    {
        const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            throw std::runtime_error("cannot create " + file.string());
        std::fflush(stderr);
        saved_ = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        ::dup2(fd, STDERR_FILENO);  // without FD_CLOEXEC: a child started now inherits it
        ::close(fd);
    }
    ~stderr_redirect() { restore(); }
    stderr_redirect(const stderr_redirect&) = delete;
    stderr_redirect& operator=(const stderr_redirect&) = delete;

    /// The test's own stderr back (idempotent).
    void restore()
    {
        if (saved_ < 0)
            return;
        std::fflush(stderr);
        ::dup2(saved_, STDERR_FILENO);
        ::close(saved_);
        saved_ = -1;
    }

private:
    int saved_ = -1;
};

inline std::string read_file(const std::filesystem::path& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

} // namespace e2e
