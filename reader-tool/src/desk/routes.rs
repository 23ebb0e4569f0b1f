//! The desk's routes. Card and registry work runs on blocking threads through the CLI's own
//! functions; handlers only parse forms and render.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use civic_reader::cache::StalePolicy;
use civic_reader::session::{CardError, Pin};
use civic_reader::terminal::{self, Role};
use civic_reader::transport::TransportError;
use civic_reader::workflow::batch::{self, Pass, Progress};
use civic_registry::credential::Kind;
use civic_registry::status::CredentialStatus;
use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::guard::{self, cookie, Refusal, TOKEN_COOKIE};
use super::i18n::{lang_of, Lang, LANG_COOKIE, M};
use super::pages::{self, Frame, Notice, View};
use super::{BatchResult, CitizenSession, Desk};
use crate::cmd;

pub fn router(desk: Arc<Desk>) -> Router {
    Router::new()
        .route("/", get(enter))
        .route("/clinic", get(clinic))
        .route("/clinic/scan", post(clinic_scan))
        .route("/citizen", get(citizen))
        .route("/citizen/open", post(citizen_open))
        .route("/citizen/close", post(citizen_close))
        .route("/citizen/export", post(citizen_export))
        .route("/citizen/pin", post(citizen_pin))
        .route("/office", get(office))
        .route("/office/provision", post(office_provision))
        .route("/office/status", post(office_status))
        .route("/office/unblock", post(office_unblock))
        .route("/office/batch", get(batch_page).post(batch_start))
        .route("/lang", post(set_lang))
        .route("/events", get(events))
        .route("/static/desk.css", get(css))
        .route("/static/desk.js", get(js))
        // Browsers ask for it on every page; no icon, and no 404 in the console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&desk),
            guard::guard,
        ))
        .with_state(desk)
}

type D = State<Arc<Desk>>;

// ---------------------------------------------------------------------------------------
// Entering, language, assets, live status

#[derive(Deserialize)]
struct Enter {
    token: Option<String>,
}

