//! The pages, rendered here with maud: every interpolated string is HTML-escaped by the
//! template (names, allergies, card numbers, error messages alike).

use maud::{html, Markup, DOCTYPE};

use civic_reader::cache::{fmt_age, ScanFreshness};
use civic_reader::session::LogEntry;
use civic_reader::terminal::{describe_access, Role};
use civic_reader::workflow::batch::RowProblem;
use civic_reader::workflow::scan::{ChipCheck, ScanReport};
use civic_reader::workflow::view::ViewReport;
use civic_registry::credential::{Claims, Kind};
use civic_registry::verdict::Verdict;
use civic_registry::Watermark;

use super::i18n::{kind_name, verdict_label, Lang, M};
use super::{BatchResult, Live};

/// The three views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Clinic,
    Office,
    Citizen,
}

impl View {
    pub fn path(self) -> &'static str {
        match self {
            View::Clinic => "/clinic",
            View::Office => "/office",
            View::Citizen => "/citizen",
        }
    }
    fn title(self) -> M {
        match self {
            View::Clinic => M::Clinic,
            View::Office => M::Office,
            View::Citizen => M::Citizen,
        }
    }
}

/// A message at the top of a page.
#[derive(Debug)]
pub struct Notice {
    pub ok: bool,
    pub text: Markup,
}

impl Notice {
    pub fn ok(text: Markup) -> Self {
        Self { ok: true, text }
    }
    pub fn err(text: Markup) -> Self {
        Self { ok: false, text }
    }
}

/// What a page shows besides its body.
#[derive(Debug)]
pub struct Frame<'a> {
    pub lang: Lang,
    pub view: View,
    pub live: &'a Live,
    pub notice: Option<Notice>,
    /// The reader whose card the page shows data of: the page leaves when the card does.
    pub session_reader: Option<String>,
    /// The page follows a running batch.
    pub batch_running: bool,
}

pub fn page(f: Frame<'_>, body: Markup) -> String {
    let lang = f.lang;
    let t = |m: M| m.t(lang);
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (t(M::Title)) " · " (t(f.view.title())) }
                link rel="stylesheet" href="/static/desk.css";
                script src="/static/desk.js" defer {}
            }
            body data-view=(f.view.path())
                 data-session-reader=[f.session_reader.as_deref()]
                 data-batch-running=[f.batch_running.then_some("1")] {
                a.skip href="#main" { (t(M::SkipToContent)) }
                header {
                    p.brand { (t(M::Title)) }
                    nav aria-label=(t(M::Views)) {
                        @for v in [View::Clinic, View::Office, View::Citizen] {
                            a href=(v.path()) aria-current=[(v == f.view).then_some("page")] {
                                (t(v.title()))
                            }
                        }
                    }
                    form.lang method="post" action="/lang" {
                        input type="hidden" name="back" value=(f.view.path());
                        @let other = lang.other();
                        button type="submit" name="lang" value=(other.code()) lang=(other.tag()) {
                            (M::LanguageName.t(other))
                        }
                    }
                }
                (status(lang, f.live))
                main #main tabindex="-1" {
                    h1 { (t(f.view.title())) }
                    @if let Some(n) = &f.notice {
                        div.notice.ok[n.ok].err[!n.ok] role=(if n.ok { "status" } else { "alert" }) {
                            (n.text)
                        }
                    }
                    (body)
                }
            }
        }
    }
    .into_string()
}

/// The live reader status; desk.js keeps it current from `/events` with the texts given here.
fn status(lang: Lang, live: &Live) -> Markup {
    let t = |m: M| m.t(lang);
    html! {
        section #status aria-live="polite" aria-label=(t(M::ReaderStatus))
            data-t-present=(t(M::CardInserted)) data-t-absent=(t(M::NoCard))
            data-t-down=(t(M::ServiceDown)) data-t-none=(t(M::NoReaders))
            data-t-busy=(t(M::Busy)) data-t-batch=(t(M::BatchBusy)) {
            ul #readers {
                @if !live.service {
                    li.down { (t(M::ServiceDown)) }
                } @else if live.readers.is_empty() {
                    li.down { (t(M::NoReaders)) }
                }
                @for r in &live.readers {
                    li.present[r.present].absent[!r.present] {
                        span.reader { (r.name) } ": "
                        strong { (if r.present { t(M::CardInserted) } else { t(M::NoCard) }) }
                    }
                }
            }
            p #busy hidden[live.busy.is_none()] {
                (if live.busy == Some("batch") { t(M::BatchBusy) } else { t(M::Busy) })
            }
        }
    }
}

