#!/usr/bin/env python3
"""Scrapes an example server's /metrics with a real Prometheus parser (issue 14).

    metrics_scrape.py upload PATH/TO/upload_server [--names]
    metrics_scrape.py notify PATH/TO/notify_server [--names]

Starts the server on 127.0.0.1 (port 0, a temp database), runs a scenario over real sockets
and checks each scrape with prometheus_client's text parser (Debian's python3-prometheus-client):
the content type, # HELP and # TYPE for every family, counters named *_total and parsed as
counters, no two families of one name, and the values moving as the scenario says: the
connections gauge, events_total after publishing, bytes_written_total growing while a stream is
still open (not only when it closes), closed_total{reason="client_gone"} once a client left.
With --names, one scrape of a fresh server, checked for family names that clash in the
parser's eyes (a gauge X beside a counter X_total): apart, so that a naming problem does not
hide what the scenarios check. Every wait is bounded; exit status 0 when all holds, 1 with the
reasons otherwise.
"""

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("metrics_scrape.py: no prometheus_client module for " + sys.executable +
             ": install Debian's python3-prometheus-client (scripts/deps.sh --tests)")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
failures = []
check_names = False  # --names


def check(cond, what):
    if not cond:
        if what not in failures:  # each scrape checks the format again: say it once
            print("FAILED: " + what, flush=True)
        failures.append(what)
    return cond


