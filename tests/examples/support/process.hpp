// tests/examples/support/process.hpp
// Runs an example server as a child process for the end-to-end tests: finds its binary in the
// build tree, starts it with `--port 0` and the test's flags, reads the URL it prints, and
// kills it when the test ends, however the test ends (RAII; the child also gets SIGKILL if the
// test process dies first). Every wait is bounded.
#pragma once

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace e2e {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

/// The build tree: example_tests lives in <build>/tests/examples/, overridable with
/// SSEPP_BUILD_DIR.
inline fs::path build_dir()
{
    if (const char* env = std::getenv("SSEPP_BUILD_DIR"); env && *env)
        return env;
    std::error_code ec;
    const auto self = fs::read_symlink("/proc/self/exe", ec);
    if (ec)
        throw std::runtime_error("cannot read /proc/self/exe: " + ec.message());
    return self.parent_path().parent_path().parent_path();
}

/// <build>/examples/<name>, or the path in environment variable `env` when set; throws with a
/// clear message when the binary is not there (build the target first).
inline fs::path example_binary(const std::string& name, const char* env)
{
    fs::path p;
    if (const char* v = std::getenv(env); v && *v)
        p = v;
    else
        p = build_dir() / "examples" / name;
    if (::access(p.c_str(), X_OK) != 0)
        throw std::runtime_error("example binary not found or not executable: " + p.string() + " (build target '"
                                 + name + "', or set " + env + ")");
    return p;
}

/// A fresh directory under the system's temp directory, removed with everything in it.
class temp_dir {
public:
    temp_dir()
    {
        std::string pattern = (fs::temp_directory_path() / "ssepp-e2e-XXXXXX").string();
        if (!::mkdtemp(pattern.data()))
            throw std::runtime_error("mkdtemp failed");
        path_ = pattern;
    }
    ~temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    const fs::path& path() const { return path_; }
    fs::path operator/(std::string_view name) const { return path_ / name; }

private:
    fs::path path_;
};

/// A server process. The constructor returns once the server printed its
/// "... listening on http://HOST:PORT/" line (or throws after `start_timeout`).
class server_process {
public:
    server_process(const fs::path& binary, std::vector<std::string> args,
                   std::chrono::milliseconds start_timeout = 10s)
    {
        int out[2];
        if (::pipe2(out, O_CLOEXEC) != 0)
            throw std::runtime_error("pipe2 failed");
        std::vector<std::string> argv_s{binary.string()};
        argv_s.insert(argv_s.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (auto& a : argv_s)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ < 0) {
            ::close(out[0]);
            ::close(out[1]);
            throw std::runtime_error("fork failed");
        }
        if (pid_ == 0) {
            // Only async-signal-safe calls until exec.
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent)
                ::_exit(127);
            ::dup2(out[1], STDOUT_FILENO);
            // Nothing else of the test's: Asio's sockets are not close-on-exec, and a server
            // holding a test's socket open keeps a connection the test closed alive.
            ::close_range(3, ~0U, 0);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        ::close(out[1]);
        out_ = out[0];
        read_url(start_timeout);
    }

    ~server_process()
    {
        if (!exit_code_ && pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
        if (out_ >= 0)
            ::close(out_);
    }

    server_process(const server_process&) = delete;
    server_process& operator=(const server_process&) = delete;

    std::uint16_t port() const { return port_; }
    const std::string& url() const { return url_; }
    pid_t pid() const { return pid_; }

    void signal(int sig) { ::kill(pid_, sig); }

    /// Waits for the process to exit: its exit code (128 + signal when killed by one), or
    /// nullopt when it still runs after `timeout`.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout)
    {
        if (exit_code_)
            return exit_code_;
        const auto deadline = clock::now() + timeout;
        for (;;) {
            int status = 0;
            const pid_t r = ::waitpid(pid_, &status, WNOHANG);
            if (r == pid_) {
                exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                return exit_code_;
            }
            if (clock::now() > deadline)
                return std::nullopt;
            std::this_thread::sleep_for(5ms);
        }
    }

private:
    void read_url(std::chrono::milliseconds timeout)
    {
        const auto deadline = clock::now() + timeout;
        std::string line;
        while (line.find('\n') == std::string::npos) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
            pollfd p{out_, POLLIN, 0};
            if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                throw std::runtime_error("server printed no URL line in time; got: '" + line + "'");
            char buf[512];
            const auto n = ::read(out_, buf, sizeof buf);
            if (n <= 0)
                throw std::runtime_error("server exited before printing its URL; got: '" + line + "'");
            line.append(buf, static_cast<std::size_t>(n));
        }
        line.resize(line.find('\n'));
        auto at = line.find("http://");
        if (at == std::string::npos)
            at = line.find("https://");
        if (at == std::string::npos)
            throw std::runtime_error("no URL in the server's first line: " + line);
        url_ = line.substr(at);
        const auto colon = url_.rfind(':');
        port_ = static_cast<std::uint16_t>(std::stoi(url_.substr(colon + 1)));
        if (port_ == 0)
            throw std::runtime_error("server printed port 0: " + line);
    }

    pid_t pid_ = -1;
    int out_ = -1;
    std::uint16_t port_ = 0;
    std::string url_;
    std::optional<int> exit_code_;
};

} // namespace e2e
