//! The HTTP layer without a browser: token, Host, Origin, headers, escaping, PINs not echoed.
//! (tests/tests/desk_browser.rs drives the whole desk in Chromium against a virtual card.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use tower::ServiceExt;

use super::i18n::{Lang, M};
use super::{listen_addr, routes, Desk, ReaderLive};
use crate::cmd::{Ctx, ReaderArg};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const HOST: &str = "127.0.0.1:8470";
const ORIGIN: &str = "http://127.0.0.1:8470";

fn desk(dir: &tempfile::TempDir) -> Arc<Desk> {
    Desk::new(
        Ctx::for_tests(dir.path().to_path_buf()),
        ReaderArg { reader: None },
        HOST.parse().expect("address"),
        TOKEN.to_owned(),
    )
}

async fn send(desk: &Arc<Desk>, req: Request<Body>) -> Response {
    routes::router(Arc::clone(desk))
        .oneshot(req)
        .await
        .expect("infallible")
}

async fn body_text(r: Response) -> String {
    let b = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8_lossy(&b).into_owned()
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header(header::HOST, HOST)
}

fn with_cookie(b: axum::http::request::Builder) -> axum::http::request::Builder {
    b.header(header::COOKIE, format!("civic_desk={TOKEN}"))
}

fn post_form(path: &str, form: &str) -> Request<Body> {
    with_cookie(Request::post(path).header(header::HOST, HOST))
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .expect("request")
}

fn assert_safety_headers(r: &Response) {
    let h = r.headers();
    assert_eq!(
        h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let csp = h
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        h.get(header::X_FRAME_OPTIONS).map(|v| v.as_bytes()),
        Some(&b"DENY"[..])
    );
}

