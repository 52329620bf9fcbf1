//! The reviewer's web pages (SPEC §4), server-rendered and usable without
//! JavaScript: sign-in with the identity provider (authorization code flow
//! with PKCE), the pending requests at `/requests`, and the approval page
//! at `/requests/{id}` with Approve and Deny. Deciding goes through
//! `Approvals::decide`, the same rules as every channel.
//!
//! Sessions live in the store, so every gateway behind a load balancer
//! knows them: an HttpOnly cookie (`Secure` when `server.public_url` is
//! https, `SameSite=Lax`) names a session holding the human and a CSRF
//! token that every form must echo. The store keeps only the SHA-256 of
//! the cookie, so reading the database signs nobody in.

use crate::Gateway;
use crate::views::RequestView;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use gavel_core::display::{one_line, visible};
use gavel_core::{
    DecideFailure, Decision, Human, Principal, RequestFilter, RequestId, RequestState,
};
use gavel_identity::Authenticator;
use maud::{DOCTYPE, Markup, html};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

const COOKIE: &str = "gavel_session";
/// Ties a token sign-in form to the browser it was shown to (login CSRF).
const LOGIN_FORM_COOKIE: &str = "gavel_login";
/// Ties a sign-in to the browser that started it.
const SIGN_IN_COOKIE: &str = "gavel_signin";
/// Most signed-in sessions; the oldest go first past this.
const MAX_SESSIONS: u64 = 100_000;
/// How long a signed-in session lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a sign-in may take at the identity provider.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// Most sign-ins in flight; older ones are dropped past this.
const MAX_FLOWS: u64 = 10_000;

#[derive(Serialize, Deserialize)]
struct WebSession {
    human: Human,
    /// What the human signed in with: looked at again on every page and
    /// decision, so that a reviewer removed from the configuration or
    /// given other groups is treated as they are now.
    with: SignedInWith,
    csrf: String,
}

#[derive(Serialize, Deserialize)]
enum SignedInWith {
    /// A static token from `[[identity.humans]]`, by its SHA-256.
    Token { sha256: String },
    /// The identity provider (or a JWT of its, pasted), with the groups it
    /// gave; configured groups are added each time.
    IdentityProvider { groups: Vec<String> },
}

#[derive(Serialize, Deserialize)]
struct Flow {
    /// The SHA-256 of the browser's sign-in cookie (never the cookie).
    browser: String,
    issuer: usize,
    verifier: String,
    nonce: String,
    next: String,
}

/// Kinds of entries in the store's `web_state`.
const SESSION: &str = "session";
const SIGN_IN: &str = "sign_in";
const SECRET: &str = "secret";

/// Browser sessions and sign-ins in flight, kept in the store.
pub(crate) struct WebState {
    storage: gavel_store::Storage,
    /// Signs the sign-in form's key: the login cookie holds a nonce and
    /// the form its MAC, so a cookie planted from another port of the
    /// same host (same-site) cannot be paired with a key of the planter's
    /// choosing. One key for every gateway on the store (a form shown by
    /// one may be posted to another), made by the first that needs it.
    login_key: tokio::sync::OnceCell<Vec<u8>>,
}

