//! A sequence of APDUs (and power cycles) through one `Card` with a `MemoryStore` and a
//! deterministic RNG seeded from the input. Input format: see `civic_fuzz::parse_session`.
//!
//! After every step: no panic; every response ends with a known status word and only
//! 9000/61xx carry data; the PIN retry counter is never above 3 (63Cx never says more); the
//! store holds exactly the serialised in-memory state, and a new card loaded from that state
//! succeeds and has the same state; once issued, a card never goes back to personalisation and
//! its card id, authority key, office secret and card key never change.

#![no_main]

use card_applet::io::MAX_RESPONSE_DATA;
use card_applet::protocol::{LifeCycle, Status, PIN_TRIES};
use card_applet::state::PersistentState;
use card_applet::{Card, MemoryStore};
use civic_fuzz::{fnv1a, parse_session, snapshots, FuzzRng, Op, Start};
use libfuzzer_sys::fuzz_target;

/// What may never change once the card is issued.
#[derive(PartialEq)]
struct Frozen {
    card_id: Option<Vec<u8>>,
    authority_key: Option<Vec<u8>>,
    office_secret: Option<[u8; 32]>,
    card_key: Option<[u8; 32]>,
}

fn frozen(s: &PersistentState) -> Frozen {
    Frozen {
        card_id: s.card_id.clone(),
        authority_key: s.authority_key.clone(),
        office_secret: s.office_secret.as_deref().copied(),
        card_key: s.card_key.as_deref().copied(),
    }
}

fn check_response(resp: &[u8], step: usize) {
    assert!(
        resp.len() >= 2,
        "step {step}: response without a status word"
    );
    assert!(
        resp.len() <= MAX_RESPONSE_DATA + 2,
        "step {step}: response of {} bytes",
        resp.len()
    );
    let sw = u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]]);
    let status = Status::from_sw(sw);
    assert_eq!(status.sw(), sw, "step {step}: unknown status word {sw:04X}");
    if resp.len() > 2 {
        assert!(
            matches!(status, Status::Ok | Status::MoreData(_)),
            "step {step}: data with error status {sw:04X}"
        );
    }
    if let Status::TriesLeft(n) = status {
        assert!(
            n <= PIN_TRIES,
            "step {step}: 63C{n:X} above {PIN_TRIES} tries"
        );
    }
}

fn check_state(card: &Card<MemoryStore, FuzzRng>, seed: u64, step: usize) {
    let state = card.state();
    assert!(
        state.pin_tries <= PIN_TRIES,
        "step {step}: PIN retry counter {} above {PIN_TRIES}",
        state.pin_tries
    );
    let serialized = card.serialized_state();
    assert!(!serialized.is_empty(), "step {step}: state does not encode");
    if let Some(stored) = card.store().data() {
        assert!(
            stored == serialized.as_slice(),
            "step {step}: the store differs from the in-memory state"
        );
    }
    let reloaded = match Card::new(
        MemoryStore::with_state(serialized.to_vec()),
        FuzzRng::new(seed),
    ) {
        Ok(c) => c,
        Err(e) => panic!("step {step}: the serialised state does not load: {e}"),
    };
    assert!(
        reloaded.state() == state,
        "step {step}: reloaded state differs: {:?} vs {:?}",
        reloaded.state(),
        state
    );
}

fuzz_target!(|data: &[u8]| {
    let (start, ops) = parse_session(data);
    let seed = fnv1a(data);
    let snap = snapshots();
    let store = match start {
        Start::Issued => MemoryStore::with_state(snap.issued.clone()),
        Start::Personalised => MemoryStore::with_state(snap.personalised.clone()),
        Start::Blank => MemoryStore::new(),
    };
    let mut card = Card::new(store, FuzzRng::new(seed)).expect("snapshot loads");
    let mut issued = (card.state().life_cycle == LifeCycle::Issued).then(|| frozen(card.state()));
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Reset => card.reset(),
            Op::Apdu(apdu) => {
                let resp = card.process(apdu);
                check_response(&resp, step);
            }
        }
        check_state(&card, seed, step);
        let state = card.state();
        match &issued {
            Some(f) => {
                assert_eq!(
                    state.life_cycle,
                    LifeCycle::Issued,
                    "step {step}: back to personalisation"
                );
                assert!(
                    frozen(state) == *f,
                    "step {step}: a personalisation object changed after issue"
                );
            }
            None if state.life_cycle == LifeCycle::Issued => issued = Some(frozen(state)),
            None => {}
        }
    }
});
