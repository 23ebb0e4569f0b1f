//! The reader side of Civic Card: transports (PC/SC, in-process), APDU exchange, typed card
//! sessions, and the three workflows (issuing office, clinic, citizen) used by the `civic` CLI.

pub mod apdu;
pub mod cache;
pub mod datadir;
pub mod office;
pub mod session;
pub mod sm;
pub mod terminal;
pub mod transport;
pub mod workflow;

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A Unix time as an RFC 3339 UTC timestamp (seconds).
pub fn fmt_time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}