/// The store's key for a cookie or `state` value: its SHA-256.
fn stored_key(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn now() -> gavel_core::Timestamp {
    gavel_core::Clock::now(&gavel_core::SystemClock)
}

fn later(ttl: Duration) -> gavel_core::Timestamp {
    gavel_core::Timestamp(now().0 + ttl.as_millis() as i64)
}

impl WebState {
    pub(crate) fn new(storage: gavel_store::Storage) -> WebState {
        WebState {
            storage,
            login_key: tokio::sync::OnceCell::new(),
        }
    }

    /// The form key that goes with a login cookie's nonce; None when the
    /// store cannot give the shared key.
    async fn login_form_key(&self, nonce: &str) -> Option<String> {
        use hmac::{KeyInit, Mac};
        let key = self
            .login_key
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                let stored = self
                    .storage
                    .shared_web_state(
                        SECRET,
                        "login-form-key",
                        &hex::encode(fresh),
                        gavel_core::Timestamp(i64::MAX),
                    )
                    .await?;
                hex::decode(stored)
                    .map_err(|e| gavel_core::Error::store(format!("login form key: {e}")))
            })
            .await
            .map_err(|e| tracing::error!(error = %e, "reading the sign-in form key failed"))
            .ok()?;
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC takes a key of any length");
        mac.update(nonce.as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Headers every page carries: no framing (the Approve button must not be
/// clickjacked), no caching of pages that hold request data and CSRF
/// tokens, no referrer, and a policy that allows the page's own inline
/// style and forms to itself only.
async fn page_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub(crate) fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/login", get(login).post(token_sign_in))
        .route("/login/oidc", get(oidc_sign_in))
        .route("/auth/callback", get(callback))
        .route("/logout", post(logout))
        .route("/requests", get(list))
        .route("/requests/{id}", get(page))
        .route("/requests/{id}/decision", post(decide))
        .layer(axum::middleware::from_fn(page_headers))
        .route(
            "/integrations/slack/interactions",
            post(crate::slack::interactions),
        )
        .route("/integrations/teams/messages", post(crate::teams::messages))
        .with_state(gw)
}

fn page_shell(title: &str, who: Option<&(Human, String)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gavel" }
                style { (STYLE) }
            }
            body {
                header {
                    a href="/requests" { strong { "gavel" } }
                    @if let Some((human, csrf)) = who {
                        span.who { "Signed in as " (human.id.0) }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a}header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#f2f2f2}header form{margin-left:auto}main{padding:1em;max-width:60em}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-word}table{border-collapse:collapse}td,th{padding:.25em .6em;text-align:left;vertical-align:top;border-bottom:1px solid #ddd}.state{font-weight:bold}.error,.failed{color:#a00}.ok{color:#060}textarea{width:100%}";

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page_shell("Error", None, html! { p.error { (message) } }).into_string()),
    )
        .into_response()
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// Who may see a request on these pages: its approvers, and the people
/// accountable for it (the initiator, the agent's owner, the human it acts
/// for). Other signed-in humans see nothing of it.
fn may_view(request: &gavel_core::ApprovalRequest, human: &Human) -> bool {
    let p = &request.action.principal;
    let is = |id: Option<&gavel_core::HumanId>| id.is_some_and(|h| h.same_human(&human.id));
    let initiator = matches!(p, Principal::Human(h) if h.id.same_human(&human.id));
    initiator
        || is(p.owner())
        || is(p.on_behalf_of())
        || request
            .route
            .approvers
            .iter()
            .any(|a| a.covers(&human.id, &human.groups))
}

impl WebState {
    /// The signed-in human as the configuration says now, and the
    /// session's CSRF key; None (and the session ends) when the session
    /// expired or its static token no longer authenticates.
    async fn session(&self, auth: &Authenticator, headers: &HeaderMap) -> Option<(Human, String)> {
        let key = stored_key(&cookie_value(headers)?);
        let stored = match self.storage.web_state(SESSION, &key, now()).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::error!(error = %e, "reading a browser session failed");
                return None;
            }
        };
        let s: WebSession = serde_json::from_str(&stored).ok()?;
        let current = match &s.with {
            SignedInWith::Token { sha256 } => auth.human_by_token_sha256(sha256),
            SignedInWith::IdentityProvider { groups } => {
                Some(auth.human_from_sign_in(s.human.id.0.clone(), groups.clone()))
            }
        };
        match current {
            Some(human) => Some((human, s.csrf)),
            None => {
                if let Err(e) = self.storage.drop_web_state(SESSION, &key).await {
                    tracing::warn!(error = %e, "ending a browser session failed");
                }
                None
            }
        }
    }
}