/// A refusal page (guard.rs): no navigation, no live status.
pub fn refusal(lang: Lang, why: M) -> axum::response::Html<String> {
    axum::response::Html(
        html! {
            (DOCTYPE)
            html lang=(lang.tag()) {
                head {
                    meta charset="utf-8";
                    title { (M::Title.t(lang)) }
                    link rel="stylesheet" href="/static/desk.css";
                }
                body {
                    main #main {
                        h1 { (M::Refused.t(lang)) }
                        div.notice.err role="alert" { p { (why.t(lang)) } }
                    }
                }
            }
        }
        .into_string(),
    )
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Valid => "valid",
        Verdict::Suspended | Verdict::Expired => "warn",
        _ => "bad",
    }
}

/// A verdict badge: colour and words (never colour alone).
pub fn badge(lang: Lang, v: Option<Verdict>) -> Markup {
    match v {
        Some(v) => html! {
            span class={"badge " (verdict_class(v))} {
                (if v.is_valid() { "✔ " } else { "✖ " }) (verdict_label(lang, v))
            }
        },
        None => html! { span.badge.unread { "– " (M::NotRead.t(lang)) } },
    }
}

fn list(lang: Lang, v: &[String]) -> String {
    if v.is_empty() {
        M::None.t(lang).to_owned()
    } else {
        v.join(", ")
    }
}

fn watermark(lang: Lang, w: &Watermark) -> Markup {
    html! {
        (M::RegistryBlock.t(lang)) " " (w.height) " ("
        code { (hex::encode(&w.block_hash[..6])) "…" } ", " (civic_reader::fmt_time(w.time)) ")"
    }
}

