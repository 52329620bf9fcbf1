"""Request creation → first delivery on each approval channel.

Runs receivers for a signed webhook, Slack's chat.postMessage and a Teams
Workflows webhook in this process, sends REQUESTS approval-needing actions
to gavel one at a time (POST /api/v1/actions), and times, per channel, from
the moment the action is sent (so the gate's policy check, durable audit
record and stored request are included) to the moment the channel's first
message for that request arrives. Clocks: one process, perf_counter_ns.

Usage: channels.py API_URL AGENT_TOKEN REQUESTS WEBHOOK_PORT SLACK_PORT TEAMS_PORT
"""
import json
import re
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API, TOKEN, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
PORTS = {"webhook": int(sys.argv[4]), "slack": int(sys.argv[5]), "teams": int(sys.argv[6])}
arrived = {name: {} for name in PORTS}
lock = threading.Lock()
ID = re.compile(r"gavel request ([0-9a-f-]{36}) is pending")


def handler(name):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per response (flushed after each request): unbuffered,
        # headers and body leave in two segments, and Nagle plus the
        # client's delayed ACK stall every response that gavel reads to
        # its end by ~40 ms, which real Slack and Teams front ends do not.
        wbufsize = 64 * 1024

        def log_message(self, *a):
            pass

        def do_POST(self):
            now = time.perf_counter_ns()
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            text = body.decode()
            rid = None
            if name == "webhook":
                v = json.loads(text)
                if v.get("event") == "request.pending":
                    rid = v["request_id"]
            else:
                m = ID.search(text)
                rid = m.group(1) if m else None
            if rid:
                with lock:
                    arrived[name].setdefault(rid, now)
            reply = json.dumps({"ok": True, "ts": "1.000001", "channel": "C1"}).encode()
            self.send_response(200 if name != "teams" else 202)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    return H


for name, port in PORTS.items():
    server = ThreadingHTTPServer(("127.0.0.1", port), handler(name))
    threading.Thread(target=server.serve_forever, daemon=True).start()

sent = {}
answered_ms = []
for i in range(N):
    body = json.dumps({"resource": "bench-db", "action": "sql.ddl",
                       "operation": f"DROP TABLE t{i}", "intent": "benchmark"}).encode()
    req = urllib.request.Request(f"{API}/api/v1/actions", data=body, method="POST",
                                 headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    t0 = time.perf_counter_ns()
    with urllib.request.urlopen(req) as r:
        v = json.loads(r.read())
    answered_ms.append((time.perf_counter_ns() - t0) / 1e6)
    assert v["verdict"] == "pending", v
    sent[v["request_id"]] = t0
    time.sleep(0.01)

deadline = time.time() + 30
while time.time() < deadline and any(len(arrived[n]) < N for n in PORTS):
    time.sleep(0.1)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


print(f"{N} requests, one at a time; milliseconds from POST /api/v1/actions sent to the first message")
print(f"{'':28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
print(f"{'POST answered (pending)':28}{pct(answered_ms, 50):>8.2f}{pct(answered_ms, 90):>8.2f}{pct(answered_ms, 99):>8.2f}{max(answered_ms):>8.2f}")
for name in PORTS:
    got = [(arrived[name][rid] - t0) / 1e6 for rid, t0 in sent.items() if rid in arrived[name]]
    missing = N - len(got)
    label = {"webhook": "signed webhook", "slack": "Slack chat.postMessage", "teams": "Teams Workflows webhook"}[name]
    if not got:
        print(f"{label:28} nothing arrived")
        continue
    print(f"{label:28}{pct(got, 50):>8.2f}{pct(got, 90):>8.2f}{pct(got, 99):>8.2f}{max(got):>8.2f}"
          + (f"  ({missing} missing)" if missing else ""))
