//! The workflows, independent of the CLI: they take a transport and a registry, so tests run
//! them in-process and the CLI runs them over PC/SC.

pub mod agency;
pub mod batch;
pub mod provision;
pub mod scan;
pub mod view;

use civic_registry::credential::{Claims, Kind};

/// The card slot each kind of credential lives in.
pub fn slot_of(kind: Kind) -> u8 {
    match kind {
        Kind::Identity => 0,
        Kind::Health => 1,
        Kind::Education => 2,
        Kind::Emergency => 3,
    }
}

/// One line summing up a credential's claims, for scan and view tables.
pub fn summary(claims: &Claims) -> String {
    match claims {
        Claims::Identity(i) => format!("{}, born {}", i.name, i.birth_date),
        Claims::Health(h) => {
            let allergies = if h.emergency.allergies.is_empty() {
                "none".to_owned()
            } else {
                h.emergency.allergies.join(", ")
            };
            format!(
                "blood type {}, allergies: {}",
                h.emergency.blood_type, allergies
            )
        }
        Claims::Emergency(e) => format!(
            "blood type {}, allergies: {}, contact: {}",
            e.blood_type,
            if e.allergies.is_empty() {
                "none".to_owned()
            } else {
                e.allergies.join(", ")
            },
            e.emergency_contact
        ),
        Claims::Education(e) => match e.degrees.as_slice() {
            [] => "no degrees".to_owned(),
            ds => ds
                .iter()
                .map(|d| format!("{} ({}, {})", d.title, d.institution, d.year))
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}
