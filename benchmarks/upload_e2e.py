#!/usr/bin/env python3
"""End to end: a 1,000,000-row CSV (about 50 MB) POSTed to upload_server, followed over SSE to
its terminal event. Prints the time from the first byte of the POST to `complete`, and the
largest gap between consecutive events while the job ran (the progress rule says <= 250 ms).
Usage: upload_e2e.py <build>/examples/upload_server [rows]. Loopback only; bounded in time."""
import http.client, json, os, random, subprocess, sys, tempfile, time

server_bin = sys.argv[1]
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
rng = random.Random(42)
lines = ["sku,name,price,quantity"]
for i in range(rows):
    lines.append(f"SKU-{i:07d},Product {i} standard edition,{rng.randint(100, 99999) / 100:.2f},{rng.randint(0, 500)}")
body = ("\n".join(lines) + "\n").encode()

with tempfile.TemporaryDirectory() as tmp:
    proc = subprocess.Popen([server_bin, "--port", "0", "--db", os.path.join(tmp, "bench.db")],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1].strip("/\n"))
        start = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/api/upload/csv", body, {"Content-Type": "text/csv"})
        r = c.getresponse()
        answer = json.loads(r.read())
        accepted = time.monotonic()
        assert r.status == 202, (r.status, answer)
        s = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        s.request("GET", answer["events"])
        stream = s.getresponse()
        last = None
        gaps = []
        event = None
        terminal = None
        deadline = start + 120
        while time.monotonic() < deadline:
            line = stream.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line == "" and event:
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
                if event in ("complete", "error"):
                    terminal = event
                    break
                event = None
        done = time.monotonic()
        print(json.dumps({"rows": rows, "bytes": len(body), "accepted_s": round(accepted - start, 3),
                          "total_s": round(done - start, 3), "terminal": terminal,
                          "max_event_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
                          "rows_per_s": round(rows / (done - start))}))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
