//! The one layer below the handlers: secure messaging (PACE and protected APDUs, [`sm`]),
//! command chaining (CLA bit 0x10), response chunking (61xx + GET RESPONSE) and extended
//! lengths. [`Card::process`] is the card's entry point.
//!
//! Secure messaging wraps each raw APDU: a protected command (CLA 0C / 1C) is checked and
//! decrypted, then goes through chaining, GET RESPONSE and the handlers exactly as a plain
//! one does, and its answer is protected. On an issued card a plain command other than
//! SELECT, GET CHALLENGE, GET RESPONSE and the PACE set-up is refused (6987). A plain command
//! inside a session, any SM error (6988) and a reset close the session: keys wiped, pending
//! response data and chains dropped.

use alloc::vec::Vec;
use core::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::apdu::{CommandApdu, SHORT_NE_MAX};
use crate::applet::{Applet, LoadError};
use crate::command::{cla_supported, ins_supported, Command};
use crate::protocol::LifeCycle;
use crate::protocol::{cla, ins, Status, STORAGE_BUDGET};
use crate::sm::{self, CardSm, CLA_SM};
use crate::state::PersistentState;
use crate::store::Store;

/// Largest response data field in one response APDU (vpcd casts lengths to u16, and the
/// response carries the two SW bytes too).
pub const MAX_RESPONSE_DATA: usize = 65_533;
/// Largest accumulated command chain.
pub const MAX_CHAIN: usize = STORAGE_BUDGET + 1024;

struct Chain {
    ins: u8,
    p1: u8,
    p2: u8,
    // May carry a PIN.
    data: Zeroizing<Vec<u8>>,
}

/// A Civic Card: raw APDUs in, raw responses (data || SW1 SW2) out.
pub struct Card<S, R> {
    applet: Applet<S, R>,
    chain: Option<Chain>,
    pending: Vec<u8>,
    sm: CardSm,
    /// Issued cards refuse plain commands (always, but in the plaintext baseline of the
    /// secure-messaging benchmark).
    require_sm: bool,
}

impl<S, R> fmt::Debug for Card<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Card")
            .field("applet", &self.applet)
            .field("chaining", &self.chain.as_ref().map(|c| c.data.len()))
            .field("pending", &self.pending.len())
            .field("sm", &self.sm)
            .finish()
    }
}

#[cfg(feature = "std")]
impl<S: Store> Card<S, rand_core::OsRng> {
    /// A card using the operating system's RNG.
    pub fn with_os_rng(store: S) -> Result<Self, LoadError> {
        Card::new(store, rand_core::OsRng)
    }
}

/// Plain commands an issued card still answers: selection, the terminal-authentication
/// nonce and the rest of a plain answer (PACE is handled before).
fn plain_allowed(i: u8) -> bool {
    matches!(i, ins::SELECT | ins::GET_CHALLENGE | ins::GET_RESPONSE)
}

fn sw(status: Status) -> Vec<u8> {
    status.sw().to_be_bytes().to_vec()
}

fn more_data(remaining: usize) -> Status {
    Status::MoreData(if remaining >= SHORT_NE_MAX {
        0
    } else {
        remaining as u8
    })
}

impl<S: Store, R: RngCore + CryptoRng> Card<S, R> {
    /// Load the card from `store` (blank when the store holds nothing). A corrupt state is an
    /// error, not a blank card.
    pub fn new(store: S, rng: R) -> Result<Self, LoadError> {
        Ok(Card {
            applet: Applet::new(store, rng)?,
            chain: None,
            pending: Vec::new(),
            sm: CardSm::default(),
            require_sm: true,
        })
    }

    /// Power cycle / warm reset: clears selection, verifications, a pending chain and
    /// pending response data. Persistent state is untouched.
    pub fn reset(&mut self) {
        self.applet.reset();
        self.abort();
    }

    /// The plaintext baseline of the secure-messaging benchmark (tests/benches/
    /// secure_messaging.rs, critical_paths.rs): this card, once issued, also answers plain
    /// commands, as cards did before issue 7. The `civic-card` runner sets it only under its
    /// undocumented-in-help `--benchmark-plaintext-baseline` flag (with a warning on stderr);
    /// for measuring only.
    #[doc(hidden)]
    pub fn plaintext_baseline_for_benchmarks(&mut self) {
        self.require_sm = false;
    }