/// The printed address: `/?token=...`. The token becomes a cookie and the browser is sent on
/// to an address without it (out of the address bar, the history's current entry and any
/// Referer).
async fn enter(State(desk): D, headers: HeaderMap, Query(q): Query<Enter>) -> Response {
    let presented = q
        .token
        .as_deref()
        .or_else(|| cookie(&headers, TOKEN_COOKIE));
    match presented {
        Some(t) if desk.token_matches(t) => {
            let mut r = Redirect::to("/clinic").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{TOKEN_COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => guard::refused(&headers, Refusal::Token),
    }
}

#[derive(Deserialize)]
struct SetLang {
    lang: String,
    back: String,
}

async fn set_lang(Form(f): Form<SetLang>) -> Response {
    let lang = Lang::from_code(&f.lang);
    // Back to one of the desk's own pages only (no open redirect).
    let back = match f.back.as_str() {
        "/office" | "/citizen" | "/office/batch" => f.back.as_str(),
        _ => "/clinic",
    };
    let mut r = Redirect::to(back).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; SameSite=Strict; Path=/; Max-Age=31536000",
        lang.code()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/desk.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/desk.js"),
    )
        .into_response()
}

async fn not_found(headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    (StatusCode::NOT_FOUND, pages::refusal(lang, M::NotFound)).into_response()
}

/// Reader and card status, the running operation and batch progress, as Server-Sent Events.
async fn events(
    State(desk): D,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = desk.live.subscribe();
    let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let json = serde_json::to_string(&*rx.borrow_and_update()).unwrap_or_default();
        Some((Ok(Event::default().event("live").data(json)), (rx, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

// ---------------------------------------------------------------------------------------
// Helpers

fn render(
    desk: &Desk,
    lang: Lang,
    view: View,
    notice: Option<Notice>,
    body: maud::Markup,
) -> Response {
    render_with(desk, lang, view, notice, None, body)
}

fn render_with(
    desk: &Desk,
    lang: Lang,
    view: View,
    notice: Option<Notice>,
    session_reader: Option<String>,
    body: maud::Markup,
) -> Response {
    let live = desk.live();
    Html(pages::page(
        Frame {
            lang,
            view,
            live: &live,
            notice,
            session_reader,
            batch_running: false,
        },
        body,
    ))
    .into_response()
}

/// Why a card operation did not run or failed.
enum Failed {
    /// Another operation holds the card.
    Busy,
    Error(anyhow::Error),
}

/// Run `f` on a blocking thread with the card claimed for it.
async fn on_card<T: Send + 'static>(
    desk: &Arc<Desk>,
    what: &'static str,
    f: impl FnOnce(&Desk) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Failed> {
    let guard = desk.claim_card(what).ok_or(Failed::Busy)?;
    let d = Arc::clone(desk);
    tokio::task::spawn_blocking(move || {
        let _card = guard;
        f(&d)
    })
    .await
    .map_err(|e| Failed::Error(anyhow::anyhow!("the operation failed: {e}")))?
    .map_err(Failed::Error)
}

/// Run registry work (no card) on a blocking thread.
async fn blocking<T: Send + 'static>(
    desk: &Arc<Desk>,
    f: impl FnOnce(&Desk) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let d = Arc::clone(desk);
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(|e| anyhow::anyhow!("the operation failed: {e}"))?
}

/// The notice for a failure: a headline in the page's language naming what happened (wrong PIN
/// with the tries left, blocked PIN, card removed, ...) and the library's own words.
fn failure(lang: Lang, what: M, f: Failed) -> Notice {
    let e = match f {
        Failed::Busy => return Notice::err(pages::text(M::BusyRefused.t(lang))),
        Failed::Error(e) => e,
    };
    let detail = cmd::describe_error(&e);
    let card = e.chain().find_map(|c| c.downcast_ref::<CardError>());
    let password_refused = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<TransportError>(),
            Some(TransportError::PasswordRefused(_))
        ) || matches!(
            c.downcast_ref::<civic_reader::apdu::ApduError>(),
            Some(civic_reader::apdu::ApduError::Transport(
                TransportError::PasswordRefused(_)
            ))
        )
    });
    let headline = match card {
        Some(CardError::WrongPin(n)) => {
            return Notice::err(maud::html! {
                p { strong #wrong-pin { (M::WrongPin.t(lang)) " " (n) " " (M::TriesLeft.t(lang)) } }
                p.detail { (detail) }
            })
        }
        Some(CardError::PinBlocked) => M::PinBlocked,
        _ if password_refused => M::PasswordRefused,
        _ if cmd::transport_hint(&e) == Some(cmd::CARD) => M::CardRemoved,
        _ if cmd::transport_hint(&e) == Some(cmd::SERVICE) => M::ServiceGone,
        _ => what,
    };
    Notice::err(pages::error(lang, headline, &detail))
}

fn parse_pin(lang: Lang, s: &str) -> Result<Pin, Notice> {
    Pin::parse(s).map_err(|_| Notice::err(pages::text(M::PinFormat.t(lang))))
}

fn parse_new_pin(lang: Lang, a: &str, b: &str) -> Result<Pin, Notice> {
    let p = parse_pin(lang, a)?;
    let q = parse_pin(lang, b)?;
    if !p.matches(&q) {
        return Err(Notice::err(pages::text(M::PinsDiffer.t(lang))));
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Clinic

#[derive(Deserialize)]
struct Ended {
    ended: Option<String>,
}

async fn clinic(State(desk): D, headers: HeaderMap, Query(q): Query<Ended>) -> Response {
    let lang = lang_of(&headers);
    let notice = q
        .ended
        .map(|_| Notice::ok(pages::text(M::CardLeft.t(lang))));
    render(&desk, lang, View::Clinic, notice, pages::clinic(lang, None))
}

/// A form with a PIN: wiped when dropped (the request body's own buffers are hyper's).
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct PinForm {
    #[serde(default)]
    pin: String,
}

async fn clinic_scan(State(desk): D, headers: HeaderMap, Form(f): Form<PinForm>) -> Response {
    let lang = lang_of(&headers);
    let pin = if f.pin.is_empty() {
        None
    } else {
        match parse_pin(lang, &f.pin) {
            Ok(p) => Some(p),
            Err(n) => {
                return render(
                    &desk,
                    lang,
                    View::Clinic,
                    Some(n),
                    pages::clinic(lang, None),
                )
            }
        }
    };
    drop(f);
    let done = on_card(&desk, "scan", move |d| {
        let now = civic_reader::now();
        let (registry, fresh) = cmd::scan::scan_registry(
            &d.ctx,
            false,
            Duration::from_secs(24 * 3600),
            StalePolicy::Warn,
            now,
        )?;
        let data = d.ctx.data()?;
        let clinic = terminal::pick(&data, None, Role::Clinic, now)?;
        let mut t = d.ctx.connect_with_pin(&d.reader, pin.as_ref())?;
        let reader = t.inner().reader().to_owned();
        let report = civic_reader::workflow::scan::scan(
            &mut t,
            d.ctx.mode,
            &registry,
            &clinic.as_key(),
            pin.as_ref(),
            now,
        )?;
        Ok((report, fresh, reader))
    })
    .await;
    match done {
        Ok((report, fresh, reader)) => render_with(
            &desk,
            lang,
            View::Clinic,
            None,
            Some(reader),
            pages::clinic(lang, Some((&report, &fresh))),
        ),
        Err(f) => render(
            &desk,
            lang,
            View::Clinic,
            Some(failure(lang, M::ScanFailed, f)),
            pages::clinic(lang, None),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Citizen

async fn citizen(State(desk): D, headers: HeaderMap, Query(q): Query<Ended>) -> Response {
    let lang = lang_of(&headers);
    citizen_page(
        &desk,
        lang,
        q.ended
            .map(|_| Notice::ok(pages::text(M::SessionEnded.t(lang)))),
    )
}

fn citizen_page(desk: &Desk, lang: Lang, notice: Option<Notice>) -> Response {
    let session = desk.citizen.lock().unwrap_or_else(|p| p.into_inner());
    match session.as_ref() {
        Some(s) => render_with(
            desk,
            lang,
            View::Citizen,
            notice,
            Some(s.reader.clone()),
            pages::citizen(lang, &s.report),
        ),
        None => render(
            desk,
            lang,
            View::Citizen,
            notice,
            pages::citizen_locked(lang),
        ),
    }
}

async fn citizen_open(State(desk): D, headers: HeaderMap, Form(f): Form<PinForm>) -> Response {
    let lang = lang_of(&headers);
    let pin = match parse_pin(lang, &f.pin) {
        Ok(p) => p,
        Err(n) => return citizen_page(&desk, lang, Some(n)),
    };
    drop(f);
    let done = on_card(&desk, "view", move |d| {
        cmd::view::read_card(&d.ctx, &d.reader, &pin, true)
    })
    .await;
    match done {
        Ok((report, reader)) => {
            let events = desk.reader_events(&reader);
            *desk.citizen.lock().unwrap_or_else(|p| p.into_inner()) = Some(CitizenSession {
                reader,
                events,
                report,
            });
            Redirect::to("/citizen").into_response()
        }
        Err(f) => citizen_page(&desk, lang, Some(failure(lang, M::ReadFailed, f))),
    }
}

async fn citizen_close(State(desk): D) -> Response {
    *desk.citizen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Redirect::to("/citizen").into_response()
}

#[derive(Deserialize)]
struct ExportForm {
    kind: String,
}

async fn citizen_export(State(desk): D, headers: HeaderMap, Form(f): Form<ExportForm>) -> Response {
    let lang = lang_of(&headers);
    let Ok(kind) = f.kind.parse::<Kind>() else {
        return citizen_page(
            &desk,
            lang,
            Some(Notice::err(pages::text(M::BadInput.t(lang)))),
        );
    };
    let out = {
        let session = desk.citizen.lock().unwrap_or_else(|p| p.into_inner());
        match session.as_ref() {
            None => Err(M::SessionEnded),
            Some(s) => cmd::view::export_of(&s.report, kind)
                .map(|b| (b, s.report.card.card_id.clone().unwrap_or_default()))
                .map_err(|_| M::BadInput),
        }
    };
    match out {
        Ok((bytes, card_id)) => {
            // The card number is printable ASCII without spaces (check_card_id); keep the
            // file name to a safe alphabet all the same.
            let name: String = format!("{card_id}-{}.json", kind.as_str())
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            (
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(m) => citizen_page(&desk, lang, Some(Notice::err(pages::text(m.t(lang))))),
    }
}

#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct ChangePinForm {
    #[serde(default)]
    old: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    again: String,
}

async fn citizen_pin(State(desk): D, headers: HeaderMap, Form(f): Form<ChangePinForm>) -> Response {
    let lang = lang_of(&headers);
    let pins =
        parse_pin(lang, &f.old).and_then(|o| Ok((o, parse_new_pin(lang, &f.new, &f.again)?)));
    drop(f);
    let (old, new) = match pins {
        Ok(p) => p,
        Err(n) => return citizen_page(&desk, lang, Some(n)),
    };
    let done = on_card(&desk, "pin", move |d| {
        cmd::pin::change_card_pin(&d.ctx, &d.reader, &old, &new)
    })
    .await;
    let notice = match done {
        Ok(()) => Notice::ok(pages::text(M::PinChanged.t(lang))),
        Err(f) => failure(lang, M::PinChangeFailed, f),
    };
    citizen_page(&desk, lang, Some(notice))
}

// ---------------------------------------------------------------------------------------
// Office

async fn office(State(desk): D, headers: HeaderMap) -> Response {
    office_page(&desk, lang_of(&headers), None).await
}

async fn office_page(desk: &Arc<Desk>, lang: Lang, notice: Option<Notice>) -> Response {
    // The card numbers this office issued, offered in the status form.
    let cards = blocking(desk, |d| {
        let data = d.ctx.data()?;
        let path = data.office_db();
        if !path.exists() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = civic_reader::office::IssuanceBook::open(&path)?
            .all_issued()?
            .into_iter()
            .map(|i| i.card_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    })
    .await
    .unwrap_or_default();
    render(
        desk,
        lang,
        View::Office,
        notice,
        pages::office(lang, &cards),
    )
}

/// The provisioning form: the batch file's columns, one citizen.
#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct ProvisionForm {
    #[serde(default)]
    card_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    birth_date: String,
    #[serde(default)]
    blood_type: String,
    #[serde(default)]
    allergies: String,
    #[serde(default)]
    emergency_contact: String,
    #[serde(default)]
    chronic_conditions: String,
    #[serde(default)]
    vaccinations: String,
    #[serde(default)]
    degrees: String,
    #[serde(default)]
    pin: String,
    #[serde(default)]
    again: String,
}

async fn office_provision(
    State(desk): D,
    headers: HeaderMap,
    Form(f): Form<ProvisionForm>,
) -> Response {
    let lang = lang_of(&headers);
    if f.pin != f.again {
        return office_page(
            &desk,
            lang,
            Some(Notice::err(pages::text(M::PinsDiffer.t(lang)))),
        )
        .await;
    }
    let parsed = batch::citizen_from_fields(&|col| {
        Ok(match col {
            "card_id" => &f.card_id,
            "name" => &f.name,
            "birth_date" => &f.birth_date,
            "pin" => &f.pin,
            "blood_type" => &f.blood_type,
            "allergies" => &f.allergies,
            "emergency_contact" => &f.emergency_contact,
            "chronic_conditions" => &f.chronic_conditions,
            "vaccinations" => &f.vaccinations,
            "degrees" => &f.degrees,
            other => return Err(format!("{other}: not in the form")),
        }
        .trim()
        .to_owned())
    });
    drop(f);
    let (citizen, pin) = match parsed {
        Ok(x) => x,
        Err(why) => {
            return office_page(
                &desk,
                lang,
                Some(Notice::err(pages::error(lang, M::BadInput, &why))),
            )
            .await
        }
    };
    let done = on_card(&desk, "provision", move |d| {
        let mut office = cmd::provision::OfficeDesk::open(&d.ctx)?;
        // With no reader fixed for the desk, the first blank card in any reader (not the
        // citizen's card the clinic view is working with).
        let mut t = cmd::provision::connect_blank(&d.ctx, &d.reader)?;
        let done = cmd::provision::provision_card(
            &d.ctx,
            &mut office,
            &cmd::provision::BureauChoice::default(),
            &mut t,
            &citizen,
            &pin,
        )?;
        let can = office.book.can_of(&done.card_id)?;
        Ok((done, can))
    })
    .await;
    let notice = match done {
        Ok((done, can)) => Notice::ok(maud::html! {
            p #provisioned { strong { (M::Provisioned.t(lang)) ": " span.card-id { (done.card_id) } } }
            ul {
                @for c in &done.credentials {
                    li { (super::i18n::kind_name(lang, c.kind)) " · " (c.issuer_id) " · #" (c.status_index) }
                }
            }
            @if let Some(can) = can {
                p { (M::Can.t(lang)) " " strong.can { (can.as_str()) } }
            }
        }),
        Err(f) => failure(lang, M::ProvisionFailed, f),
    };
    office_page(&desk, lang, Some(notice)).await
}

#[derive(Deserialize)]
struct StatusForm {
    card_id: String,
    kind: String,
    action: String,
}

async fn office_status(State(desk): D, headers: HeaderMap, Form(f): Form<StatusForm>) -> Response {
    let lang = lang_of(&headers);
    let to = match f.action.as_str() {
        "revoke" => CredentialStatus::Revoked,
        "suspend" => CredentialStatus::Suspended,
        "reinstate" => CredentialStatus::Valid,
        _ => {
            return office_page(
                &desk,
                lang,
                Some(Notice::err(pages::text(M::BadInput.t(lang)))),
            )
            .await
        }
    };
    let Ok(kind) = f.kind.parse::<Kind>() else {
        return office_page(
            &desk,
            lang,
            Some(Notice::err(pages::text(M::BadInput.t(lang)))),
        )
        .await;
    };
    let card_id = f.card_id.trim().to_owned();
    let id = card_id.clone();
    let done = blocking(&desk, move |d| {
        cmd::status::change(&d.ctx, &id, kind, to).context("changing the status")
    })
    .await;
    let notice = match done {
        Ok(c) => Notice::ok(maud::html! {
            p #status-changed {
                (super::i18n::kind_name(lang, kind)) " · " (card_id) ": "
                (super::i18n::status_name(lang, c.from)) " → " strong { (super::i18n::status_name(lang, c.to)) }
                " (" (M::RegistryBlock.t(lang)) " " (c.watermark.height) ")"
            }
        }),
        Err(e) => failure(lang, M::StatusFailed, Failed::Error(e)),
    };
    office_page(&desk, lang, Some(notice)).await
}

#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
struct NewPinForm {
    #[serde(default)]
    pin: String,
    #[serde(default)]
    again: String,
}

async fn office_unblock(State(desk): D, headers: HeaderMap, Form(f): Form<NewPinForm>) -> Response {
    let lang = lang_of(&headers);
    let pin = parse_new_pin(lang, &f.pin, &f.again);
    drop(f);
    let pin = match pin {
        Ok(p) => p,
        Err(n) => return office_page(&desk, lang, Some(n)).await,
    };
    let done = on_card(&desk, "unblock", move |d| {
        cmd::pin::unblock_card(
            &d.ctx,
            &d.reader,
            &cmd::TerminalArg { terminal: None },
            &pin,
        )
    })
    .await;
    let notice = match done {
        Ok((card_id, tries)) => Notice::ok(maud::html! {
            p #unblocked { (M::PinReset.t(lang)) ": " (card_id) " · " (tries) " " (M::TriesLeft.t(lang)) }
        }),
        Err(f) => failure(lang, M::UnblockFailed, f),
    };
    office_page(&desk, lang, Some(notice)).await
}

/// The batch run's progress, into the live status.
struct DeskProgress(Arc<Desk>);

impl Progress for DeskProgress {
    fn pass(&mut self, pass: Pass, cards: u64) {
        self.0.update_batch(|b| {
            b.pass = match pass {
                Pass::Key => "key".into(),
                Pass::Write => "write".into(),
            };
            b.total = cards;
            b.done = 0;
        });
    }
    fn card(&mut self, _pass: Pass, _line: u64, _card_id: &str) {
        self.0.update_batch(|b| b.done += 1);
    }
    fn anchored(&mut self, issuer_id: &str, batch_id: u64, size: u64) {
        let note = format!("Anchored batch {batch_id} of {issuer_id}: {size} credentials");
        self.0.update_batch(|b| b.note = note);
    }
}

/// `POST /office/batch`: the CSV file as the body (desk.js sends it). The run goes on in a
/// thread of its own; the page follows it.
async fn batch_start(State(desk): D, headers: HeaderMap, body: Bytes) -> Response {
    let lang = lang_of(&headers);
    // The file holds PINs: our copy is wiped on drop (hyper's buffer is not ours to wipe).
    let bytes = Zeroizing::new(body.to_vec());
    drop(body);
    let file = match batch::parse_csv(&bytes) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!("{}: {e:#}", M::NotABatchFile.t(lang));
            return (StatusCode::UNPROCESSABLE_ENTITY, msg).into_response();
        }
    };
    drop(bytes);
    let Some(guard) = desk.claim_card("batch") else {
        return (StatusCode::CONFLICT, M::BusyRefused.t(lang)).into_response();
    };
    *desk.batch.lock().unwrap_or_else(|p| p.into_inner()) = BatchResult {
        running: true,
        problems: file.problems.clone(),
        summary: None,
        error: None,
    };
    desk.live
        .send_modify(|l| l.batch = Some(super::BatchLive::default()));
    let d = Arc::clone(&desk);
    let spawned = std::thread::Builder::new()
        .name("desk-batch".into())
        .spawn(move || {
            let _card = guard;
            let readers = d.reader.reader.iter().cloned().collect();
            let notes = |m: &str| {
                let m = m.to_owned();
                d.update_batch(|b| b.note = m);
            };
            let mut progress = DeskProgress(Arc::clone(&d));
            let run = cmd::provision::OfficeDesk::open(&d.ctx).and_then(|mut office| {
                cmd::provision::run_batch_bytes(
                    &d.ctx,
                    &mut office,
                    &cmd::provision::BureauChoice::default(),
                    readers,
                    &file,
                    &mut progress,
                    &notes,
                )
            });
            {
                let mut b = d.batch.lock().unwrap_or_else(|p| p.into_inner());
                b.running = false;
                match run {
                    Ok(s) => b.summary = Some(s),
                    Err(e) => {
                        b.error = Some(format!(
                            "{} (run the same file again to resume)",
                            cmd::describe_error(&e)
                        ))
                    }
                }
            }
            d.update_batch(|b| b.finished = true);
        });
    if spawned.is_err() {
        desk.batch.lock().unwrap_or_else(|p| p.into_inner()).running = false;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not start the batch",
        )
            .into_response();
    }
    Redirect::to("/office/batch").into_response()
}

async fn batch_page(State(desk): D, headers: HeaderMap) -> Response {
    let lang = lang_of(&headers);
    let live = desk.live();
    let b = desk.batch.lock().unwrap_or_else(|p| p.into_inner());
    let body = pages::batch(lang, &b, live.batch.as_ref());
    Html(pages::page(
        Frame {
            lang,
            view: View::Office,
            live: &live,
            notice: None,
            session_reader: None,
            batch_running: b.running,
        },
        body,
    ))
    .into_response()
}
