//! Replays an `applet_session` input and prints every step and the card's answer, for
//! triaging a crash or checking what a seed reaches (run from `fuzz/`, stable is enough):
//!
//!     cargo run --example trace_session -- corpus-seeds/applet_session/issued_clinic
//!
//! It drives the card the way the target does (same start states, RNG seed and harness
//! signatures) but checks no invariants.

use card_applet::{Card, MemoryStore};
use civic_fuzz::{
    fnv1a, hex, parse_session, snapshots, terminal_key, FuzzRng, Op, Start, AUTH_FRESH_CHALLENGE,
    GET_CHALLENGE,
};

fn show(bytes: &[u8]) -> String {
    const MAX: usize = 48;
    let hex: String = bytes.iter().take(MAX).map(|b| format!("{b:02X}")).collect();
    if bytes.len() > MAX {
        format!("{hex}.. ({} bytes)", bytes.len())
    } else {
        hex
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: trace_session <input file>");
    let data = std::fs::read(&path).expect("read the input");
    let (start, ops) = parse_session(&data);
    let snap = snapshots();
    let store = match start {
        Start::Issued => MemoryStore::with_state(snap.issued.clone()),
        Start::Personalised => MemoryStore::with_state(snap.personalised.clone()),
        Start::Blank => MemoryStore::new(),
    };
    let mut card = Card::new(store, FuzzRng::new(fnv1a(&data))).expect("snapshot loads");
    println!("start: {start:?}, {} ops", ops.len());
    let mut key = terminal_key(0);
    let mut challenge = [0u8; 16];
    let mut step = 0;
    let mut send =
        |card: &mut Card<MemoryStore, FuzzRng>, apdu: &[u8], challenge: &mut [u8; 16]| {
            let r = card.process(apdu);
            if apdu.get(1) == Some(&0x84) && r.len() == 18 && r.ends_with(&[0x90, 0x00]) {
                challenge.copy_from_slice(&r[..16]);
            }
            println!("{step:4}  > {}\n      < {}", show(apdu), show(&r));
            step += 1;
        };
    for op in &ops {
        match op {
            Op::Reset => {
                card.reset();
                println!("      reset");
            }
            Op::Apdu(a) => send(&mut card, a, &mut challenge),
            Op::Cert(c) => {
                println!("      certificate {c:?}");
                key = c.key();
                send(&mut card, &c.apdu(), &mut challenge);
            }
            Op::Auth(a) => {
                println!("      authenticate {a:?}");
                if a.flags & AUTH_FRESH_CHALLENGE != 0 {
                    send(&mut card, &hex(GET_CHALLENGE), &mut challenge);
                }
                let id = card.state().card_id.clone().unwrap_or_default();
                let apdu = a.apdu(key, &id, &challenge);
                send(&mut card, &apdu, &mut challenge);
            }
        }
    }
    println!(
        "latest time seen {}, {} log entries",
        card.state().latest_time,
        card.state().access_log.len()
    );
}