/// The claims of a credential as a definition list.
fn claims(lang: Lang, c: &Claims) -> Markup {
    let t = |m: M| m.t(lang);
    html! {
        dl {
            @match c {
                Claims::Identity(i) => {
                    dt { (t(M::Name)) } dd.name { (i.name) }
                    dt { (t(M::Born)) } dd { (i.birth_date) }
                }
                Claims::Emergency(e) => {
                    dt { (t(M::BloodType)) } dd.blood { (e.blood_type) }
                    dt { (t(M::Allergies)) } dd.allergies { (list(lang, &e.allergies)) }
                    dt { (t(M::EmergencyContact)) } dd { (e.emergency_contact) }
                }
                Claims::Health(h) => {
                    dt { (t(M::BloodType)) } dd.blood { (h.emergency.blood_type) }
                    dt { (t(M::Allergies)) } dd.allergies { (list(lang, &h.emergency.allergies)) }
                    dt { (t(M::EmergencyContact)) } dd { (h.emergency.emergency_contact) }
                    dt { (t(M::Conditions)) } dd.conditions { (list(lang, &h.chronic_conditions)) }
                    @for v in &h.vaccinations {
                        dt { (t(M::Vaccination)) } dd { (v.name) " (" (v.date) ")" }
                    }
                }
                Claims::Education(e) => {
                    @for d in &e.degrees {
                        dt { (t(M::Degree)) } dd { (d.title) ", " (d.institution) " (" (d.year) ")" }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clinic

pub fn clinic(lang: Lang, scanned: Option<(&ScanReport, &ScanFreshness)>) -> Markup {
    let t = |m: M| m.t(lang);
    html! {
        form.scan method="post" action="/clinic/scan" {
            button.primary #scan type="submit" accesskey="s" { (t(M::Scan)) }
            " " span.hint { (t(M::ScanHint)) }
        }
        @if let Some((r, fresh)) = scanned {
            (scan_result(lang, r, fresh))
        }
    }
}

fn scan_result(lang: Lang, r: &ScanReport, fresh: &ScanFreshness) -> Markup {
    let t = |m: M| m.t(lang);
    let emergency = r.credentials.iter().find(|c| {
        matches!(
            c.credential.as_ref().map(|c| &c.claims),
            Some(Claims::Emergency(_))
        )
    });
    let health = r.credentials.iter().find(|c| c.kind == Some(Kind::Health));
    let health_unread = health.is_some_and(|h| h.credential.is_none());
    html! {
        section #result aria-labelledby="verdict" {
            @if r.valid {
                p #verdict .verdict.valid { "✔ " (t(M::OverallValid)) }
            } @else {
                p #verdict .verdict.bad {
                    "✖ " (t(M::OverallNotValid))
                    @if let Some(p) = &r.problem { br; span.why { (p) } }
                }
            }
            p.meta {
                (t(M::CardNumber)) " " strong.card-id { (r.card.card_id.as_deref().unwrap_or("?")) }
                " · " (t(M::Chip)) " "
                @match r.chip {
                    ChipCheck::Passed => span.badge.valid { "✔ " (t(M::ChipPassed)) },
                    _ => span.badge.bad { "✖ " (t(M::ChipFailed)) },
                }
            }
            @if let Some(e) = emergency {
                section #emergency .emergency aria-labelledby="emergency-h" {
                    h2 #emergency-h { (t(M::EmergencyData)) " " (badge(lang, e.verdict)) }
                    @if let Some(c) = &e.credential { (claims(lang, &c.claims)) }
                }
            }
            h2 { (t(M::Credentials)) }
            table #credentials {
                thead { tr { th { (t(M::Kind)) } th { (t(M::Verdict)) } th { (t(M::Issuer)) } th { (t(M::Details)) } } }
                tbody {
                    @for c in &r.credentials {
                        tr data-kind=(c.kind.map(|k| k.as_str()).unwrap_or("unknown")) {
                            td { (c.kind.map(|k| kind_name(lang, k)).unwrap_or("?")) }
                            td { (badge(lang, c.verdict)) }
                            td { (c.issuer.as_deref().unwrap_or("–")) }
                            td {
                                @match (&c.credential, c.verdict) {
                                    (Some(cred), Some(v)) if v.is_valid() => (claims(lang, &cred.claims)),
                                    _ => (c.reason),
                                }
                            }
                        }
                    }
                }
            }
            p.watermark #watermark {
                (watermark(lang, &fresh.watermark)) " · "
                @if fresh.source == "cache" {
                    (t(M::FromCache)) " " (fmt_age(fresh.age_seconds)) " " (t(M::Ago))
                } @else {
                    (t(M::FromRegistry))
                }
                @if fresh.stale { br; strong.warn { (t(M::Stale)) " (" (fmt_age(fresh.age_seconds)) ")" } }
                @if let Some(n) = &fresh.note { br; span.note { (n) } }
            }
            @if health_unread {
                form.consent method="post" action="/clinic/scan" autocomplete="off" {
                    h2 { (t(M::FullHealth)) }
                    p { (t(M::ConsentHint)) }
                    (pin_input("consent-pin", "pin", t(M::CitizenPin)))
                    button.primary #consent type="submit" { (t(M::ShowHealth)) }
                }
            }
        }
    }
}

/// A PIN field: masked, digits, never pre-filled, never remembered by the browser.
fn pin_input(id: &str, name: &str, label: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        input id=(id) name=(name) type="password" inputmode="numeric" pattern="[0-9]{6}"
              minlength="6" maxlength="6" autocomplete="off" required;
    }
}

// ---------------------------------------------------------------------------------------
// Citizen

pub fn citizen_locked(lang: Lang) -> Markup {
    let t = |m: M| m.t(lang);
    html! {
        form.pin method="post" action="/citizen/open" autocomplete="off" {
            p { (t(M::CitizenHint)) }
            (pin_input("pin", "pin", t(M::YourPin)))
            button.primary #open type="submit" { (t(M::Open)) }
        }
    }
}