def eventually(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return check(False, "timed out after %ss waiting for %s" % (seconds, what))
        time.sleep(0.02)


class Server:
    def __init__(self, binary, flags):
        self.dir = tempfile.TemporaryDirectory(prefix="ssepp-scrape-")
        db = os.path.join(self.dir.name, "db.sqlite")
        self.proc = subprocess.Popen([binary, "--port", "0", "--db", db] + flags,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = b""
        deadline = time.monotonic() + 10
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise RuntimeError("no URL line from %s in time: %r" % (binary, line))
            chunk = os.read(self.proc.stdout.fileno(), 512)
            if not chunk:
                raise RuntimeError("%s exited: %r %r" % (binary, line, self.proc.stderr.read()))
            line += chunk
        self.port = int(re.search(rb":(\d+)/", line).group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()

    def request(self, method, path, body=None, headers=None):
        # http.client, not urllib: no proxy from the environment on the way to 127.0.0.1.
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    def scrape(self):
        """One scrape, checked: {(sample name, ((label, value), ...)): value}."""
        r, body = self.request("GET", "/metrics")
        check(r.status == 200, "/metrics answers 200 (got %d)" % r.status)
        check(r.getheader("Content-Type") == CONTENT_TYPE,
              "/metrics is %s (got %s)" % (CONTENT_TYPE, r.getheader("Content-Type")))
        text = body.decode("utf-8")
        check_exposition(text)
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples


def check_exposition(text):
    helps, types, sample_names = {}, {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            helps[name] = helps.get(name, 0) + 1
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            check(name not in types, "one # TYPE line for %s" % name)
            check(name in helps, "# HELP before # TYPE for %s" % name)
            types[name] = kind
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            sample_names.append(name)
            check(name in types and name in helps, "%s has # HELP and # TYPE lines before it" % name)
    for name, n in helps.items():
        check(n == 1, "one # HELP line for %s (got %d)" % (name, n))
    for name, kind in types.items():
        check(kind in ("counter", "gauge"), "%s is a counter or a gauge (got %s)" % (name, kind))
        check((kind == "counter") == name.endswith("_total"),
              "%s: counters and only counters end in _total" % name)

    families = list(text_string_to_metric_families(text))
    names = {}
    for f in families:
        check(f.documentation != "", "family %s has a HELP text" % f.name)
        check(f.type in ("counter", "gauge"), "family %s parses as a counter or a gauge (got %s)" % (f.name, f.type))
        if f.type == "counter":
            check(all(s.name == f.name + "_total" for s in f.samples),
                  "counter %s: its samples are %s_total" % (f.name, f.name))
        names.setdefault(f.name, []).append(f.type)
    for name, kinds in names.items():
        if not check_names:
            break
        # prometheus_client (as OpenMetrics) takes a counter's family name without _total: a
        # gauge X beside a counter X_total are one name twice, which its own registry refuses
        # ("Duplicated timeseries") and OpenMetrics parsers reject.
        check(len(kinds) == 1, "one family named %s (got %s: a gauge %s beside a counter %s_total?)"
              % (name, " and ".join(kinds), name, name))
    # Every sample line is in some family the parser returned, as a counter when named _total.
    parsed = {s.name for f in families for s in f.samples}
    check(set(sample_names) <= parsed, "the parser returns every sample")


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


class Stream:
    """An event stream on a raw socket: the head, then body bytes as they come."""

    def __init__(self, port, path, headers=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n" % path
        for k, v in (headers or {}).items():
            head += "%s: %s\r\n" % (k, v)
        self.sock.sendall((head + "\r\n").encode())
        self.data = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in self.data:
            self.read_some(deadline)
        head, _, self.body = self.data.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])

    def read_some(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.sock], [], [], left)[0]:
            raise RuntimeError("stream: nothing in time")
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("stream: closed")
        self.data += chunk
        if hasattr(self, "body"):
            self.body += chunk

    def events(self):
        return self.body.count(b"\n\n")

    def read_events(self, n, seconds=10):
        deadline = time.monotonic() + seconds
        while self.events() < n:
            self.read_some(deadline)

    def close(self):
        self.sock.close()


def bytes_grow_while_open(server, stream, more_events):
    """bytes_written_total grows while `stream` is still open, by what it received."""
    before = server.scrape()
    got = stream.events()
    more_events()
    stream.read_events(got + 1)
    # The event was read by the client: the transport took it, so it is counted now.
    eventually(lambda: value(server.scrape(), "ssepp_bytes_written_total")
               > value(before, "ssepp_bytes_written_total"),
               5, "bytes_written_total to grow while the stream is open")
    after = server.scrape()
    check(value(after, "ssepp_open_connections") == value(before, "ssepp_open_connections") >= 1,
          "the stream is still open while its bytes are counted")
    check(value(after, "ssepp_closed_total", reason="client_gone") == value(before, "ssepp_closed_total", reason="client_gone"),
          "no stream closed meanwhile")


def client_leaves(server, stream, before, nudge=lambda: None):
    stream.close()

    def gone():
        nudge()
        m = server.scrape()
        return (value(m, "ssepp_closed_total", reason="client_gone") == value(before, "ssepp_closed_total", reason="client_gone") + 1
                and value(m, "ssepp_open_connections") == value(before, "ssepp_open_connections") - 1)
    eventually(gone, 15, 'closed_total{reason="client_gone"} + 1 and one connection less after the client left')


def scenario_upload(binary):
    # An import slow enough to watch: 20,000 rows, 5 ms at each checkpoint (every 64 rows).
    s = Server(binary, ["--import-pause-us", "5000"])
    try:
        m0 = s.scrape()
        check(value(m0, "ssepp_open_connections") == 0, "no stream at first")
        check(value(m0, "upload_jobs_accepted_total") == 0, "no job at first")
        csv = "sku,name,price,quantity\n" + "".join("SKU-%05d,item %d,%d.50,%d\n" % (i, i, i % 90, i % 7)
                                                    for i in range(20000))
        r, body = s.request("POST", "/api/upload/csv", csv.encode(), {"Content-Type": "text/csv"})
        check(r.status == 202, "upload accepted (got %d %s)" % (r.status, body))
        job = json.loads(body)["transaction_id"]
        stream = Stream(s.port, "/api/upload/%s/events" % job)
        check(stream.status == 200, "the job's stream opens")
        eventually(lambda: value(s.scrape(), "ssepp_open_connections") == 1, 5, "connections gauge at 1")
        stream.read_events(2)
        m1 = s.scrape()
        check(value(m1, "upload_jobs_accepted_total") == 1, "upload_jobs_accepted_total counts the job")
        check(value(m1, "ssepp_events_total") >= 1, "events_total counts the job's progress events")
        check(value(m1, "ssepp_connections_total") == 1, "connections_total counts the attach")
        # Progress comes every 250 ms at most while the job runs: wait for the next one.
        bytes_grow_while_open(s, stream, lambda: None)
        check(value(s.scrape(), "ssepp_events_total") > value(m1, "ssepp_events_total"),
              "events_total grows as the job publishes")
        client_leaves(s, stream, s.scrape())
        eventually(lambda: value(s.scrape(), "upload_jobs_ended_total", outcome="completed") == 1, 60,
                   'upload_jobs_ended_total{outcome="completed"} after the import')
        m2 = s.scrape()
        check(value(m2, "upload_jobs_queued") == 0, "no job queued once it ended")
        check(value(m2, "ssepp_open_connections") == 0, "no stream left")
    finally:
        s.stop()


def scenario_notify(binary):
    s = Server(binary, ["--export-ms", "100"])
    try:
        m0 = s.scrape()
        check(value(m0, "ssepp_open_connections") == 0, "no stream at first")
        r, _ = s.request("POST", "/api/login", json.dumps({"user": "kim", "role": "customer"}),
                         {"Content-Type": "application/json"})
        check(r.status == 200, "login")
        cookie = r.getheader("Set-Cookie").split(";")[0]
        check(value(s.scrape(), "notify_sessions") == 1, "notify_sessions counts the login")

        def notify(text):
            r, body = s.request("POST", "/api/notifications/kim", json.dumps({"data": text}),
                                {"Content-Type": "application/json", "Cookie": cookie})
            check(r.status == 202, "notification accepted (got %d %s)" % (r.status, body))

        stream = Stream(s.port, "/api/events", {"Cookie": cookie})
        check(stream.status == 200, "kim's stream opens")
        eventually(lambda: value(s.scrape(), "ssepp_open_connections") == 1, 5, "connections gauge at 1")
        before = s.scrape()
        for i in range(3):
            notify("hello %d" % i)
        stream.read_events(3)
        m1 = s.scrape()
        # events_total counts the ticker's ticks too: at least the three.
        check(value(m1, "ssepp_events_total") >= value(before, "ssepp_events_total") + 3,
              "events_total counts the three notifications")
        check(value(m1, "notify_deliveries_total") == value(before, "notify_deliveries_total") + 3,
              "notify_deliveries_total counts three deliveries")
        bytes_grow_while_open(s, stream, lambda: notify("one more"))
        ticker = Stream(s.port, "/api/ticker")
        eventually(lambda: value(s.scrape(), "notify_ticker_streams") == 1, 5, "notify_ticker_streams at 1")
        check(value(s.scrape(), "ssepp_open_connections") == 2, "ssepp_open_connections counts user and ticker streams")
        ticker.close()
        eventually(lambda: value(s.scrape(), "ssepp_open_connections") == 1, 15, "the ticker stream to go")
        # A user stream's client that leaves is seen by the vanished-client watch, or at the
        # next write (nudged by a notification).
        client_leaves(s, stream, s.scrape())
    finally:
        s.stop()


def names_only(binary):
    s = Server(binary, [])
    try:
        s.scrape()
    finally:
        s.stop()


def main():
    global check_names
    args = sys.argv[1:]
    check_names = "--names" in args
    args = [a for a in args if a != "--names"]
    if len(args) != 2 or args[0] not in ("upload", "notify"):
        sys.exit("usage: metrics_scrape.py upload|notify SERVER_BINARY [--names]")
    if check_names:
        names_only(args[1])
    else:
        (scenario_upload if args[0] == "upload" else scenario_notify)(args[1])
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