/// Where to return after sign-in: `/requests` or one request's page,
/// nothing else (no other path, host, or character a browser would drop).
fn safe_next(next: Option<&str>) -> String {
    let ok = next.filter(|n| {
        *n == "/requests"
            || n.strip_prefix("/requests/").is_some_and(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    });
    ok.unwrap_or("/requests").to_owned()
}

fn sign_in_redirect(path: &str) -> Response {
    let next: String = url_encode(path);
    Redirect::to(&format!("/login?next={next}")).into_response()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// The sign-in page: a form for a reviewer's gavel token (always; it is
/// posted, never put in a URL) and, when an identity provider is
/// configured for browsers, a link to sign in there. With only the
/// provider and no human holding a static token, it goes straight there.
async fn login(State(gw): State<Gateway>, Query(q): Query<LoginQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    let has_oidc = gw.auth.browser_issuers().next().is_some();
    let has_static_humans = !gw.config.config.identity.humans.is_empty();
    if has_oidc && !has_static_humans {
        return oidc_sign_in(State(gw), Query(LoginQuery { next: Some(next) })).await;
    }
    sign_in_form(&gw, &next, has_oidc, None, StatusCode::OK).await
}

async fn sign_in_form(
    gw: &Gateway,
    next: &str,
    has_oidc: bool,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let nonce = random_token();
    let Some(form_key) = gw.web.login_form_key(&nonce).await else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable: gavel cannot reach its store. Try again shortly.",
        );
    };
    let body = html! {
        h1 { "Sign in to review" }
        @if let Some(e) = error { p.error { (e) } }
        form method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            input type="hidden" name="form_key" value=(form_key);
            p {
                label for="token" { "Your gavel token" }
                br;
                input id="token" type="password" name="token" autocomplete="current-password" size="60" required autofocus;
            }
            p { button type="submit" { "Sign in" } }
        }
        p { "The token is the one your gavel operator gave you (" code { "gvl_human_…" } "). Agents cannot sign in here." }
        @if has_oidc {
            p { a href={ "/login/oidc?next=" (url_encode(next)) } { "Sign in with your identity provider instead" } }
        }
        p { "From a terminal: " code { "gavel requests" } ", " code { "gavel show ID" } ", " code { "gavel approve ID" } "." }
    };
    let mut response = (
        status,
        Html(page_shell("Sign in", None, body).into_string()),
    )
        .into_response();
    let cookie = format!(
        "{LOGIN_FORM_COOKIE}={nonce}; HttpOnly; SameSite=Strict; Path=/login; Max-Age={}{}",
        FLOW_TTL.as_secs(),
        secure_attr(gw)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
struct TokenSignIn {
    token: String,
    next: Option<String>,
    form_key: String,
}

/// A reviewer signs in with a gavel token (a static human token or any
/// token that authenticates a human). Agents are refused.
async fn token_sign_in(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Form(f): Form<TokenSignIn>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let has_oidc = gw.auth.browser_issuers().next().is_some();
    // The form must come from a page this browser was shown: no other
    // site can sign a browser in as someone else.
    let expected = match cookie_named(&headers, LOGIN_FORM_COOKIE) {
        Some(nonce) => gw.web.login_form_key(&nonce).await,
        None => None,
    };
    let same_browser = expected.is_some_and(|key| csrf_ok(&key, &f.form_key));
    if !same_browser {
        return sign_in_form(
            &gw,
            &next,
            has_oidc,
            Some("The form is stale; sign in again."),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    // A pasted JWT's expiry ends the session too.
    let (human, until) = match gw.auth.authenticate_until(&f.token).await {
        Ok((Principal::Human(h), until)) => (h, until),
        Ok((Principal::Agent { .. }, _)) => {
            return sign_in_form(
                &gw,
                &next,
                has_oidc,
                Some(
                    "That is an agent's token. Agents never review; sign in with a reviewer's token.",
                ),
                StatusCode::FORBIDDEN,
            ).await;
        }
        Err(e) => {
            tracing::info!(error = %e, "web token sign-in refused");
            return sign_in_form(
                &gw,
                &next,
                has_oidc,
                Some("That token is not accepted. Check it, or ask your gavel operator for one."),
                StatusCode::UNAUTHORIZED,
            )
            .await;
        }
    };
    let with = if gavel_identity::oidc::looks_like_jwt(f.token.trim())
        && gw
            .auth
            .human_by_token_sha256(&gavel_identity::token_sha256(&f.token))
            .is_none()
    {
        SignedInWith::IdentityProvider {
            groups: human.groups.clone(),
        }
    } else {
        SignedInWith::Token {
            sha256: gavel_identity::token_sha256(&f.token),
        }
    };
    let ttl = until
        .map(|t| {
            t.to_system_time()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
        .map_or(SESSION_TTL, |left| left.min(SESSION_TTL));
    if ttl.is_zero() {
        return sign_in_form(
            &gw,
            &next,
            has_oidc,
            Some("That token has expired; get a fresh one."),
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let mut response = Redirect::to(&next).into_response();
    start_session(&gw, human, with, ttl, &mut response).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("gavel_login=; HttpOnly; SameSite=Strict; Path=/login; Max-Age=0"),
    );
    response
}

/// Starts a browser session for `human`, for `ttl` at most, and sets its
/// cookie on `response`.
async fn start_session(
    gw: &Gateway,
    human: Human,
    with: SignedInWith,
    ttl: Duration,
    response: &mut Response,
) {
    let session = random_token();
    let stored = serde_json::to_string(&WebSession {
        human,
        with,
        csrf: random_token(),
    })
    .unwrap_or_default();
    if let Err(e) = gw
        .web
        .storage
        .put_web_state(
            SESSION,
            &stored_key(&session),
            &stored,
            later(ttl),
            now(),
            MAX_SESSIONS,
        )
        .await
    {
        tracing::error!(error = %e, "storing a browser session failed");
        *response = error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable: gavel cannot reach its store. Try again shortly.",
        );
        return;
    }
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{}",
        ttl.as_secs().max(1),
        secure_attr(gw)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Sign-in at the identity provider (authorization code with PKCE).
async fn oidc_sign_in(State(gw): State<Gateway>, Query(q): Query<LoginQuery>) -> Response {
    let Some((index, issuer)) = gw.auth.browser_issuers().enumerate().next() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Sign-in with an identity provider is not configured (client_id on an [[identity.oidc]] issuer); sign in with your gavel token at /login.",
        );
    };
    let endpoints = match issuer.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "sign-in: cannot reach the identity provider");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached; try again shortly.",
            );
        }
    };
    let state = random_token();
    let browser = random_token();
    let verifier = random_token();
    let nonce = random_token();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let flow = serde_json::to_string(&Flow {
        browser: stored_key(&browser),
        issuer: index,
        verifier,
        nonce: nonce.clone(),
        next: safe_next(q.next.as_deref()),
    })
    .unwrap_or_default();
    // Past MAX_FLOWS the oldest go, not everyone's.
    if let Err(e) = gw
        .web
        .storage
        .put_web_state(
            SIGN_IN,
            &stored_key(&state),
            &flow,
            later(FLOW_TTL),
            now(),
            MAX_FLOWS,
        )
        .await
    {
        tracing::error!(error = %e, "storing a sign-in failed");
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable: gavel cannot reach its store. Try again shortly.",
        );
    }
    let client_id = issuer.client_id().unwrap_or_default();
    let location = format!(
        "{}{}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        endpoints.authorization,
        if endpoints.authorization.contains('?') {
            "&"
        } else {
            "?"
        },
        url_encode(client_id),
        url_encode(&redirect_uri(&gw)),
        url_encode("openid email profile groups"),
        state,
        nonce,
        challenge,
    );
    let mut response = Redirect::to(&location).into_response();
    let cookie = format!(
        "{SIGN_IN_COOKIE}={browser}; HttpOnly; SameSite=Lax; Path=/auth/callback; Max-Age={}{}",
        FLOW_TTL.as_secs(),
        secure_attr(&gw)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn secure_attr(gw: &Gateway) -> &'static str {
    if gw.config.config.server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn redirect_uri(gw: &Gateway) -> String {
    format!(
        "{}/auth/callback",
        gw.config.config.server.public_url.trim_end_matches('/')
    )
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    if let Some(e) = q.error {
        return error_page(
            StatusCode::UNAUTHORIZED,
            &format!("The identity provider refused the sign-in: {e}"),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in response is incomplete.",
        );
    };
    // A state is good for one callback, within FLOW_TTL.
    let flow = match gw
        .web
        .storage
        .take_web_state(SIGN_IN, &stored_key(&state), now())
        .await
    {
        Ok(flow) => flow.and_then(|f| serde_json::from_str::<Flow>(&f).ok()),
        Err(e) => {
            tracing::error!(error = %e, "reading a sign-in failed");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable: gavel cannot reach its store. Try again shortly.",
            );
        }
    };
    let Some(flow) = flow else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown or has expired; start again.",
        );
    };
    // Only the browser that started the sign-in may finish it: a callback
    // URL sent to someone else signs nobody in.
    let same_browser = cookie_named(&headers, SIGN_IN_COOKIE)
        .is_some_and(|v| csrf_ok(&flow.browser, &stored_key(&v)));
    if !same_browser {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in was started in another browser; start again.",
        );
    }
    let Some(issuer) = gw.auth.browser_issuers().nth(flow.issuer) else {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in is unknown.");
    };
    let (id, groups) = match issuer
        .sign_in(&code, &flow.verifier, &redirect_uri(&gw), &flow.nonce)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(error = %e, "browser sign-in refused");
            return error_page(StatusCode::UNAUTHORIZED, &format!("Sign-in refused: {e}"));
        }
    };
    let human = gw.auth.human_from_sign_in(id, groups.clone());
    let mut response = Redirect::to(&flow.next).into_response();
    start_session(
        &gw,
        human,
        SignedInWith::IdentityProvider { groups },
        SESSION_TTL,
        &mut response,
    )
    .await;
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "gavel_signin=; HttpOnly; SameSite=Lax; Path=/auth/callback; Max-Age=0",
        ),
    );
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