    /// Whether a secure-messaging session is established.
    pub fn sm_active(&self) -> bool {
        self.sm.active()
    }

    /// Close the SM session (keys wiped) and drop any chain and pending response data.
    fn abort(&mut self) {
        if self.sm.active() {
            self.applet.clear_security();
        }
        self.sm.close();
        self.chain = None;
        self.pending.clear();
    }

    pub fn applet(&self) -> &Applet<S, R> {
        &self.applet
    }

    pub fn state(&self) -> &PersistentState {
        self.applet.state()
    }

    /// The serialised persistent state (what the store holds after the last commit).
    pub fn serialized_state(&self) -> Zeroizing<Vec<u8>> {
        self.applet.state().encode().unwrap_or_default()
    }

    pub fn store(&self) -> &S {
        self.applet.store()
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.applet.store_mut()
    }

    /// Process one command APDU and return the response APDU. Never panics.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let apdu = match CommandApdu::parse(raw) {
            Ok(a) => a,
            Err(s) => {
                self.abort();
                return sw(s);
            }
        };
        if apdu.cla & !cla::CHAINING == CLA_SM {
            return self.process_protected(apdu);
        }
        if self.sm.active() {
            // ISO 7816-4 10.1 / Doc 9303-11 9.8: a plain command ends the session.
            self.abort();
        }
        if cla_supported(apdu.cla) && sm::is_pace(apdu.ins) {
            self.chain = None;
            self.pending.clear();
            return self.pace(&apdu);
        }
        let issued = self.require_sm && self.applet.state().life_cycle == LifeCycle::Issued;
        if issued && cla_supported(apdu.cla) && !plain_allowed(apdu.ins) {
            self.chain = None;
            self.pending.clear();
            return sw(Status::SmMissing);
        }
        self.process_plain(apdu)
    }

    /// PACE set-up (plain): MSE:SET AT and the GENERAL AUTHENTICATE steps.
    fn pace(&mut self, apdu: &CommandApdu) -> Vec<u8> {
        if !self.applet.selected() {
            self.sm.close();
            return sw(Status::ConditionsNotSatisfied);
        }
        let r = if apdu.ins == ins::MSE {
            if apdu.cla != cla::PLAIN {
                self.sm.close();
                return sw(Status::ClaNotSupported);
            }
            self.sm.mse_set_at(apdu)
        } else {
            self.applet.pace(&mut self.sm, apdu)
        };
        match r {
            Ok(data) if data.is_empty() => sw(Status::Ok),
            Ok(mut data) => {
                data.extend_from_slice(&sw(Status::Ok));
                data
            }
            Err(s) => {
                self.sm.close();
                sw(s)
            }
        }
    }

    /// A protected command: unwrap (any error closes the session: 6988), run it as a plain
    /// one, protect the answer.
    fn process_protected(&mut self, apdu: CommandApdu) -> Vec<u8> {
        let Some(mut channel) = self.sm.take_channel() else {
            self.abort();
            return sw(Status::SmIncorrect);
        };
        let mut inner = match channel.unprotect_command(&apdu) {
            Ok(inner) => inner,
            Err(_) => {
                drop(channel);
                self.abort();
                return sw(Status::SmIncorrect);
            }
        };
        // A short protected command has Ne <= 256 for its protected answer, which then carries
        // at most SHORT_PROTECTED_MAX plain bytes (ISO 7816-4 10.2 puts the answer's data,
        // status and MAC in that one field): cut the plain answer there, the rest waits for
        // GET RESPONSE (61xx), as for a reader that can only do short APDUs.
        if !apdu.extended {
            if inner.ins == ins::GET_RESPONSE && inner.ne == 0 {
                inner.ne = SHORT_NE_MAX;
            }
            inner.ne = inner.ne.min(sm::SHORT_PROTECTED_MAX);
        }
        let response = if sm::is_pace(inner.ins) {
            sw(Status::ConditionsNotSatisfied)
        } else {
            self.process_plain(inner)
        };
        let out = channel.protect_response(&response);
        self.sm.put_channel(channel);
        out
    }

    /// Chaining, GET RESPONSE and the handlers, for a plain command or an unwrapped one.
    fn process_plain(&mut self, apdu: CommandApdu) -> Vec<u8> {
        if !cla_supported(apdu.cla) {
            self.chain = None;
            self.pending.clear();
            return sw(Status::ClaNotSupported);
        }
        if apdu.ins == ins::GET_RESPONSE && apdu.cla == cla::PLAIN && self.chain.is_none() {
            return self.get_response(&apdu);
        }
        self.pending.clear();
        let apdu = match self.dechain(apdu) {
            Ok(Some(a)) => a,
            Ok(None) => return sw(Status::Ok),
            Err(s) => return sw(s),
        };
        let result = Command::try_from(&apdu).and_then(|cmd| self.applet.handle(cmd));
        match result {
            Ok(data) => self.respond(data, &apdu),
            Err(s) => sw(s),
        }
    }

    /// Accumulate a command chain. `Ok(None)`: a link was accepted (answer 9000);
    /// `Ok(Some(apdu))`: a complete command to execute.
    fn dechain(&mut self, apdu: CommandApdu) -> Result<Option<CommandApdu>, Status> {
        let chained = apdu.cla & cla::CHAINING != 0;
        match self.chain.take() {
            Some(mut chain) => {
                if (chain.ins, chain.p1, chain.p2) != (apdu.ins, apdu.p1, apdu.p2) {
                    return Err(Status::LastCommandExpected);
                }
                if chain.data.len() + apdu.data.len() > MAX_CHAIN {
                    return Err(Status::WrongLength);
                }
                chain.data.extend_from_slice(&apdu.data);
                if chained {
                    self.chain = Some(chain);
                    return Ok(None);
                }
                Ok(Some(CommandApdu {
                    cla: apdu.cla & !cla::CHAINING,
                    ins: apdu.ins,
                    p1: apdu.p1,
                    p2: apdu.p2,
                    data: core::mem::take(&mut *chain.data),
                    ne: apdu.ne,
                    extended: apdu.extended,
                }))
            }
            None if chained => {
                if !ins_supported(apdu.ins) {
                    return Err(Status::InsNotSupported);
                }
                if apdu.ins == ins::GET_RESPONSE {
                    return Err(Status::ChainingNotSupported);
                }
                if apdu.data.len() > MAX_CHAIN {
                    return Err(Status::WrongLength);
                }
                self.chain = Some(Chain {
                    ins: apdu.ins,
                    p1: apdu.p1,
                    p2: apdu.p2,
                    data: Zeroizing::new(apdu.data.clone()),
                });
                Ok(None)
            }
            None => Ok(Some(apdu)),
        }
    }

    /// Send as much of `data` as Ne allows; keep the rest for GET RESPONSE.
    fn respond(&mut self, mut data: Vec<u8>, apdu: &CommandApdu) -> Vec<u8> {
        if data.is_empty() {
            return sw(Status::Ok);
        }
        let limit = if apdu.ne == 0 {
            0
        } else {
            apdu.ne.min(MAX_RESPONSE_DATA)
        };
        if data.len() <= limit {
            data.extend_from_slice(&sw(Status::Ok));
            return data;
        }
        self.pending = data.split_off(limit);
        data.extend_from_slice(&sw(more_data(self.pending.len())));
        data
    }

    fn get_response(&mut self, apdu: &CommandApdu) -> Vec<u8> {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return sw(Status::IncorrectP1P2);
        }
        if !apdu.data.is_empty() {
            return sw(Status::WrongLength);
        }
        if self.pending.is_empty() {
            return sw(Status::ConditionsNotSatisfied);
        }
        let ne = if apdu.ne == 0 { SHORT_NE_MAX } else { apdu.ne };
        let n = ne.min(MAX_RESPONSE_DATA).min(self.pending.len());
        let rest = self.pending.split_off(n);
        let mut out = core::mem::replace(&mut self.pending, rest);
        let status = if self.pending.is_empty() {
            Status::Ok
        } else {
            more_data(self.pending.len())
        };
        out.extend_from_slice(&sw(status));
        out
    }
}