#[tokio::test]
async fn the_printed_token_becomes_a_strict_httponly_cookie_and_leaves_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    let r = send(
        &d,
        get(&format!("/?token={TOKEN}"))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers().get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/clinic"[..])
    );
    let cookie = r
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.starts_with(&format!("civic_desk={TOKEN};")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_safety_headers(&r);

    let r = send(
        &d,
        with_cookie(get("/clinic"))
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_safety_headers(&r);
    let page = body_text(r).await;
    assert!(
        page.contains("/static/desk.js") && !page.contains(TOKEN),
        "the page must not carry the token"
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_a_clear_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    let wrong = "f".repeat(64);
    for req in [
        get("/clinic").body(Body::empty()),
        get("/citizen")
            .header(header::COOKIE, format!("civic_desk={wrong}"))
            .body(Body::empty()),
        get(&format!("/?token={wrong}")).body(Body::empty()),
        get("/?token=").body(Body::empty()),
        get("/").body(Body::empty()),
        get("/events").body(Body::empty()),
        get("/static/desk.js").body(Body::empty()),
    ] {
        let r = send(&d, req.expect("req")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_safety_headers(&r);
        assert!(r.headers().get(header::SET_COOKIE).is_none());
        let page = body_text(r).await;
        assert!(page.contains(M::RefusedToken.t(Lang::En)), "{page}");
    }
    // Refused before any handler runs: a POST without the token changes nothing.
    let r = send(
        &d,
        Request::post("/office/status")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("card_id=X&kind=health&action=revoke"))
            .expect("req"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn another_host_name_is_refused_against_dns_rebinding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    for host in [
        "evil.example:8470",
        "localhost:8470",
        "127.0.0.1:8471",
        "127.0.0.1",
    ] {
        let r = send(
            &d,
            with_cookie(Request::get("/clinic").header(header::HOST, host))
                .body(Body::empty())
                .expect("req"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_safety_headers(&r);
        assert!(body_text(r).await.contains(M::RefusedHost.t(Lang::En)));
    }
    // The token on the address does not get past a wrong Host either.
    let r = send(
        &d,
        Request::get(format!("/?token={TOKEN}"))
            .header(header::HOST, "evil.example:8470")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn a_post_from_another_origin_or_without_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    let form = "lang=zh&back=/clinic";
    let cases: [(Option<&str>, Option<&str>); 5] = [
        (Some("http://evil.example"), None),
        (Some("http://127.0.0.1:8471"), None),
        (Some("null"), None),
        (None, None),
        // The right Origin, but the browser says the request came from another site.
        (Some(ORIGIN), Some("cross-site")),
    ];
    for (origin, site) in cases {
        let mut b = with_cookie(Request::post("/lang").header(header::HOST, HOST))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        let r = send(&d, b.body(Body::from(form)).expect("req")).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?} {site:?}");
        assert!(r.headers().get(header::SET_COOKIE).is_none());
        assert_safety_headers(&r);
        assert!(body_text(r).await.contains(M::RefusedOrigin.t(Lang::En)));
    }
    // The desk's own origin passes (and switches the language).
    let r = send(&d, post_form("/lang", form)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let c = r
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(c.starts_with("civic_desk_lang=zh"), "{c}");
    // No open redirect through `back`.
    let r = send(&d, post_form("/lang", "lang=en&back=https://evil.example/")).await;
    assert_eq!(
        r.headers().get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/clinic"[..])
    );
}

#[tokio::test]
async fn every_response_is_no_store_with_the_csp_even_assets_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    for path in [
        "/clinic",
        "/office",
        "/citizen",
        "/office/batch",
        "/static/desk.css",
        "/static/desk.js",
        "/nope",
    ] {
        let r = send(&d, with_cookie(get(path)).body(Body::empty()).expect("req")).await;
        assert!(
            r.status() == StatusCode::OK
                || (path == "/nope" && r.status() == StatusCode::NOT_FOUND),
            "{path}: {}",
            r.status()
        );
        assert_safety_headers(&r);
    }
}

#[tokio::test]
async fn personal_strings_are_html_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    // A reader name is whatever the device reports.
    d.set_readers(
        true,
        vec![ReaderLive {
            name: "<img src=x onerror=alert(1)> Reader".into(),
            present: true,
            events: 1,
        }],
    );
    // A card number typed into the status form comes back in the error message.
    let r = send(
        &d,
        post_form(
            "/office/status",
            "card_id=%3Cscript%3Ealert(2)%3C%2Fscript%3E&kind=health&action=revoke",
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page = body_text(r).await;
    assert!(
        !page.contains("<img src=x") && !page.contains("<script>alert"),
        "{page}"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt; Reader"),
        "{page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{page}"
    );
    // The page's only script is the desk's own file.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
}

#[tokio::test]
async fn a_pin_is_never_rendered_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    for (path, form, msg) in [
        ("/citizen/open", "pin=73519x", M::PinFormat),
        ("/office/unblock", "pin=735191&again=735192", M::PinsDiffer),
        (
            "/citizen/pin",
            "old=735191&new=73519&again=73519",
            M::PinFormat,
        ),
        // A provisioning form with a bad date: the error names the field, not the PIN.
        (
            "/office/provision",
            "name=A&birth_date=1990-13-01&pin=735191&again=735191",
            M::BadInput,
        ),
    ] {
        let r = send(&d, post_form(path, form)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_safety_headers(&r);
        let page = body_text(r).await;
        assert!(page.contains(msg.t(Lang::En)), "{path}: {page}");
        for pin in ["73519", "735191", "735192"] {
            assert!(!page.contains(pin), "{path} echoed a PIN: {page}");
        }
    }
}

#[test]
fn the_desk_listens_on_127_0_0_1_only() {
    assert!(listen_addr("127.0.0.1", 0).is_ok());
    for a in [
        "0.0.0.0",
        "::",
        "::1",
        "192.168.1.10",
        "127.0.0.2",
        "localhost",
    ] {
        assert!(listen_addr(a, 8470).is_err(), "{a}");
    }
}

#[test]
fn every_message_has_both_languages() {
    for m in M::ALL {
        assert!(
            !m.t(Lang::En).is_empty() && !m.t(Lang::Zh).is_empty(),
            "{m:?}"
        );
    }
    // Chinese really is Chinese (not a copied English line), but for the few that are symbols.
    let copied: Vec<&M> = M::ALL
        .iter()
        .filter(|m| m.t(Lang::En) == m.t(Lang::Zh))
        .collect();
    assert_eq!(copied, vec![&M::BloodHint], "untranslated: {copied:?}");
}

#[test]
fn the_citizen_session_ends_when_the_card_leaves_or_is_swapped_between_polls() {
    use super::CitizenSession;
    use civic_reader::session::CardInfo;
    use civic_reader::workflow::view::ViewReport;

    let dir = tempfile::tempdir().expect("tempdir");
    let d = desk(&dir);
    let reader = |present: bool, events: u32| {
        vec![ReaderLive {
            name: "Reader 0".into(),
            present,
            events,
        }]
    };
    let open = |d: &Desk| {
        *d.citizen.lock().expect("lock") = Some(CitizenSession {
            reader: "Reader 0".into(),
            events: d.reader_events("Reader 0"),
            report: ViewReport {
                card: CardInfo {
                    version: "1.0".into(),
                    card_id: Some("CIV-1".into()),
                    life_cycle: card_applet::protocol::LifeCycle::Issued,
                    free_storage: 0,
                    total_storage: 0,
                    pin_tries_left: Some(3),
                    credential_count: 0,
                    has_card_key: true,
                },
                credentials: Vec::new(),
                log: None,
                watermark: civic_registry::Watermark {
                    height: 0,
                    block_hash: [0; 32],
                    time: 0,
                },
            },
        });
    };
    let is_open = |d: &Desk| d.citizen.lock().expect("lock").is_some();

    d.set_readers(true, reader(true, 4));
    open(&d);
    d.set_readers(true, reader(true, 4));
    assert!(is_open(&d), "the same card, still there");
    d.set_readers(true, reader(false, 5));
    assert!(!is_open(&d), "card removed");

    d.set_readers(true, reader(true, 6));
    open(&d);
    d.set_readers(true, reader(true, 8));
    assert!(!is_open(&d), "another card inserted between two polls");

    d.set_readers(true, reader(true, 8));
    open(&d);
    d.set_readers(false, Vec::new());
    assert!(!is_open(&d), "pcscd gone");
}

#[test]
fn the_token_never_shows_in_the_desks_debug_output() {
    // The desk's state derives Debug (for error context and logs); the token in it used to be
    // a plain String, printed with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let desk = desk(&dir);
    let shown = format!("{desk:?}");
    assert!(!shown.contains(TOKEN), "token in Debug output: {shown}");
    assert!(desk.token_matches(TOKEN));
}
