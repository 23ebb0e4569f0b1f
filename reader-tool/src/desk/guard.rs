//! The checks every request passes before a handler runs, and the headers every response
//! carries (mod.rs: the safety model).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::i18n::{lang_of, M};
use super::pages;
use super::Desk;

/// The cookie that carries the token after the first visit.
pub const TOKEN_COOKIE: &str = "civic_desk";

/// Scripts, styles and connections from the desk itself only; no inline script or style, no
/// frames, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The Host header is not the desk's (DNS rebinding: another name resolving to 127.0.0.1).
    Host,
    /// No token, or the wrong one.
    Token,
    /// A state-changing request from another origin (or without an Origin).
    Origin,
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Desk {
    /// Compare a presented token with this start's, in constant time.
    pub fn token_matches(&self, presented: &str) -> bool {
        bool::from(presented.as_bytes().ct_eq(self.token.0.as_bytes()))
    }

    /// The checks, in order: Host, token, and for anything but GET/HEAD, Origin.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if host != Some(self.host.as_str()) {
            return Err(Refusal::Host);
        }
        // The one page that takes the token from the address (and sets the cookie) checks it
        // itself (routes::enter).
        if path != "/" {
            let ok = cookie(headers, TOKEN_COOKIE).is_some_and(|t| self.token_matches(t));
            if !ok {
                return Err(Refusal::Token);
            }
        }
        if method != Method::GET && method != Method::HEAD {
            // Browsers send Origin on every POST (Fetch standard, "origin" header on
            // non-GET/HEAD requests); none at all is refused too.
            let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
            if origin != Some(self.origin.as_str()) {
                return Err(Refusal::Origin);
            }
            // Fetch metadata, where the browser sends it: the same answer, said twice.
            if let Some(site) = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok()) {
                if site != "same-origin" {
                    return Err(Refusal::Origin);
                }
            }
        }
        Ok(())
    }
}

/// The response for a refused request: a page saying why, in the reader's language.
pub fn refused(headers: &HeaderMap, why: Refusal) -> Response {
    let lang = lang_of(headers);
    let (status, msg) = match why {
        Refusal::Host => (StatusCode::MISDIRECTED_REQUEST, M::RefusedHost),
        Refusal::Token => (StatusCode::FORBIDDEN, M::RefusedToken),
        Refusal::Origin => (StatusCode::FORBIDDEN, M::RefusedOrigin),
    };
    (status, pages::refusal(lang, msg)).into_response()
}

/// The middleware: refuse what fails [`Desk::check`]; put the safety headers on everything.
pub async fn guard(State(desk): State<Arc<Desk>>, req: Request, next: Next) -> Response {
    let mut resp = match desk.check(req.method(), req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(why) => refused(req.headers(), why),
    };
    let h = resp.headers_mut();
    // Every response: pages carry personal data, and even the script must not be taken from
    // a cache shared with a later user of this browser profile.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not "no-referrer": under it Chromium sends `Origin: null` on the desk's own form posts
    // (Fetch, "serializing a request origin"), and the Origin check would refuse them. No
    // page of the desk links elsewhere; "same-origin" sends no Referer to anyone else.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}
