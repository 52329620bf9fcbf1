"""A small OpenID Connect provider for gavel's tests, built on joserfc
(the JOSE library of the Authlib project), which gavel did not write.

Usage: provider.py PORT
Serves the discovery document and the JWKS, and for the tests:
  POST /mint    {"alg", "kid"?, "claims"}   -> a token signed with that key
  POST /forge   {"kind", "claims"}          -> a crafted attack token
  POST /rotate  {}                          -> replaces the RSA key (new kid)
  GET  /stats                               -> {"jwks_fetches": n}
and the authorization code flow with PKCE (S256) for browser sign-in:
  GET  /authorize  (OIDC parameters)        -> a sign-in form (email)
  POST /authorize  (the form)               -> 302 to redirect_uri?code&state
  POST /token      (grant_type=authorization_code, code, redirect_uri,
                    client_id, code_verifier) -> {"id_token", …}
and for MCP clients that log in by themselves (the MCP authorization
spec): the same metadata at /.well-known/oauth-authorization-server,
dynamic client registration (POST /register, RFC 7591, public clients),
and a `resource` (RFC 8707) on /authorize and /token, which makes the
token response's access_token a JWT with that resource as its audience;
and the device authorization grant (RFC 8628) for `gavel login`:
  POST /device_authorization (client_id)   -> device_code, user_code, …
  POST /device     (user_code, email)       -> the user approves
  POST /token      (grant_type=…:device_code) -> pending, then tokens
Users and their groups are in USERS.
Default claims: iss, aud "gavel", sub, iat, nbf = now, exp = now + 300.
"""
import base64
import hashlib
import hmac
import html
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

PORT = int(sys.argv[1])
ISSUER = f"http://127.0.0.1:{PORT}"
lock = threading.Lock()
keys = {
    "RS256": RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
    "ES256": ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
    "EdDSA": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"}),
}
stats = {"jwks_fetches": 0, "rotations": 0}
USERS = {"dana@x": ["dba"], "owner@x": ["dba"], "erin@x": ["dev"]}
codes = {}  # code -> what it was issued for; each is good once
devices = {}  # device_code -> {"user_code", "client_id", "email"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_with_defaults(claims):
    now = int(time.time())
    out = {"iss": ISSUER, "aud": "gavel", "sub": "subject-1", "iat": now, "nbf": now, "exp": now + 300}
    out.update(claims)
    return {k: v for k, v in out.items() if v is not None}


def mint(alg, kid, claims):
    key = keys[alg]
    header = {"alg": alg, "kid": kid or key.kid}
    return jwt.encode(header, claims_with_defaults(claims), key, algorithms=[alg])


