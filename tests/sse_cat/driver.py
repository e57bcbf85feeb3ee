#!/usr/bin/env python3
# Tests sse-cat end to end: `sse-cat -` on captured streams, exit codes, and following a real
# server over loopback (reconnection, Last-Event-ID across a server restart).
# usage: driver.py SSE_CAT {stdin|exit_codes|follow|reconnect|restart}
# Loopback only, ports picked by the kernel, every wait bounded, sse-cat always killed.
import http.server
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

SSE_CAT = None
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def run(args, stdin=b"", timeout=20):
    """Runs sse-cat to the end; returns (exit code, stdout lines, stderr)."""
    p = subprocess.run([SSE_CAT, *args], input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8").splitlines(), p.stderr.decode("utf-8", "replace")


class Follower:
    """sse-cat running in the background, its stdout lines read as they come."""

    def __init__(self, args):
        self.proc = subprocess.Popen([SSE_CAT, *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line.decode("utf-8").rstrip("\n"))

    def read(self, n, timeout=10):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            try:
                out.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def wait(self, timeout=10):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class Server:
    """A scripted event-stream server. /events streams `per_response` events numbered on from the
    request's Last-Event-ID (so ids continue across a restart), then ends the response or, with
    `hold`, keeps it open until stop(). Other paths: /status/N, /type/<content type>, /redirect.
    Every request is recorded with its headers and arrival time."""

    def __init__(self, port=0, per_response=3, retry=None, hold=False):
        self.per_response, self.retry, self.hold = per_response, retry, hold
        self.requests = []
        self.ended = []  # when each /events response ended
        self.stopping = threading.Event()
        self.sockets = set()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers),
                                            "time": time.monotonic()})
                    server.sockets.add(self.connection)
                try:
                    server.serve(self)
                except OSError:
                    pass  # the client left, or stop() cut the connection
                finally:
                    with server.lock:
                        server.sockets.discard(self.connection)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path="/events"):
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, h):
        if h.path.startswith("/status/"):
            h.send_response(int(h.path[len("/status/"):]))
            h.send_header("Content-Type", "text/event-stream")
            h.end_headers()
            if not h.path.endswith("/204"):
                h.wfile.write(b"data: not a stream\n\n")
            return
        if h.path.startswith("/type/"):
            h.send_response(200)
            h.send_header("Content-Type", h.path[len("/type/"):].replace("%20", " "))
            h.end_headers()
            h.wfile.write(b"data: x\n\n")
            return
        if h.path == "/redirect":
            h.send_response(302)
            h.send_header("Location", "/events")
            h.end_headers()
            return
        last = h.headers.get("Last-Event-ID")
        start = int(last) + 1 if last else 1
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream; charset=utf-8")
        h.send_header("Cache-Control", "no-cache")
        h.end_headers()
        if self.retry is not None:
            h.wfile.write(f"retry: {self.retry}\n\n".encode())
        for n in range(start, start + self.per_response):
            h.wfile.write(f"id: {n}\ndata: event {n}\n\n".encode())
            h.wfile.flush()
        if self.hold:
            self.stopping.wait(30)
        with self.lock:
            self.ended.append(time.monotonic())

    def stop(self):
        """Like a crash: stops listening and cuts every open connection."""
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            for s in list(self.sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port():
    """A loopback port with nothing listening on it (bound by the kernel, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ev(data, id="", type="message"):
    return {"type": type, "data": data, "id": id}


def parse_json_lines(lines, what):
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            check(False, f"{what}: not JSON: {line!r}")
            continue
        check(list(obj) == ["type", "data", "id"], f"{what}: keys in order type, data, id: {line!r}")
        out.append(obj)
    return out


# --- sse-cat - ---------------------------------------------------------------------------------

STDIN_CASES = [
    # (name, input, expected events)
    ("LF", b"data: a\n\nid: 1\nevent: t\ndata: b\ndata: c\n\n",
     [ev("a"), ev("b\nc", "1", "t")]),
    ("CR", b"data: a\r\rid: 1\revent: t\rdata: b\rdata: c\r\r",
     [ev("a"), ev("b\nc", "1", "t")]),
    ("CRLF", b"data: a\r\n\r\nid: 1\r\nevent: t\r\ndata: b\r\ndata: c\r\n\r\n",
     [ev("a"), ev("b\nc", "1", "t")]),
    ("mixed", b"data: a\r\n\nid: 1\revent: t\ndata: b\r\ndata: c\r\r\n",
     [ev("a"), ev("b\nc", "1", "t")]),
    ("BOM", b"\xef\xbb\xbfdata: a\n\n", [ev("a")]),
    ("BOM only once", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [ev("b")]),
    ("split UTF-8", "data: é€😀\n\nid: ü\ndata: ∑\n\n".encode(),
     [ev("é€😀"), ev("∑", "ü")]),
    ("invalid UTF-8", b"data: a\xffb\xc3\n\n", [ev("a\ufffdb\ufffd")]),
    ("control characters and quotes", b"data: \x01\x1f\t\"\\\x7f</script>\n\n",
     [ev("\x01\x1f\t\"\\\x7f</script>")]),
    ("comments, retry, ids", b": hi\nretry: 10\nid: 5\n\ndata: x\n\nid\ndata: y\n\n",
     [ev("x", "5"), ev("y")]),
    ("unterminated last event", b"data: a\n\ndata: cut", [ev("a")]),
    ("empty", b"", []),
]


def test_stdin():
    for name, data, expected in STDIN_CASES:
        code, lines, err = run(["-"], data)
        check(code == 0, f"stdin {name}: exit {code} {err}")
        check(parse_json_lines(lines, name) == expected, f"stdin {name}: {lines} != {expected}")
        # The same bytes trickled in one at a time: UTF-8 sequences, CRLFs and the BOM split.
        p = subprocess.Popen([SSE_CAT, "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            for i in range(len(data)):
                p.stdin.write(data[i:i + 1])
                p.stdin.flush()
                time.sleep(0.002)
            p.stdin.close()
            out = p.stdout.read().decode("utf-8").splitlines()
            check(p.wait(timeout=10) == 0, f"stdin {name} trickled: exit code")
            check(parse_json_lines(out, name) == expected, f"stdin {name} trickled: {out}")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)

    # --raw: the data and a newline.
    code, lines, _ = run(["--raw", "-"], b"data: a\ndata: b\n\ndata\n\ndata: c\n\n")
    check(code == 0 and lines == ["a", "b", "", "c"], f"--raw: {code} {lines}")
    # --last-event-id is the id in force until the stream sets one.
    code, lines, _ = run(["--last-event-id", "41", "-"], b"data: a\n\nid: 42\ndata: b\n\n")
    check(code == 0 and parse_json_lines(lines, "--last-event-id") == [ev("a", "41"), ev("b", "42")],
          f"--last-event-id: {lines}")
    # --max-events stops early with 0.
    code, lines, _ = run(["--max-events", "2", "-"], b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
    check(code == 0 and len(lines) == 2, f"--max-events on stdin: {code} {lines}")
    # A line past the parser's limit (1 MiB) is a broken stream: 1, with the reason.
    code, lines, err = run(["-"], b"data: ok\n\ndata: " + b"x" * (2 << 20) + b"\n\n")
    check(code == 1 and len(lines) == 1 and "limit" in err, f"line too long: {code} {err}")
    # --timeout ends a quiet stdin with 0.
    p = subprocess.Popen([SSE_CAT, "--timeout", "0.3", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"data: a\n\n")
        p.stdin.flush()
        start = time.monotonic()
        code = p.wait(timeout=10)
        elapsed = time.monotonic() - start
        check(code == 0 and elapsed < 5, f"--timeout on stdin: {code} after {elapsed:.2f}s")
        check(p.stdout.read() == b'{"type":"message","data":"a","id":""}\n', "--timeout on stdin: output")
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


# --- exit codes ------------------------------------------------------------------------------

def test_exit_codes():
    for args in [[], ["--bogus", "-"], ["--max-events", "x", "-"], ["--max-events", "0", "-"],
                 ["--max-events"], ["--timeout", "-1", "-"], ["--timeout", "abc", "-"],
                 ["-H", "nocolon", "-"], ["-H", ": empty name", "-"],
                 ["-H", "Last-Event-ID: 3", "-"], ["a", "b"], ["-", "-"], ["ftp://x/"],
                 ["not a url"], ["--raw=1", "-"]]:
        code, _, err = run(args)
        check(code == 2 and err.startswith("sse-cat: "), f"usage {args}: exit {code} {err!r}")
    code, lines, _ = run(["--help"])
    check(code == 0 and lines and lines[0].startswith("usage:"), f"--help: {code}")
    if os.path.exists("/dev/full"):  # an output that fails is a failure, with the reason
        with open("/dev/full", "wb") as full:
            p = subprocess.run([SSE_CAT, "-"], input=b"data: x\n\n", stdout=full,
                               stderr=subprocess.PIPE, timeout=20)
        check(p.returncode == 1 and b"cannot write" in p.stderr, f"/dev/full: {p.returncode}")

    refused = f"http://127.0.0.1:{free_port()}/events"
    code, _, err = run(["--no-reconnect", refused])
    check(code == 1 and err, f"refused with --no-reconnect: {code} {err!r}")
    # Without --no-reconnect it keeps trying (as EventSource does) until --timeout: a normal end.
    start = time.monotonic()
    code, _, err = run(["--timeout", "1", refused])
    check(code == 0 and "reconnecting" in err and time.monotonic() - start < 8,
          f"refused until --timeout: {code} {err!r}")

    with Server() as s:
        for path, expected in [("/status/404", 1), ("/status/500", 1), ("/status/201", 1),
                               ("/type/text/plain", 1), ("/type/text/event-streams", 1),
                               ("/status/204", 0)]:
            before = len(s.requests)
            # No --no-reconnect: these fail for good, so exactly one request is made.
            code, lines, err = run(["--timeout", "15", s.url(path)])
            check(code == expected and lines == [], f"{path}: exit {code} {lines} {err!r}")
            check(len(s.requests) == before + 1, f"{path}: {len(s.requests) - before} requests")
            check(err.strip() != "", f"{path}: says why on stderr")
        url = s.url("/type/TEXT/Event-Stream;%20charset=utf-8")
        code, lines, err = run(["--timeout", "15", url, "--max-events", "1"])
        check(code == 0 and parse_json_lines(lines, "charset") == [ev("x")],
              f"content type with parameters: {code} {err!r}")


# --- following a server ------------------------------------------------------------------------

def test_follow():
    with Server(per_response=3) as s:
        # A clean end with --no-reconnect: 0, the events, the request headers EventSource sends.
        code, lines, err = run(["--no-reconnect", "-H", "X-Token: secret",
                                "-H", "Accept: text/event-stream, */*", s.url()])
        check(code == 0, f"--no-reconnect clean end: {code} {err!r}")
        check(parse_json_lines(lines, "follow") == [ev(f"event {n}", str(n)) for n in (1, 2, 3)],
              f"follow: {lines}")
        h = s.requests[-1]["headers"]
        check(h.get("X-Token") == "secret", f"-H header sent: {h}")
        check(h.get("Accept") == "text/event-stream, */*", f"-H overrides Accept: {h}")
        check(h.get("Cache-Control") == "no-cache", f"Cache-Control: {h}")
        check("Last-Event-ID" not in h, f"no Last-Event-ID at first: {h}")

        # --last-event-id: sent from the first request; the server resumes after it.
        code, lines, err = run(["--no-reconnect", "--last-event-id", "10", s.url()])
        check(s.requests[-1]["headers"].get("Last-Event-ID") == "10", "--last-event-id sent")
        check([e["id"] for e in parse_json_lines(lines, "resume")] == ["11", "12", "13"],
              f"--last-event-id resumes: {lines}")

        # Redirects are followed.
        code, lines, err = run(["--no-reconnect", s.url("/redirect")])
        check(code == 0 and len(lines) == 3, f"redirect: {code} {lines} {err!r}")

        # --raw
        code, lines, err = run(["--no-reconnect", "--raw", s.url()])
        check(code == 0 and lines == ["event 1", "event 2", "event 3"], f"--raw: {lines}")

    with Server(per_response=2, hold=True) as s:
        # --max-events on a stream that stays open.
        code, lines, err = run(["--max-events", "2", "--timeout", "15", s.url()])
        check(code == 0 and len(lines) == 2, f"--max-events: {code} {lines} {err!r}")
        # --timeout on a stream that stays open and quiet.
        start = time.monotonic()
        code, lines, err = run(["--timeout", "0.5", s.url()])
        elapsed = time.monotonic() - start
        check(code == 0 and len(lines) == 2 and 0.4 < elapsed < 8,
              f"--timeout: {code} {lines} after {elapsed:.2f}s {err!r}")


def test_reconnect():
    # The server ends each response after 2 events and asks for 300 ms between connections.
    with Server(per_response=2, retry=300) as s:
        with Follower(["--max-events", "5", "--timeout", "20", s.url()]) as f:
            lines = f.read(5, timeout=15)
            check(f.wait(10) == 0, "reconnect: exit 0 after --max-events")
        got = parse_json_lines(lines, "reconnect")
        check(got == [ev(f"event {n}", str(n)) for n in range(1, 6)], f"reconnect: {lines}")
        ids = [r["headers"].get("Last-Event-ID") for r in s.requests]
        check(ids[:3] == [None, "2", "4"], f"reconnect: Last-Event-ID sent {ids}")
        # retry: is honoured: each reconnection waits at least 300 ms after the response ended.
        for end, req in zip(s.ended, s.requests[1:]):
            check(req["time"] - end >= 0.29, f"reconnect: waited {req['time'] - end:.3f}s < retry")


def test_restart():
    # A reconnection across a server restart resumes from the last id with Last-Event-ID.
    s1 = Server(per_response=3, retry=100, hold=True)
    port = s1.port
    s2 = None
    try:
        with Follower(["--max-events", "6", "--timeout", "30", s1.url()]) as f:
            first = f.read(3, timeout=10)
            check(len(first) == 3, f"restart: first server's events {first}")
            s1.stop()
            time.sleep(0.3)  # the client finds nobody listening for a while
            s2 = Server(port=port, per_response=3, retry=100, hold=True)
            rest = f.read(3, timeout=15)
            check(f.wait(10) == 0, "restart: exit 0 after --max-events")
            check(any("reconnecting" in line for line in f.stderr), f"restart: stderr {f.stderr}")
        got = parse_json_lines(first + rest, "restart")
        check(got == [ev(f"event {n}", str(n)) for n in range(1, 7)], f"restart: {first + rest}")
        check(len(s2.requests) >= 1 and s2.requests[0]["headers"].get("Last-Event-ID") == "3",
              f"restart: second server got {s2.requests[:1]}")
    finally:
        if s2:
            s2.stop()
        if not s1.stopping.is_set():
            s1.stop()


def main():
    global SSE_CAT
    if len(sys.argv) != 3:
        print(__doc__ or "usage: driver.py SSE_CAT TEST", file=sys.stderr)
        return 2
    SSE_CAT = os.path.abspath(sys.argv[1])
    tests = {"stdin": test_stdin, "exit_codes": test_exit_codes, "follow": test_follow,
             "reconnect": test_reconnect, "restart": test_restart}
    tests[sys.argv[2]]()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print(f"{sys.argv[2]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
