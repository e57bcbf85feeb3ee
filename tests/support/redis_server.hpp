// tests/support/redis_server.hpp
// A real redis-server for the cluster tests: started on a free port of 127.0.0.1 in a temp dir,
// without persistence unless asked (redis_server::options::appendonly), waited for (bounded),
// then stopped, restarted on the same port, or killed with SIGKILL. It dies with the test
// process (PR_SET_PDEATHSIG).
#pragma once

#include <ssepp/redis/url.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace test {

class redis_server {
public:
    struct options {
        /// An append-only file written and fsynced before each reply (appendfsync always): a
        /// restart after kill() keeps every write that was acknowledged. Off: a restart starts
        /// empty.
        bool appendonly = false;
    };

    /// Starts a server on a free port; throws when none answers within 5 s (3 ports tried).
    redis_server() : redis_server(options{}) {}

    explicit redis_server(options o) : options_(o)
    {
        char tmpl[] = "/tmp/ssepp-redis-XXXXXX";
        if (::mkdtemp(tmpl) == nullptr)
            throw std::runtime_error("redis_server: mkdtemp failed");
        dir_ = tmpl;
        for (int attempt = 0; attempt < 3; ++attempt) {
            port_ = free_port();
            if (try_start())
                return;
        }
        throw std::runtime_error("redis_server: no redis-server answered; log:\n" + log());
    }
    redis_server(const redis_server&) = delete;
    redis_server& operator=(const redis_server&) = delete;

    ~redis_server()
    {
        stop();
        ssepp::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    std::uint16_t port() const { return port_; }
    ssepp::redis::endpoint endpoint(int db = 0) const { return {"127.0.0.1", port_, db}; }
    std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
    bool running() const { return pid_ > 0; }

    /// (Re)starts it on the same port; throws unless it answers within 5 s.
    void start()
    {
        if (running())
            return;
        if (!try_start())
            throw std::runtime_error("redis_server: restart on port " + std::to_string(port_) + " failed; log:\n" + log());
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    void stop()
    {
        if (!running())
            return;
        ::kill(pid_, SIGTERM);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (::waitpid(pid_, nullptr, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, nullptr, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        pid_ = -1;
    }

    /// SIGKILL: the server vanishes without closing anything cleanly.
    void kill()
    {
        if (!running())
            return;
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
    }

    std::string log() const
    {
        std::ifstream in(dir_ + "/redis.log");
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    }

private:
    static std::string server_path()
    {
#ifdef SSEPP_REDIS_SERVER
        if (::access(SSEPP_REDIS_SERVER, X_OK) == 0)
            return SSEPP_REDIS_SERVER;
#endif
        if (const char* path = std::getenv("PATH")) {
            std::stringstream dirs(path);
            for (std::string d; std::getline(dirs, d, ':');)
                if (!d.empty() && ::access((d + "/redis-server").c_str(), X_OK) == 0)
                    return d + "/redis-server";
        }
        throw std::runtime_error("redis-server not found: install it (Debian: apt-get install redis-server)");
    }

    static std::uint16_t free_port()
    {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            if (fd >= 0)
                ::close(fd);
            throw std::runtime_error("redis_server: no free port");
        }
        ::close(fd);
        return ntohs(a.sin_port);
    }

    bool try_start()
    {
        const std::string exe = server_path();
        const std::string port = std::to_string(port_);
        const std::string logfile = dir_ + "/redis.log";
        std::vector<std::string> args{exe,         "--port",       port,   "--bind",    "127.0.0.1", "--save",
                                      "",          "--appendonly", options_.appendonly ? "yes" : "no",
                                      "--dir",     dir_,           "--logfile", logfile, "--daemonize", "no",
                                      "--databases", "16"};
        if (options_.appendonly) {
            args.emplace_back("--appendfsync");
            args.emplace_back("always");
        }
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        const pid_t parent = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0)
            throw std::runtime_error("redis_server: fork failed");
        if (pid == 0) {  // only async-signal-safe calls until exec
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent)
                ::_exit(127);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        pid_ = pid;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (std::chrono::steady_clock::now() < deadline) {
            if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {  // exited: port taken, bad flag...
                pid_ = -1;
                return false;
            }
            if (answers())
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        kill();
        return false;
    }

    /// True when our process (not another one on the port) answers INFO server.
    bool answers() const
    {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return false;
        timeval tv{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port_);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        std::string got;
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
            constexpr char cmd[] = "INFO server\r\n";
            if (::send(fd, cmd, sizeof cmd - 1, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof cmd - 1)) {
                char buf[4096];
                for (ssize_t n; got.find("process_id:") == std::string::npos || got.find("\r\n", got.find("process_id:")) == std::string::npos;) {
                    n = ::recv(fd, buf, sizeof buf, 0);
                    if (n <= 0)
                        break;
                    got.append(buf, static_cast<std::size_t>(n));
                }
            }
        }
        ::close(fd);
        return got.find("process_id:" + std::to_string(pid_) + "\r\n") != std::string::npos;
    }

    options options_;
    std::string dir_;
    std::uint16_t port_ = 0;
    pid_t pid_ = -1;
};

} // namespace test