pub fn citizen(lang: Lang, r: &ViewReport) -> Markup {
    let t = |m: M| m.t(lang);
    let kinds: Vec<Kind> = r
        .credentials
        .iter()
        .filter_map(|v| v.credential.as_ref().map(|c| c.kind))
        .collect();
    html! {
        p.meta { (t(M::CardNumber)) " " strong.card-id { (r.card.card_id.as_deref().unwrap_or("?")) } }
        section #records aria-labelledby="records-h" {
            h2 #records-h { (t(M::YourRecords)) }
            @for v in &r.credentials {
                article.record data-kind=[v.credential.as_ref().map(|c| c.kind.as_str())] {
                    @match &v.credential {
                        Some(c) => {
                            h3 { (kind_name(lang, c.kind)) " " (badge(lang, Some(v.verdict))) }
                            p.meta {
                                (t(M::Issuer)) " " (c.issuer_id) " · " (t(M::Issued)) " "
                                (civic_reader::fmt_time(c.issued_at)) " · " (t(M::Expires)) " "
                                (civic_reader::fmt_time(c.expires_at))
                            }
                            @if !v.verdict.is_valid() { p.why { (v.reason) } }
                            (claims(lang, &c.claims))
                        }
                        None => {
                            h3 { (t(M::Slot)) " " (v.slot) " " (badge(lang, Some(v.verdict))) }
                            p.why { (v.reason) }
                        }
                    }
                }
            }
        }
        @if let Some(log) = &r.log { (access_log(lang, log)) }
        p.watermark { (watermark(lang, &r.watermark)) }
        section.forms {
            form.export method="post" action="/citizen/export" {
                h2 { (t(M::Export)) }
                p { (t(M::ExportHint)) }
                label for="export-kind" { (t(M::Kind)) }
                select #export-kind name="kind" {
                    @for k in &kinds { option value=(k.as_str()) { (kind_name(lang, *k)) } }
                }
                button #export type="submit" { (t(M::Download)) }
            }
            form.change-pin method="post" action="/citizen/pin" autocomplete="off" {
                h2 { (t(M::ChangePin)) }
                (pin_input("old-pin", "old", t(M::CurrentPin)))
                (pin_input("new-pin", "new", t(M::NewPin)))
                (pin_input("new-pin2", "again", t(M::RepeatPin)))
                button #change-pin type="submit" { (t(M::ChangePin)) }
            }
            form method="post" action="/citizen/close" {
                button #close type="submit" { (t(M::Finish)) }
            }
        }
    }
}

fn access_log(lang: Lang, log: &[LogEntry]) -> Markup {
    let t = |m: M| m.t(lang);
    html! {
        section #log aria-labelledby="log-h" {
            h2 #log-h { (t(M::AccessLog)) " (" (log.len()) ")" }
            table {
                thead { tr { th { (t(M::When)) } th { (t(M::Terminal)) } th { (t(M::Role)) } th { (t(M::WhatRead)) } } }
                tbody {
                    @for e in log.iter().rev() {
                        tr {
                            td { (civic_reader::fmt_time(e.time)) }
                            td.terminal { (e.terminal_id) }
                            td { (Role::from_byte(e.role).map(|r| super::i18n::role_name(lang, r)).unwrap_or("?")) }
                            td { (describe_access(e.read)) }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Office

pub fn office(lang: Lang, issued_cards: &[String]) -> Markup {
    let t = |m: M| m.t(lang);
    let field = |id: &str, label: M, hint: Option<M>, required: bool| {
        html! {
            label for=(id) { (t(label)) }
            input id=(id) name=(id) type="text" required[required] autocomplete="off";
            @if let Some(h) = hint { small { (t(h)) } }
        }
    };
    html! {
        section.forms {
            form #provision method="post" action="/office/provision" autocomplete="off" {
                h2 { (t(M::Provision)) }
                p { (t(M::ProvisionHint)) }
                (field("card_id", M::CardNumber, Some(M::CardIdHint), false))
                (field("name", M::Name, None, true))
                (field("birth_date", M::Born, Some(M::DateHint), true))
                (field("blood_type", M::BloodType, Some(M::BloodHint), false))
                (field("allergies", M::Allergies, Some(M::ListHint), false))
                (field("emergency_contact", M::EmergencyContact, None, false))
                (field("chronic_conditions", M::Conditions, Some(M::ListHint), false))
                (field("vaccinations", M::Vaccination, Some(M::VaccinationHint), false))
                (field("degrees", M::Degree, Some(M::DegreeHint), false))
                (pin_input("prov-pin", "pin", t(M::NewPin)))
                (pin_input("prov-pin2", "again", t(M::RepeatPin)))
                button.primary #provision-go type="submit" { (t(M::ProvisionGo)) }
            }
            form #status-form method="post" action="/office/status" {
                h2 { (t(M::ChangeStatus)) }
                label for="status-card" { (t(M::CardNumber)) }
                input #status-card name="card_id" type="text" list="issued-cards" required autocomplete="off";
                datalist #issued-cards { @for c in issued_cards { option value=(c) {} } }
                label for="status-kind" { (t(M::Kind)) }
                select #status-kind name="kind" {
                    @for k in [Kind::Identity, Kind::Health, Kind::Emergency, Kind::Education] {
                        option value=(k.as_str()) { (kind_name(lang, k)) }
                    }
                }
                label for="status-action" { (t(M::Action)) }
                select #status-action name="action" {
                    option value="revoke" { (t(M::Revoke)) }
                    option value="suspend" { (t(M::Suspend)) }
                    option value="reinstate" { (t(M::Reinstate)) }
                }
                button #status-go type="submit" { (t(M::Apply)) }
            }
            form #unblock method="post" action="/office/unblock" autocomplete="off" {
                h2 { (t(M::Unblock)) }
                p { (t(M::UnblockHint)) }
                (pin_input("unblock-pin", "pin", t(M::NewPin)))
                (pin_input("unblock-pin2", "again", t(M::RepeatPin)))
                button #unblock-go type="submit" { (t(M::Unblock)) }
            }
            form #batch data-busy=(t(M::Uploading)) {
                h2 { (t(M::Batch)) }
                p { (t(M::BatchHint)) }
                label for="batch-file" { (t(M::BatchFile)) }
                input #batch-file type="file" accept=".csv,text/csv" required;
                button #batch-go type="submit" { (t(M::BatchGo)) }
                p #batch-error .notice.err hidden role="alert" {}
            }
        }
    }
}

