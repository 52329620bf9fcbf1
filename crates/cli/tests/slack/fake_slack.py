"""A stand-in for Slack's Web API for gavel's tests: the methods gavel
calls (chat.postMessage, chat.update, chat.postEphemeral, views.open,
users.info), answered as Slack documents them, each call recorded.

Usage: fake_slack.py PORT BOT_TOKEN OUT_FILE
Requests must carry `Authorization: Bearer BOT_TOKEN` (else
{"ok": false, "error": "invalid_auth"}). JSON bodies for the write methods,
form bodies for users.info. One JSON line per call in OUT_FILE:
{"method", "body"}. The first chat.postMessage is rate-limited as Slack
does it (HTTP 429 with Retry-After: 1) and recorded as
"chat.postMessage(429)".
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

PORT, TOKEN, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
USERS = {
    "U_ALICE": {"email": "alice@x", "confirmed": True},
    "U_OWNER": {"email": "owner@x", "confirmed": True},
    "U_EVE": {"email": "eve@x", "confirmed": False},
}
lock = threading.Lock()
counter = {"ts": 0, "posts": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        method = self.path.rsplit("/", 1)[-1]
        if self.headers.get("authorization") != f"Bearer {TOKEN}":
            self.reply({"ok": False, "error": "invalid_auth"})
            return
        if self.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(raw or b"{}")
        else:
            body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with lock:
            if method == "chat.postMessage":
                counter["posts"] += 1
                if counter["posts"] == 1:
                    with open(OUT, "a") as f:
                        f.write(json.dumps({"method": method + "(429)", "body": body}) + "\n")
                    data = json.dumps({"ok": False, "error": "ratelimited"}).encode()
                    self.send_response(429)
                    self.send_header("retry-after", "1")
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
            counter["ts"] += 1
            ts = f"1700000000.{counter['ts']:06d}"
            with open(OUT, "a") as f:
                # `_ts`: the ts this call's answer carries, for the tests.
                f.write(json.dumps({"method": method, "body": dict(body, _ts=ts)}) + "\n")
        if method == "chat.postMessage":
            if "channel" not in body or not (body.get("text") or body.get("blocks")):
                self.reply({"ok": False, "error": "no_text"})
            else:
                self.reply({"ok": True, "channel": body["channel"], "ts": ts, "message": {"ts": ts}})
        elif method == "chat.update":
            self.reply({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})
        elif method == "chat.postEphemeral":
            self.reply({"ok": True, "message_ts": ts})
        elif method == "views.open":
            if not body.get("trigger_id"):
                self.reply({"ok": False, "error": "invalid_trigger"})
            else:
                self.reply({"ok": True, "view": {"id": "V1", **body.get("view", {})}})
        elif method == "users.info":
            u = USERS.get(body.get("user"))
            if u is None:
                self.reply({"ok": False, "error": "user_not_found"})
            else:
                self.reply({"ok": True, "user": {"id": body["user"], "is_email_confirmed": u["confirmed"],
                                                 "profile": {"email": u["email"]}}})
        else:
            self.reply({"ok": False, "error": "unknown_method"})


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