fn csrf_ok(expected: &str, got: &str) -> bool {
    !expected.is_empty()
        && expected.len() == got.len()
        && bool::from(expected.as_bytes().ct_eq(got.as_bytes()))
}

async fn logout(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some((_, csrf)) = gw.web.session(&gw.auth, &headers).await {
        if !csrf_ok(&csrf, &f.csrf) {
            return error_page(StatusCode::FORBIDDEN, "The form is stale; reload the page.");
        }
        if let Some(id) = cookie_value(&headers)
            && let Err(e) = gw
                .web
                .storage
                .drop_web_state(SESSION, &stored_key(&id))
                .await
        {
            // Saying "signed out" while the session lives on would be a lie.
            tracing::error!(error = %e, "ending a browser session failed");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing out failed: gavel cannot reach its store, so the session is still valid. Try again shortly.",
            );
        }
    }
    let mut response = Redirect::to("/requests").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("gavel_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"),
    );
    response
}

async fn list(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let Some(who) = gw.web.session(&gw.auth, &headers).await else {
        return sign_in_redirect("/requests");
    };
    let filter = RequestFilter {
        state: Some(RequestState::Pending),
        initiator: None,
        resource: None,
        id_prefix: None,
        limit: 200,
    };
    let requests = match gw.gate.approvals().list(&filter).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "listing requests failed");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Cannot list requests.");
        }
    };
    let body = html! {
        h1 { "Pending requests" }
        @if requests.is_empty() {
            p { "Nothing is waiting for a decision." }
        } @else {
            table {
                tr { th { "Request" } th { "Initiator" } th { "Resource" } th { "Action" } th { "Operation" } }
                @for r in requests.iter().filter(|r| may_view(r, &who.0)) {
                    tr {
                        td { a href={ "/requests/" (r.id.0) } { code { (r.id.short()) } } }
                        td { (r.action.principal.qualified_id()) }
                        td { (one_line(&r.action.resource.name)) }
                        td { (r.action.class.as_str()) }
                        td { code { (excerpt(&r.action.operation, 120)) } }
                    }
                }
            }
        }
    };
    Html(page_shell("Pending requests", Some(&who), body).into_string()).into_response()
}