pub fn batch(lang: Lang, b: &BatchResult, live: Option<&super::BatchLive>) -> Markup {
    let t = |m: M| m.t(lang);
    let (done, total) = live.map(|l| (l.done, l.total.max(1))).unwrap_or((0, 1));
    html! {
        section #batch-run data-t-key=(t(M::PassKey)) data-t-write=(t(M::PassWrite)) {
            h2 { (t(M::Batch)) }
            @if b.running {
                p #batch-pass { @match live.map(|l| l.pass.as_str()) { Some("write") => (t(M::PassWrite)), _ => (t(M::PassKey)) } }
                progress #batch-bar max=(total) value=(done) aria-label=(t(M::Progress)) { (done) "/" (total) }
                p #batch-count { (done) " / " (total) }
                p #batch-note .note { (live.map(|l| l.note.as_str()).unwrap_or("")) }
            }
            @if let Some(s) = &b.summary {
                p #batch-done .verdict.valid[s.complete()].warn[!s.complete()] {
                    (t(M::BatchDone)) ": " (s.provisioned.len()) " " (t(M::Provisioned)) ", "
                    (s.already_done.len()) " " (t(M::AlreadyDone)) ", "
                    (s.skipped.len()) " " (t(M::Skipped))
                }
                @if !s.provisioned.is_empty() {
                    ul.done { @for d in &s.provisioned { li { (t(M::Line)) " " (d.line) ": " (d.card_id) } } }
                }
            }
            @if let Some(e) = &b.error {
                div.notice.err role="alert" { p { (t(M::BatchStopped)) } p { (e) } }
            }
            (problems(lang, b.summary.as_ref().map(|s| s.skipped.as_slice()).unwrap_or(&b.problems)))
            p { a href="/office" { (t(M::BackToOffice)) } }
        }
    }
}

fn problems(lang: Lang, rows: &[RowProblem]) -> Markup {
    html! {
        @if !rows.is_empty() {
            div #batch-problems .notice.err role="alert" {
                p { (M::RowsSkipped.t(lang)) }
                ul { @for p in rows { li { (M::Line.t(lang)) " " (p.line) ": " (p.reason) } } }
            }
        }
    }
}

/// An error for a notice: the headline in the page's language and the library's words.
pub fn error(lang: Lang, headline: M, detail: &str) -> Markup {
    html! { p { strong { (headline.t(lang)) } } p.detail { (detail) } }
}

pub fn text(s: &str) -> Markup {
    html! { p { (s) } }
}
