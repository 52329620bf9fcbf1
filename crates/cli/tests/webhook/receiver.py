"""A webhook consumer for gavel's tests, written independently of gavel:
it checks X-Gavel-Signature (t=…,v1=HMAC-SHA256(secret, "t.body"), within
five minutes, compared in constant time) with Python's hmac module.

Usage: receiver.py PORT SECRET FAIL_FIRST OUT_FILE
Answers 500 to the first FAIL_FIRST deliveries, then 200; appends one JSON
line per delivery to OUT_FILE: {"valid", "event", "request_id", "state"}.
"""
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SECRET, FAIL_FIRST, OUT = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
seen = {"n": 0}


def valid(header, body):
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - t) > 300:
        return False
    expected = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with lock:
            seen["n"] += 1
            n = seen["n"]
            ok = valid(self.headers.get("x-gavel-signature", ""), body)
            event = json.loads(body) if ok else {}
            with open(OUT, "a") as f:
                f.write(json.dumps({
                    "valid": ok, "event": event.get("event"), "request_id": event.get("request_id"),
                    "state": event.get("state"), "attempt": n,
                }) + "\n")
        self.send_response(500 if n <= FAIL_FIRST else 200)
        self.send_header("content-length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