/// Agent text on one line, inert (hidden characters shown as
/// `⟨U+XXXX⟩`), at most `max` characters.
fn excerpt(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    format!("{}…", s.chars().take(max).collect::<String>())
}

#[derive(Deserialize)]
struct PageQuery {
    done: Option<String>,
}

async fn page(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some(who) = gw.web.session(&gw.auth, &headers).await else {
        return sign_in_redirect(&format!("/requests/{id}"));
    };
    let principal = Principal::Human(who.0.clone());
    let request = match crate::api::load_visible(&gw, &principal, &id).await {
        Ok(r) if may_view(&r, &who.0) => r,
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!(
                    "No request {} that you may see. `gavel requests` lists the requests you review.",
                    one_line(&id)
                ),
            );
        }
    };
    let view = match crate::api::with_history(&gw, &request, |other| may_view(other, &who.0)).await
    {
        Ok(v) => v,
        Err(_) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot load the request.",
            );
        }
    };
    let may_decide =
        request.state == RequestState::Pending && request.check_reviewer(&principal).is_ok();
    let why_not = request
        .check_reviewer(&principal)
        .err()
        .map(|e| e.to_string());
    let body = request_body(
        &view,
        may_decide,
        why_not.as_deref(),
        &who.1,
        // Only a state name is shown: the page is trusted, the query is not.
        q.done
            .as_deref()
            .filter(|d| d.parse::<gavel_core::RequestState>().is_ok()),
    );
    Html(page_shell(&format!("Request {}", view.short_id), Some(&who), body).into_string())
        .into_response()
}

