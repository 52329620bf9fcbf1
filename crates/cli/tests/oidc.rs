//! OpenID Connect tokens against a provider gavel did not write: a small
//! OIDC provider on joserfc (the Authlib project's JOSE library),
//! `tests/oidc/provider.py`, serving discovery and JWKS and minting tokens
//! (RS256, ES256, EdDSA), plus the attacks a verifier must refuse.

mod harness;

use harness::{BOB, Gavel, free_port};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Provider {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    async fn start() -> Provider {
        let port = free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.py");
        let child = Command::new("python3")
            .args(["-W", "ignore"])
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let p = Provider {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = p
                .http
                .get(format!("{}/.well-known/openid-configuration", p.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return p;
            }
            assert!(Instant::now() < deadline, "the OIDC provider did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn mint(&self, alg: &str, claims: Value) -> String {
        let v = self
            .post("/mint", json!({"alg": alg, "claims": claims}))
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    async fn forge(&self, kind: &str, claims: Value) -> String {
        let v = self
            .post("/forge", json!({"kind": kind, "claims": claims}))
            .await;
        v["token"].as_str().unwrap().to_owned()
    }

    async fn jwks_fetches(&self) -> u64 {
        let v: Value = self
            .http
            .get(format!("{}/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["jwks_fetches"].as_u64().unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn human(email: &str) -> Value {
    json!({"sub": format!("sub-{email}"), "email": email, "email_verified": true, "groups": ["dba"]})
}

async fn start() -> (Provider, Gavel) {
    let p = Provider::start().await;
    let extra = format!(
        r#"
[[identity.oidc]]
issuer = "{url}"
audience = "gavel"
clock_skew = "30s"
jwks_min_refresh_interval = "2s"
agents = {{ "ci-client" = "bot", "ghost-client" = "no-such-agent" }}
"#,
        url = p.url
    );
    let g = Gavel::start_custom("60s", harness::POLICIES, &extra).await;
    (p, g)
}

async fn whoami(g: &Gavel, token: &str) -> (u16, Value) {
    g.get("/api/v1/whoami", token).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_the_provider_authenticate_with_every_supported_algorithm() {
    let (p, g) = start().await;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = p.mint(alg, human("dana@x")).await;
        let (status, v) = whoami(&g, &token).await;
        assert_eq!(status, 200, "{alg}: {v}");
        assert_eq!(v["principal"]["id"], "dana@x", "{v}");
        assert_eq!(v["principal"]["groups"], json!(["dba"]), "{v}");
    }
    // Within the clock skew an expired token still passes; past it, not.
    let token = p
        .mint(
            "RS256",
            json!({"email": "dana@x", "email_verified": true, "exp": now() - 10}),
        )
        .await;
    assert_eq!(whoami(&g, &token).await.0, 200);
    // Static tokens keep working beside OIDC.
    assert_eq!(whoami(&g, BOB).await.0, 200);
    // Client credentials map to the agent `bot` (owner owner@x).
    let token = p
        .mint(
            "ES256",
            json!({"sub": "ci-client", "client_id": "ci-client"}),
        )
        .await;
    let (status, v) = whoami(&g, &token).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["principal"]["id"], "bot", "{v}");
    assert_eq!(v["principal"]["owner"], "owner@x", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused() {
    let (p, g) = start().await;
    let t = now();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            p.mint(
                "RS256",
                json!({"email": "e@x", "email_verified": true, "exp": t - 120}),
            )
            .await,
        ),
        (
            "not yet valid",
            p.mint(
                "RS256",
                json!({"email": "e@x", "email_verified": true, "nbf": t + 120}),
            )
            .await,
        ),
        (
            "wrong audience",
            p.mint(
                "ES256",
                json!({"email": "e@x", "email_verified": true, "aud": "other"}),
            )
            .await,
        ),
        (
            "wrong issuer",
            p.mint(
                "RS256",
                json!({"email": "e@x", "email_verified": true, "iss": "https://evil.example"}),
            )
            .await,
        ),
        (
            "email not verified",
            p.mint("RS256", json!({"email": "e@x", "email_verified": false}))
                .await,
        ),
        (
            "email_verified missing",
            p.mint("RS256", json!({"email": "e@x"})).await,
        ),
        (
            "no exp",
            p.mint(
                "RS256",
                json!({"email": "e@x", "email_verified": true, "exp": null}),
            )
            .await,
        ),
        ("alg none", p.forge("none", human("e@x")).await),
        (
            "HS256 signed with the RSA public key",
            p.forge("hs256-public", human("e@x")).await,
        ),
        ("tampered payload", p.forge("tampered", human("e@x")).await),
        (
            "client mapped to a missing agent",
            p.mint(
                "RS256",
                json!({"sub": "ghost-client", "client_id": "ghost-client"}),
            )
            .await,
        ),
        (
            "unmapped client without a human claim",
            p.mint(
                "RS256",
                json!({"sub": "other-client", "client_id": "other-client"}),
            )
            .await,
        ),
    ];
    for (what, token) in &cases {
        let (status, v) = whoami(&g, token).await;
        assert_eq!(status, 401, "{what} was accepted: {v}");
        let text = v.to_string();
        assert!(
            !text.contains(token.as_str()),
            "{what}: the token was echoed"
        );
    }
    // A kid the issuer does not have: refused, and a flood of them costs
    // the issuer at most one JWKS fetch per refresh interval.
    let good = p.mint("RS256", human("e@x")).await;
    assert_eq!(whoami(&g, &good).await.0, 200);
    let before = p.jwks_fetches().await;
    let unknown = p
        .post(
            "/mint",
            json!({"alg": "RS256", "kid": "made-up", "claims": human("e@x")}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..20 {
        assert_eq!(whoami(&g, &unknown).await.0, 401);
    }
    let fetched = p.jwks_fetches().await - before;
    assert!(fetched <= 2, "{fetched} JWKS fetches for 20 unknown kids");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_is_picked_up() {
    let (p, g) = start().await;
    let old = p.mint("RS256", human("r@x")).await;
    assert_eq!(whoami(&g, &old).await.0, 200);
    let rotated = p.post("/rotate", json!({})).await;
    assert_eq!(rotated["kid"], "rsa-2");
    // Past the refresh interval, a token with the new kid makes gavel
    // fetch the JWKS again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let new = p.mint("RS256", human("r@x")).await;
    let (status, v) = whoami(&g, &new).await;
    assert_eq!(status, 200, "{v}");
    // The retired key is gone from the set.
    assert_eq!(whoami(&g, &old).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_humans_decide_under_the_same_rules() {
    let (p, g) = start().await;
    let pending = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE orders")
        .await;
    let id = harness::request_id(&pending);
    // The agent's owner, signed in through the IdP, may not approve.
    let owner = p.mint("EdDSA", human("owner@x")).await;
    let (status, _) = g.approve(&owner, &id).await;
    assert_eq!(status, 403);
    // A dba from the IdP may.
    let dana = p.mint("ES256", human("dana@x")).await;
    let (status, v) = g.approve(&dana, &id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "dana@x", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_tokens_work_as_the_postgres_password_and_the_mcp_bearer() {
    let p = Provider::start().await;
    let pg_port = free_port();
    let extra = format!(
        r#"
[[identity.oidc]]
issuer = "{url}"
audience = "gavel"

[[resources.postgres]]
name = "oidc-db"
listen = "127.0.0.1:{pg_port}"
upstream = "postgres://postgres@127.0.0.1:5432/test"
"#,
        url = p.url
    );
    let g = Gavel::start_custom(
        "60s",
        r#"@id("reads") permit(principal, action == Action::"sql.read", resource);"#,
        &extra,
    )
    .await;
    let token = p.mint("RS256", human("dana@x")).await;
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-c", "SELECT 40 + 2"])
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=dana dbname=test sslmode=disable"
        ))
        .env("PGPASSWORD", &token)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let (_, page) = g.get("/api/v1/audit?resource=oidc-db", BOB).await;
    assert_eq!(
        page["records"][0]["record"]["initiator"], "human:dana@x",
        "{page}"
    );
    // A session does not outlive its token: the statement after `exp`
    // ends it.
    let mut claims = human("dana@x");
    claims["exp"] = json!(now() + 3);
    let short = p.mint("RS256", claims).await;
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg_port} user=dana dbname=test password={short}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = client.query_one("SELECT 1", &[]).await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "28000", "{db}");
    assert!(db.message().contains("expired"), "{db}");
    let _ = connection.await;
    // A tampered token is a failed login, in PostgreSQL's terms.
    let forged = p.forge("tampered", human("dana@x")).await;
    let out = Command::new("psql")
        .args(["-X", "-q", "-c", "SELECT 1"])
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=dana dbname=test sslmode=disable"
        ))
        .env("PGPASSWORD", &forged)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The MCP endpoint takes it as its bearer.
    let r = g
        .http
        .post(format!("{}/mcp", g.base))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = g
        .http
        .post(format!("{}/mcp", g.base))
        .bearer_auth(&forged)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_acting_for_a_human_records_them_and_they_cannot_approve() {
    let (p, g) = start().await;
    // RFC 8693 delegation: the subject is dana (a dba), the actor the
    // client mapped to agent `bot`.
    let mut claims = human("dana@x");
    claims["act"] = json!({"sub": "ci-client"});
    let delegated = p.mint("RS256", claims).await;
    let (status, v) = whoami(&g, &delegated).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["principal"]["id"], "bot");
    assert_eq!(v["principal"]["on_behalf_of"], "dana@x", "{v}");
    let pending = g
        .act(&delegated, "sql.ddl", "prod-db", "DROP TABLE invoices")
        .await;
    let id = harness::request_id(&pending);
    let (_, request) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(request["initiator"]["on_behalf_of"], "dana@x", "{request}");
    // dana is a dba, but the agent acts for her: she may not approve.
    let dana = p.mint("ES256", human("dana@x")).await;
    let (status, v) = g.approve(&dana, &id).await;
    assert_eq!(status, 403, "{v}");
    assert!(v.to_string().contains("acts for"), "{v}");
    let (status, v) = g.approve(BOB, &id).await;
    assert_eq!(status, 200, "{v}");
    let (_, page) = g.get(&format!("/api/v1/audit?request_id={id}"), BOB).await;
    assert_eq!(
        page["records"][0]["record"]["on_behalf_of"], "dana@x",
        "{page}"
    );
    // An actor gavel does not map is refused, not treated as the human.
    let mut claims = human("dana@x");
    claims["act"] = json!({"sub": "stranger"});
    let token = p.mint("RS256", claims).await;
    assert_eq!(whoami(&g, &token).await.0, 401);
}

/// gavel with browser sign-in configured at the provider.
async fn start_web(p: &Provider) -> Gavel {
    let extra = format!(
        r#"
[[identity.oidc]]
issuer = "{url}"
audience = "gavel"
client_id = "gavel-web"
"#,
        url = p.url
    );
    Gavel::start_custom("60s", harness::POLICIES, &extra).await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// Walks the authorization code flow as a browser would, signing in as
/// `email`; returns the session cookie and where gavel sent the browser.
async fn sign_in(g: &Gavel, p: &Provider, next: &str, email: &str) -> (String, String) {
    let http = no_redirects();
    let r = http
        .get(format!("{}/login/oidc?next={next}", g.base))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let signin_cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        signin_cookie.starts_with("gavel_signin="),
        "{signin_cookie}"
    );
    let authorize = location(&r);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", p.url)),
        "{authorize}"
    );
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    // The provider's form, submitted with its hidden fields.
    let query = authorize.split_once('?').unwrap().1.to_owned();
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    form.push(("email".into(), email.into()));
    let r = http
        .post(format!("{}/authorize", p.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let callback = location(&r);
    assert!(
        callback.starts_with(&format!("{}/auth/callback?", g.base)),
        "{callback}"
    );
    let r = http
        .get(&callback)
        .header("cookie", &signin_cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("gavel_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // The same callback again (a replayed state) is refused.
    let again = http
        .get(&callback)
        .header("cookie", &signin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let session = cookie.split(';').next().unwrap().to_owned();
    (session, location(&r))
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn reviewers_sign_in_and_decide_on_the_approval_page() {
    let p = Provider::start().await;
    let g = start_web(&p).await;
    let pending = g
        .act(
            &g.agent_token,
            "sql.ddl",
            "prod-db",
            "DROP TABLE \"<script>orders</script> \u{202E}sredro\u{1b}[2K\"",
        )
        .await;
    let id = harness::request_id(&pending);
    let page_url = format!("{}/requests/{id}", g.base);
    let http = no_redirects();
    // Not signed in: sent to sign in, and back here afterwards.
    let r = http.get(&page_url).send().await.unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(location(&r), format!("/login?next=/requests/{id}"));
    let (cookie, back) = sign_in(&g, &p, &format!("/requests/{id}"), "dana@x").await;
    assert_eq!(back, format!("/requests/{id}"));
    let page = http
        .get(&page_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Everything a reviewer needs, escaped.
    for needed in [
        "agent bot",
        "owner@x",
        "prod-db",
        "sql.ddl",
        "ddl-needs-dba",
        "group:dba",
        "Approve",
        "Deny",
    ] {
        assert!(page.contains(needed), "missing {needed}: {page}");
    }
    assert!(
        page.contains("&lt;script&gt;orders"),
        "operation not escaped"
    );
    assert!(!page.contains("<script>orders"));
    // Characters that reorder or hide text, or that a terminal acts on,
    // are shown, not passed on.
    assert!(page.contains("⟨U+202E⟩sredro⟨U+001B⟩[2K"), "{page}");
    assert!(!page.contains('\u{202E}') && !page.contains('\u{1b}'));
    let csrf = csrf_of(&page);
    let decide = |form: Vec<(&'static str, String)>| {
        http.post(format!("{page_url}/decision"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    // Without the CSRF token, or with another, nothing happens.
    let r = decide(vec![
        ("csrf", "forged".into()),
        ("decision", "approve".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = decide(vec![("decision", "approve".into())]).await.unwrap();
    assert!(r.status().is_client_error());
    let (_, v) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(v["state"], "pending");
    // Denying needs a reason.
    let r = decide(vec![("csrf", csrf.clone()), ("decision", "deny".into())])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = decide(vec![
        ("csrf", csrf.clone()),
        ("decision", "approve".into()),
        ("comment", "looks fine".into()),
    ])
    .await
    .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(location(&r), format!("/requests/{id}?done=approved"));
    let (_, v) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "dana@x");
    assert_eq!(v["reviews"][0]["comment"], "looks fine");
    // Signing out ends the session.
    let r = http
        .post(format!("{}/logout", g.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    let r = http
        .get(&page_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "session still alive");
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_is_bound_to_its_browser_and_returns_only_to_gavel_pages() {
    let p = Provider::start().await;
    let g = start_web(&p).await;
    let http = no_redirects();
    // A callback URL opened in another browser (no sign-in cookie) signs
    // nobody in.
    let r = http
        .get(format!("{}/login/oidc?next=/requests", g.base))
        .send()
        .await
        .unwrap();
    let authorize = location(&r);
    let query = authorize.split_once('?').unwrap().1.to_owned();
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    form.push(("email".into(), "dana@x".into()));
    let r = http
        .post(format!("{}/authorize", p.url))
        .form(&form)
        .send()
        .await
        .unwrap();
    let callback = location(&r);
    let r = http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("set-cookie").is_none());
    // `next` never leaves gavel's pages.
    for next in [
        "//evil.example",
        "/%09/evil.example",
        "https://evil.example",
        "/api/v1/audit",
    ] {
        let (_, back) = sign_in(&g, &p, next, "dana@x").await;
        assert_eq!(back, "/requests", "{next}");
    }
    // Pages are not framed, cached or referred.
    let (cookie, _) = sign_in(&g, &p, "/requests", "dana@x").await;
    let r = http
        .get(format!("{}/requests", g.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    // A human who is neither an approver nor accountable sees nothing.
    let pending = g
        .act(
            &g.agent_token,
            "sql.ddl",
            "prod-db",
            "DROP TABLE secret_plans",
        )
        .await;
    let id = harness::request_id(&pending);
    let (erin, _) = sign_in(&g, &p, "/requests", "erin@x").await;
    let r = http
        .get(format!("{}/requests/{id}", g.base))
        .header("cookie", &erin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = http
        .get(format!("{}/requests", g.base))
        .header("cookie", &erin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains("secret_plans"), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_owner_signed_in_on_the_web_cannot_approve() {
    let p = Provider::start().await;
    let g = start_web(&p).await;
    let pending = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE t")
        .await;
    let id = harness::request_id(&pending);
    let (cookie, _) = sign_in(&g, &p, "/requests", "owner@x").await;
    let http = no_redirects();
    let page_url = format!("{}/requests/{id}", g.base);
    let page = http
        .get(&page_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("cannot decide"), "{page}");
    assert!(!page.contains("value=\"approve\""), "{page}");
    // The list shows it.
    let list = http
        .get(format!("{}/requests", g.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id), "{list}");
    // A crafted form post is refused by the same rules.
    let csrf = csrf_of(&page);
    let r = http
        .post(format!("{page_url}/decision"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, v) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(v["state"], "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_approves_in_a_real_browser() {
    let p = Provider::start().await;
    let g = start_web(&p).await;
    let pending = g
        .act(
            &g.agent_token,
            "sql.ddl",
            "prod-db",
            "ALTER TABLE t ADD c int",
        )
        .await;
    let id = harness::request_id(&pending);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tokio::process::Command::new("node")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web/approve.cjs"))
        .arg(format!("{}/requests/{id}", g.base))
        .arg("dana@x")
        .env("NODE_PATH", root.join(".tools/npm/node_modules"))
        .current_dir(root.join(".tools/npm"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "browser run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["done"].as_str().unwrap().contains("approved"),
        "{result}"
    );
    let (_, v) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["comment"], "approved from the browser");
}

#[tokio::test(flavor = "multi_thread")]
async fn gavel_login_keeps_a_token_for_later_commands() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let (p, g) = start().await;
    let home = tempfile::tempdir().unwrap();
    let gavel = |args: &[&str], stdin: &str| {
        let mut child = Command::new(harness::BIN)
            .args(args)
            .env("GAVEL_SERVER", &g.base)
            .env_remove("GAVEL_TOKEN")
            .env("XDG_CONFIG_HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let file = home.path().join("gavel/credentials.json");
    // Not logged in yet.
    let out = gavel(&["whoami"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gavel login"));
    // A token the server refuses is not kept.
    let forged = p.forge("tampered", human("dana@x")).await;
    let out = gavel(&["login"], &format!("{forged}\n"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!file.exists());
    // An OIDC token from the provider is.
    let token = p.mint("RS256", human("dana@x")).await;
    let out = gavel(&["login"], &format!("{token}\n"));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("human dana@x"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = gavel(&["whoami"], "");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("dana@x"));
    let out = gavel(&["logout"], "");
    assert!(out.status.success());
    assert_eq!(gavel(&["whoami"], "").status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn gavel_login_uses_the_device_flow_when_the_idp_has_one() {
    use std::io::BufRead as _;
    let p = Provider::start().await;
    let g = start_web(&p).await;
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(harness::BIN)
        .arg("login")
        .env("GAVEL_SERVER", &g.base)
        .env_remove("GAVEL_TOKEN")
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The CLI names the code; the user approves it at the provider.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut code = None;
    for _ in 0..5 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        if let Some(at) = line.find("(code ") {
            code = Some(line[at + 6..].trim().trim_end_matches(')').to_owned());
            break;
        }
    }
    let code = code.expect("the CLI printed a user code");
    let approved = p
        .http
        .post(format!("{}/device", p.url))
        .form(&[("user_code", code.as_str()), ("email", "dana@x")])
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("human dana@x"),
        "{out:?}"
    );
    let whoami = Command::new(harness::BIN)
        .arg("whoami")
        .env("GAVEL_SERVER", &g.base)
        .env_remove("GAVEL_TOKEN")
        .env("XDG_CONFIG_HOME", home.path())
        .output()
        .unwrap();
    assert!(whoami.status.success(), "{whoami:?}");
    assert!(String::from_utf8_lossy(&whoami.stdout).contains("dana@x"));
    // --paste skips the device flow even where there is one.
    let token = p.mint("RS256", human("owner@x")).await;
    let mut child = Command::new(harness::BIN)
        .args(["login", "--paste"])
        .env("GAVEL_SERVER", &g.base)
        .env_remove("GAVEL_TOKEN")
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{token}\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("owner@x"));
    // A token is never sent to a plain-http server elsewhere.
    let out = Command::new(harness::BIN)
        .args(["login", "--paste", "--server", "http://gavel.example:8470"])
        .env_remove("GAVEL_TOKEN")
        .env("XDG_CONFIG_HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A stock MCP client logs in by itself, as the MCP authorization spec
/// has it: gavel's /mcp answers 401 with its protected resource metadata
/// (RFC 9728), which names the identity provider; the client (the
/// official Python SDK's OAuthClientProvider) registers, signs the user
/// in with PKCE and a resource indicator (RFC 8707), and calls tools as
/// that human. A token with another audience is refused, and gavel's
/// upstream never sees the client's token.
#[tokio::test(flavor = "multi_thread")]
async fn a_stock_mcp_client_discovers_the_identity_provider_and_logs_in() {
    let p = Provider::start().await;
    let everything = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/npm/node_modules/.bin/mcp-server-everything");
    assert!(everything.exists(), "run scripts/setup");
    let extra = format!(
        r#"
[[identity.oidc]]
issuer = "{url}"
audience = "gavel"

[[resources.mcp]]
name = "everything"
command = ["{everything}"]
"#,
        url = p.url,
        everything = everything.display()
    );
    let policies = format!(
        "{}\n@id(\"mcp-echo\") permit(principal, action == Action::\"mcp.call\", resource == Resource::\"everything\") when {{ context.tool == \"echo\" }};\n",
        harness::POLICIES
    );
    let g = Gavel::start_custom("60s", &policies, &extra).await;
    let mcp = format!("{}/mcp", g.base);

    // The challenge and the metadata.
    let r = g.http.post(&mcp).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", g.base);
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let metadata: Value = g
        .http
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], mcp.as_str(), "{metadata}");
    assert_eq!(
        metadata["authorization_servers"],
        json!([p.url]),
        "{metadata}"
    );

    // The SDK's own OAuth flow, end to end.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let run = json!({
        "transport": "http", "url": mcp, "oauth": {"email": "dana@x"},
        "steps": [
            {"op": "list_tools"},
            {"op": "call", "tool": "everything__echo", "args": {"message": "logged in"}},
        ],
    });
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(run.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["text"], "Echo: logged in", "{stdout}");
    // The call was dana's, gated and recorded as hers.
    let (_, page) = g
        .get("/api/v1/audit?resource=everything&event=decision", BOB)
        .await;
    let records = page["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["record"]["operation"] == "echo"
                && r["record"]["initiator"] == "human:dana@x"),
        "{page}"
    );

    // A token of the same provider for another audience is refused, with
    // the challenge that says so.
    let foreign = p
        .mint(
            "ES256",
            json!({"sub": "sub-dana@x", "email": "dana@x", "email_verified": true,
                   "aud": "https://other.example/mcp", "iss": p.url,
                   "exp": now() + 300, "iat": now(), "nbf": now()}),
        )
        .await;
    let r = g
        .http
        .post(&mcp)
        .bearer_auth(&foreign)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""),
        "{:?}",
        r.headers()
    );
    // That audience is not good for the REST API either, nor is the MCP
    // endpoint's: a token for /mcp works there and only there.
    let (s, _) = g.get("/api/v1/whoami", &foreign).await;
    assert_eq!(s, 401);
    let for_mcp = p
        .mint(
            "ES256",
            json!({"sub": "sub-dana@x", "email": "dana@x", "email_verified": true,
                   "aud": mcp, "iss": p.url,
                   "exp": now() + 300, "iat": now(), "nbf": now()}),
        )
        .await;
    let (s, _) = g.get("/api/v1/whoami", &for_mcp).await;
    assert_eq!(s, 401, "a token for /mcp is not a token for the REST API");
    let r = g
        .http
        .post(&mcp)
        .bearer_auth(&for_mcp)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A browser page of another origin cannot drive a session.
    let token = g.agent_token.clone();
    let r = g
        .http
        .post(&mcp)
        .bearer_auth(&token)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{:?}", r.text().await);
}