def forge(kind, claims):
    payload = claims_with_defaults(claims)
    rsa = keys["RS256"]
    if kind == "none":
        header = {"alg": "none", "kid": rsa.kid, "typ": "JWT"}
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."
    if kind == "hs256-public":
        # Key confusion: HMAC keyed with the RSA public key, as a verifier
        # that lets the token pick the algorithm would check it.
        header = {"alg": "HS256", "kid": rsa.kid, "typ": "JWT"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
        secret = rsa.as_pem(private=False)
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(sig)}"
    if kind == "tampered":
        # Signed, then the payload swapped for another.
        token = mint("RS256", None, claims)
        head, _, sig = token.split(".")
        forged = dict(payload, email="root@x", sub="root")
        return f"{head}.{b64(json.dumps(forged).encode())}.{sig}"
    raise ValueError(kind)


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

    def redirect(self, location):
        self.send_response(302)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/authorize":
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                self.reply({"error": "invalid_request"}, 400)
                return
            hidden = "".join(
                f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items()
            )
            page = (
                "<!doctype html><title>Sign in</title><form method=post action=/authorize>"
                f"{hidden}<label for=email>Email</label> <input id=email name=email>"
                "<button type=submit>Sign in</button></form>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            self.reply({
                "issuer": ISSUER,
                "jwks_uri": f"{ISSUER}/jwks",
                "authorization_endpoint": f"{ISSUER}/authorize",
                "token_endpoint": f"{ISSUER}/token",
                "registration_endpoint": f"{ISSUER}/register",
                "device_authorization_endpoint": f"{ISSUER}/device_authorization",
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "subject_types_supported": ["public"],
            })
        elif self.path == "/jwks":
            with lock:
                stats["jwks_fetches"] += 1
                body = {"keys": [k.as_dict(private=False) for k in keys.values()]}
            self.reply(body)
        elif self.path == "/stats":
            with lock:
                self.reply(dict(stats))
        else:
            self.reply({"error": "not found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.path in ("/authorize", "/token", "/device_authorization", "/device"):
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            with lock:
                if self.path == "/authorize":
                    email = form.get("email", "")
                    if email not in USERS:
                        self.reply({"error": "access_denied"}, 403)
                        return
                    code = secrets.token_urlsafe(24)
                    codes[code] = {
                        "client_id": form["client_id"], "redirect_uri": form["redirect_uri"],
                        "challenge": form["code_challenge"], "nonce": form.get("nonce"), "email": email,
                        "resource": form.get("resource"),
                    }
                    self.redirect(f"{form['redirect_uri']}?{urlencode({'code': code, 'state': form.get('state', '')})}")
                    return
                if self.path == "/device_authorization":
                    device_code = secrets.token_urlsafe(24)
                    user_code = secrets.token_hex(4).upper()
                    devices[device_code] = {"user_code": user_code, "client_id": form["client_id"], "email": None}
                    self.reply({
                        "device_code": device_code, "user_code": user_code,
                        "verification_uri": f"{ISSUER}/device",
                        "verification_uri_complete": f"{ISSUER}/device?user_code={user_code}",
                        "expires_in": 300, "interval": 1,
                    })
                    return
                if self.path == "/device":
                    for d in devices.values():
                        if d["user_code"] == form.get("user_code") and form.get("email") in USERS:
                            d["email"] = form["email"]
                            self.reply({"approved": True})
                            return
                    self.reply({"error": "unknown user_code"}, 400)
                    return
                if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
                    d = devices.get(form.get("device_code", ""))
                    if d is None or d["client_id"] != form.get("client_id"):
                        self.reply({"error": "invalid_grant"}, 400)
                    elif d["email"] is None:
                        self.reply({"error": "authorization_pending"}, 400)
                    else:
                        devices.pop(form["device_code"])
                        who = {"sub": f"sub-{d['email']}", "email": d["email"], "email_verified": True,
                               "groups": USERS[d["email"]]}
                        self.reply({
                            "access_token": mint("ES256", None, dict(who, aud="gavel")),
                            "id_token": mint("RS256", None, dict(who, aud=d["client_id"])),
                            "token_type": "Bearer",
                        })
                    return
                grant = codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "")
                challenge = b64(hashlib.sha256(verifier.encode()).digest())
                if (grant is None or form.get("grant_type") != "authorization_code"
                        or grant["client_id"] != form.get("client_id")
                        or grant["redirect_uri"] != form.get("redirect_uri")
                        or grant["challenge"] != challenge):
                    self.reply({"error": "invalid_grant"}, 400)
                    return
                claims = {
                    "aud": grant["client_id"], "sub": f"sub-{grant['email']}", "email": grant["email"],
                    "email_verified": True, "groups": USERS[grant["email"]], "nonce": grant["nonce"],
                }
                access = secrets.token_urlsafe(16)
                resource = form.get("resource") or grant.get("resource")
                if resource:
                    # RFC 8707: an access token for exactly that resource.
                    if grant.get("resource") and form.get("resource") and grant["resource"] != form["resource"]:
                        self.reply({"error": "invalid_target"}, 400)
                        return
                    access = mint("ES256", None, {
                        "aud": resource, "sub": f"sub-{grant['email']}", "email": grant["email"],
                        "email_verified": True, "groups": USERS[grant["email"]], "client_id": grant["client_id"],
                    })
                self.reply({"id_token": mint("RS256", None, claims), "token_type": "Bearer",
                            "access_token": access, "expires_in": 300})
            return
        if self.path == "/register":
            meta = json.loads(raw or b"{}")
            registered = dict(meta, client_id=f"dyn-{secrets.token_hex(6)}",
                              client_id_issued_at=int(time.time()),
                              token_endpoint_auth_method="none")
            self.reply(registered, 201)
            return
        req = json.loads(raw or b"{}")
        with lock:
            if self.path == "/mint":
                self.reply({"token": mint(req["alg"], req.get("kid"), req.get("claims", {}))})
            elif self.path == "/forge":
                self.reply({"token": forge(req["kind"], req.get("claims", {}))})
            elif self.path == "/rotate":
                stats["rotations"] += 1
                keys["RS256"] = RSAKey.generate_key(2048, parameters={"kid": f"rsa-{stats['rotations'] + 1}"})
                self.reply({"kid": keys["RS256"].kid})
            else:
                self.reply({"error": "not found"}, 404)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