/// Where the request was sent, so a reviewer sees a channel that failed
/// (and nobody was asked there).
fn deliveries_section(deliveries: &[gavel_core::Delivery]) -> Markup {
    html! {
        @if !deliveries.is_empty() {
            h2 { "Channels" }
            table {
                tr { th { "Channel" } th { "Event" } th { "Status" } th { "Attempts" } th { "Last error" } }
                @for d in deliveries {
                    tr {
                        td { (d.channel) }
                        td { (d.event) }
                        td { @if d.status == gavel_core::DeliveryStatus::Failed { strong.failed { "failed" } }
                             @else { (format!("{:?}", d.status).to_lowercase()) } }
                        td { (d.attempts) }
                        td { (d.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn pretty(v: &serde_json::Value) -> String {
    visible(&serde_json::to_string_pretty(v).unwrap_or_default())
}

fn request_body(
    v: &RequestView,
    may_decide: bool,
    why_not: Option<&str>,
    csrf: &str,
    done: Option<&str>,
) -> Markup {
    html! {
        h1 { "Request " code { (v.short_id) } }
        @if let Some(done) = done {
            p.ok { "Your decision was recorded: " (done) "." }
        }
        p { "State: " span.state { (v.state) } " · approvals " (v.approvals) " of " (v.quorum)
            " · expires " (v.expires_at) }
        table {
            tr { th { "Initiator" } td { (v.initiator.kind) " " (one_line(&v.initiator.id)) } }
            @if let Some(owner) = &v.initiator.owner { tr { th { "Owner" } td { (one_line(owner)) } } }
            @if let Some(h) = &v.initiator.on_behalf_of { tr { th { "Acting for" } td { (one_line(h)) } } }
            tr { th { "Resource" } td { (one_line(&v.resource.name)) " (" (v.resource.kind) ")"
                @for (k, t) in &v.resource.tags { " " code { (one_line(k)) "=" (one_line(t)) } } } }
            tr { th { "Action" } td { (v.action) } }
            tr { th { "Intent" } td { @if v.intent.is_empty() { em { "none given" } } @else { (one_line(&v.intent)) } } }
            tr { th { "Policies" } td { (v.policies.join(", ")) " (version " (v.policy_version) ")" } }
            tr { th { "Approvers" } td { (v.approvers.join(", ")) } }
            tr { th { "Surface" } td { (v.surface) @if let Some(s) = &v.source { " from " (s) } } }
            tr { th { "Created" } td { (v.created_at) } }
            tr { th { "Id" } td { code { (v.id) } " · from a terminal: " code { "gavel show " (v.short_id) } } }
        }
        h2 { "Operation" }
        pre { (visible(&v.operation)) }
        @if !v.settings.is_empty() {
            h2 { "Session settings (bound into the approval)" }
            table { @for (k, value) in &v.settings { tr { th { (one_line(k)) } td { code { (one_line(value)) } } } } }
        }
        @if !v.details.is_null() {
            h2 { "Details (bound into the approval)" }
            pre { (pretty(&v.details)) }
        }
        @if !v.data_context.is_null() {
            h2 { "Data context" }
            pre { (pretty(&v.data_context)) }
        }
        @if !v.reviews.is_empty() {
            h2 { "Reviews" }
            ul { @for r in &v.reviews { li { (one_line(&r.reviewer)) " " (r.decision) " at " (r.at)
                @if !r.comment.is_empty() { ": " (one_line(&r.comment)) } } } }
        }
        @if let Some(h) = &v.history {
            h2 { "History" }
            h3 { "The initiator's recent requests" }
            @if h.initiator_recent.is_empty() { p { em { "None before this one." } } }
            ul { @for i in &h.initiator_recent { li { a href={ "/requests/" (i.id) } { code { (i.short_id) } } " " (i.state) " " (i.action) " on " (one_line(&i.resource)) ": " code { (excerpt(&i.operation, 100)) } } } }
            h3 { "Recent requests on this resource" }
            @if h.resource_recent.is_empty() { p { em { "None yet." } } }
            ul { @for i in &h.resource_recent { li { a href={ "/requests/" (i.id) } { code { (i.short_id) } } " " (i.state) " " (i.action) " by " (one_line(&i.initiator)) ": " code { (excerpt(&i.operation, 100)) } } } }
        }
        (deliveries_section(&v.deliveries))
        h2 { "Decision" }
        @if may_decide {
            form method="post" action={ "/requests/" (v.id) "/decision" } {
                input type="hidden" name="csrf" value=(csrf);
                p { label for="comment" { "Comment (required to deny)" } }
                textarea id="comment" name="comment" rows="3" {}
                p {
                    button type="submit" name="decision" value="approve" { "Approve" }
                    " "
                    button type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        } @else if v.state != "pending" {
            p { "This request is " (v.state) "; nothing to decide." }
        } @else {
            p.error { "You cannot decide this request: " (why_not.unwrap_or("not allowed")) "." }
        }
    }
}

#[derive(Deserialize)]
struct DecisionForm {
    csrf: String,
    decision: String,
    #[serde(default)]
    comment: String,
}

async fn decide(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    let Some((human, csrf)) = gw.web.session(&gw.auth, &headers).await else {
        return error_page(StatusCode::UNAUTHORIZED, "Sign in first.");
    };
    if !csrf_ok(&csrf, &f.csrf) {
        return error_page(StatusCode::FORBIDDEN, "The form is stale; reload the page.");
    }
    let decision = match f.decision.as_str() {
        "approve" => Decision::Approve,
        "deny" if !f.comment.trim().is_empty() => Decision::Deny,
        "deny" => return error_page(StatusCode::BAD_REQUEST, "Say why you deny it."),
        _ => return error_page(StatusCode::BAD_REQUEST, "Unknown decision."),
    };
    let reviewer = Principal::Human(human);
    match gw
        .gate
        .approvals()
        .decide(
            &RequestId(id.clone()),
            &reviewer,
            decision,
            f.comment.trim(),
        )
        .await
    {
        Ok(r) => Redirect::to(&format!(
            "/requests/{}?done={}",
            url_encode(&id),
            r.state.as_str()
        ))
        .into_response(),
        Err(DecideFailure::NotFound(_)) => {
            error_page(StatusCode::NOT_FOUND, &format!("No request {id}."))
        }
        Err(DecideFailure::Refused(e)) => error_page(
            if e.is_forbidden() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::CONFLICT
            },
            &format!("Refused: {e}."),
        ),
        Err(DecideFailure::Internal(e)) => {
            tracing::error!(error = %e, "deciding through the web page failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The decision could not be recorded.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_core::{Delivery, DeliveryStatus, Timestamp};

    #[test]
    fn a_failed_channel_is_shown_with_its_error() {
        let d = |channel: &str, status, error: Option<&str>| Delivery {
            channel: channel.into(),
            event: "request.pending".into(),
            status,
            attempts: 1,
            last_error: error.map(str::to_owned),
            at: Timestamp(0),
            seq: 0,
        };
        let html = deliveries_section(&[
            d("slack-C1", DeliveryStatus::Delivered, None),
            d("teams-0/webhook", DeliveryStatus::Failed, Some("HTTP 404")),
        ])
        .into_string();
        assert!(
            html.contains("slack-C1") && html.contains("delivered"),
            "{html}"
        );
        assert!(
            html.contains("teams-0/webhook")
                && html.contains("<strong class=\"failed\">failed</strong>")
                && html.contains("HTTP 404"),
            "{html}"
        );
        assert!(deliveries_section(&[]).into_string().is_empty());
    }
}
