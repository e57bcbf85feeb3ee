#!/usr/bin/env python3
"""ctest check of baseline_server's delivery (it is the bound ssepp is measured against, so it
must be correct, not only fast): with the publisher at --rate max and --events N, every stream,
a slow one included, gets the response head, then every event from its first one to N, ids
consecutive, each event whole. Loopback only; bounded (30 s).
    baseline_check.py BINDIR"""
import os, re, socket, subprocess, sys, threading, time

EVENTS = 100000
bindir = sys.argv[1]
server = subprocess.Popen([os.path.join(bindir, "baseline_server"), "--port", "0", "--rate", "max",
                           "--events", str(EVENTS), "--payload", "64"], stdout=subprocess.PIPE, text=True)
deadline = time.monotonic() + 30
try:
    line = server.stdout.readline()
    port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line).group(1))
    results = {}

    def stream(name, slow):
        s = socket.socket()
        if slow:  # a small window and slow reads: the ring must hold its place, partial writes included
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        buf = b""
        while time.monotonic() < deadline:
            chunk = s.recv(4096 if slow else 65536)
            if not chunk:
                break
            buf += chunk
            if buf.endswith(b"\n\n") and b"id: %d\n" % EVENTS in buf[-200:]:
                break  # the last event, whole
            if slow:
                time.sleep(0.001)
        s.close()
        results[name] = buf

    threads = [threading.Thread(target=stream, args=(f"s{i}", i == 0)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    assert len(results) == 4, f"streams that finished: {sorted(results)}"
    for name, buf in sorted(results.items()):
        head, sep, body = buf.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head, (name, head[:200])
        assert body.startswith(b"retry: 5000\n\n"), (name, body[:40])
        events = body[len(b"retry: 5000\n\n"):].split(b"\n\n")
        assert events[-1] == b"", (name, "a partial event at the end", events[-1][:80])
        ids = []
        for e in events[:-1]:
            m = re.fullmatch(rb"id: (\d+)\ndata: (\d+) x+", e)
            assert m and len(e) - len(m.group(1)) - len(b"id: \ndata: ") == 64, (name, e[:100])
            ids.append(int(m.group(1)))
        assert ids and ids[-1] == EVENTS, (name, ids[-3:])
        assert ids == list(range(ids[0], EVENTS + 1)), (name, "ids not consecutive")
        print(f"{name}: events {ids[0]}..{ids[-1]} ({len(ids)}), {len(buf)} bytes")
finally:
    server.terminate()
    server.wait(5)
