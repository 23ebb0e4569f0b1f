//! The command handlers. Each returns response data or a [`Status`]; chaining and response
//! chunking are the job of [`crate::io`].
//!
//! Every change to persistent state goes through [`Applet::commit`]: the new state is built
//! on a copy, checked against the storage budget (6A84), committed to the store (6581 on
//! failure) and only then swapped in, so the in-memory state always equals the stored one.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use p256::ecdsa::{signature::Verifier, Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::command::{Command, GenerateMode, Pin, ResetMode, VerifyRequest};
use crate::protocol::{
    self, access, external_auth_message, internal_auth_message, kind, object, tag, tlv, LifeCycle,
    Status, ACCESS_LOG_MAX, CLOCK_SKEW, CREDENTIAL_SLOTS, PIN_TRIES, STORAGE_BUDGET,
    TERMINAL_CHALLENGE_LEN,
};
use crate::sm::{self, PacePasswords};
use crate::state::{
    valid_authority_key, valid_card_id, Credential, DecodeError, LogEntry, PersistentState,
    PinRecord, SALT_LEN, VERIFIED_CERTS_MAX,
};
use crate::store::{Store, StoreError};
use crate::terminal::{self, TerminalCert};

/// Budget check, commit, swap. On any failure nothing changes.
fn commit_to<S: Store>(
    store: &mut S,
    state: &mut PersistentState,
    new: PersistentState,
) -> Result<(), Status> {
    let bytes = new.encode().map_err(|_| Status::NotEnoughMemory)?;
    if bytes.len() > STORAGE_BUDGET {
        return Err(Status::NotEnoughMemory);
    }
    store.commit(&bytes).map_err(|_| Status::MemoryFailure)?;
    *state = new;
    Ok(())
}

/// The applet's fields PACE needs, borrowed apart from its RNG.
struct PaceCtx<'a, S> {
    state: &'a mut PersistentState,
    store: &'a mut S,
    session: &'a mut Session,
    can_failures: &'a mut u8,
}

impl<S: Store> PacePasswords for PaceCtx<'_, S> {
    fn pace_secret(&self, password: u8) -> Result<sm::PaceSecret, Status> {
        match password {
            sm::password::CAN => {
                let can = self.state.can.as_ref().ok_or(Status::ReferenceNotFound)?;
                if *self.can_failures >= sm::CAN_FAILURES_MAX {
                    return Err(Status::Blocked);
                }
                Ok((Zeroizing::new(can.to_vec()), None))
            }
            _ => {
                let pin = self.state.pin.as_ref().ok_or(Status::ReferenceNotFound)?;
                if self.state.pin_tries == 0 {
                    return Err(Status::Blocked);
                }
                Ok((Zeroizing::new(pin.hash.to_vec()), Some(pin.salt)))
            }
        }
    }

    fn pace_attempt(&mut self, password: u8) -> Result<(), Status> {
        // A new session starts from nothing, whatever the outcome.
        *self.session = Session {
            selected: self.session.selected,
            ..Session::default()
        };
        match password {
            sm::password::CAN => {
                if *self.can_failures >= sm::CAN_FAILURES_MAX {
                    return Err(Status::Blocked);
                }
                *self.can_failures += 1;
                Ok(())
            }
            _ => {
                // The PIN's own retry counter, decremented and persisted before the token is
                // compared, exactly as VERIFY does: PACE is no way around it.
                if self.state.pin_tries == 0 {
                    return Err(Status::Blocked);
                }
                let mut new = self.state.clone();
                new.pin_tries -= 1;
                commit_to(self.store, self.state, new)
            }
        }
    }

    fn pace_success(&mut self, password: u8) -> Result<(), Status> {
        match password {
            sm::password::CAN => {
                *self.can_failures = 0;
                Ok(())
            }
            _ => {
                let mut new = self.state.clone();
                new.pin_tries = PIN_TRIES;
                commit_to(self.store, self.state, new)?;
                // A session proven with the PIN: the citizen is present.
                self.session.pin_verified = true;
                Ok(())
            }
        }
    }

    fn chip_key(&self) -> Option<Zeroizing<[u8; 32]>> {
        self.state.card_key.clone()
    }

    fn pace_failure(&mut self, password: u8) -> Status {
        let left = match password {
            sm::password::CAN => sm::CAN_FAILURES_MAX.saturating_sub(*self.can_failures),
            _ => self.state.pin_tries,
        };
        if left == 0 {
            Status::Blocked
        } else {
            Status::TriesLeft(left)
        }
    }
}

/// The card could not start from its stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    Store(StoreError),
    Corrupt(DecodeError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Store(e) => write!(f, "{e}"),
            LoadError::Corrupt(e) => write!(f, "corrupt card state: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LoadError {}

/// The rights a terminal holds after EXTERNAL AUTHENTICATE, until SELECT or reset.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TerminalSession {
    terminal_id: String,
    role: u8,
    access: u8,
    /// The terminal's authenticated time.
    time: u64,
    /// Read rights already recorded in this session's log entry (0: no entry yet). The entry
    /// is always the newest one: only the current session appends.
    logged: u8,
}

/// Volatile security state, cleared by SELECT and by a reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Session {
    selected: bool,
    pin_verified: bool,
    /// GET CHALLENGE nonce, until EXTERNAL AUTHENTICATE consumes it.
    challenge: Option<[u8; TERMINAL_CHALLENGE_LEN]>,
    /// The last certificate that passed PSO VERIFY CERTIFICATE.
    cert: Option<TerminalCert>,
    /// Its digest ([`terminal::digest`]) when its signature was verified now (not taken from
    /// the card's list): EXTERNAL AUTHENTICATE records it.
    cert_digest: Option<[u8; 32]>,
    /// Rights granted by EXTERNAL AUTHENTICATE.
    terminal: Option<TerminalSession>,
}

impl Session {
    fn rights(&self) -> u8 {
        self.terminal.as_ref().map_or(0, |t| t.access)
    }

    fn has(&self, right: u8) -> bool {
        self.rights() & right != 0
    }
}

/// The applet: persistent state, its store, the RNG and the session.
pub struct Applet<S, R> {
    store: S,
    rng: R,
    state: PersistentState,
    session: Session,
    /// Consecutive PACE runs with a wrong CAN since the card was powered up. Volatile and
    /// kept across warm resets: after [`sm::CAN_FAILURES_MAX`] the card refuses PACE with the
    /// CAN (6983) until it is powered up again (see notes/SECURE-MESSAGING.md).
    can_failures: u8,
}

impl<S, R> fmt::Debug for Applet<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applet")
            .field("state", &self.state)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<S: Store, R: RngCore + CryptoRng> Applet<S, R> {
    /// Load the state from `store` (a blank card when it holds none).
    pub fn new(mut store: S, rng: R) -> Result<Self, LoadError> {
        let state = match store.load().map_err(LoadError::Store)? {
            None => PersistentState::default(),
            Some(bytes) => {
                let bytes = Zeroizing::new(bytes);
                PersistentState::decode(&bytes).map_err(LoadError::Corrupt)?
            }
        };
        Ok(Applet {
            store,
            rng,
            state,
            session: Session::default(),
            can_failures: 0,
        })
    }

    pub fn state(&self) -> &PersistentState {
        &self.state
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Power cycle: forget the selection and all verifications.
    pub fn reset(&mut self) {
        self.session = Session::default();
    }

    /// Serialised size of the current state.
    pub fn used_storage(&self) -> usize {
        self.state
            .encode()
            .map(|e| e.len())
            .unwrap_or(STORAGE_BUDGET)
    }

    /// Budget check, commit, swap. On any failure nothing changes.
    fn commit(&mut self, new: PersistentState) -> Result<(), Status> {
        commit_to(&mut self.store, &mut self.state, new)
    }

    /// A secure-messaging session ended or a new one starts: nothing granted inside the old
    /// one (terminal rights, PIN verification, challenge, certificate) survives; the
    /// selection does.
    pub(crate) fn clear_security(&mut self) {
        self.session = Session {
            selected: self.session.selected,
            ..Session::default()
        };
    }

    /// Whether the application is selected (PACE needs it).
    pub(crate) fn selected(&self) -> bool {
        self.session.selected
    }

    /// One GENERAL AUTHENTICATE step of PACE: the password material and its counters live
    /// here, the protocol in [`sm::CardSm`].
    pub(crate) fn pace(
        &mut self,
        sm: &mut sm::CardSm,
        apdu: &crate::apdu::CommandApdu,
    ) -> Result<Vec<u8>, Status> {
        let mut ctx = PaceCtx {
            state: &mut self.state,
            store: &mut self.store,
            session: &mut self.session,
            can_failures: &mut self.can_failures,
        };
        sm.general_authenticate(apdu, &mut self.rng, &mut ctx)
    }

    fn personalising(&self) -> bool {
        self.state.life_cycle == LifeCycle::Personalisation
    }

    pub fn handle(&mut self, cmd: Command) -> Result<Vec<u8>, Status> {
        if let Command::Select { aid, fci } = &cmd {
            return self.select(aid, *fci);
        }
        if !self.session.selected {
            return Err(Status::ConditionsNotSatisfied);
        }
        match cmd {
            Command::Select { .. } => Err(Status::Unknown),
            Command::GetData { object } => self.get_data(object),
            Command::PutData { object, data } => self.put_data(object, &data),
            Command::GenerateKey { mode } => self.generate_key(mode),
            Command::InternalAuthenticate { challenge } => self.internal_authenticate(&challenge),
            Command::Verify(req) => self.verify(req),
            Command::ChangeReferenceData { old, new } => self.change_pin(&old, &new),
            Command::ResetRetryCounter(mode) => self.reset_retry_counter(mode),
            Command::Activate => self.activate(),
            Command::GetChallenge => self.get_challenge(),
            Command::VerifyCertificate { cert } => self.verify_certificate(&cert),
            Command::ExternalAuthenticate { time, signature } => {
                self.external_authenticate(time, &signature)
            }
        }
    }

    fn select(&mut self, aid: &[u8], fci: bool) -> Result<Vec<u8>, Status> {
        if aid != protocol::AID {
            return Err(Status::NotFound);
        }
        self.session = Session {
            selected: true,
            ..Session::default()
        };
        if !fci {
            return Ok(Vec::new());
        }
        let mut inner = Vec::new();
        tlv::push(&mut inner, tag::DF_NAME, protocol::AID);
        tlv::push(&mut inner, tag::FCI_PROPRIETARY, &self.card_info(false));
        let mut out = Vec::new();
        tlv::push(&mut out, tag::FCI, &inner);
        Ok(out)
    }

    /// 80 version, 81 card id, 82 LCS, 83 free, 84 total, 85 tries (once a PIN is set),
    /// 86 count, 87 has key, 88 latest time; with `session`, also 89 rights, 8A PIN verified.
    fn card_info(&self, session: bool) -> Vec<u8> {
        let used = self.used_storage();
        let free = STORAGE_BUDGET.saturating_sub(used) as u32;
        let mut out = Vec::new();
        tlv::push(&mut out, tag::VERSION, &protocol::APPLET_VERSION);
        tlv::push(
            &mut out,
            tag::CARD_ID,
            self.state.card_id.as_deref().unwrap_or(&[]),
        );
        tlv::push(&mut out, tag::LIFE_CYCLE, &[self.state.life_cycle as u8]);
        tlv::push(&mut out, tag::FREE_STORAGE, &free.to_be_bytes());
        tlv::push(
            &mut out,
            tag::TOTAL_STORAGE,
            &(STORAGE_BUDGET as u32).to_be_bytes(),
        );
        // No PIN yet (a blank card): no counter to report.
        if self.state.pin.is_some() {
            tlv::push(&mut out, tag::PIN_TRIES_LEFT, &[self.state.pin_tries]);
        }
        tlv::push(
            &mut out,
            tag::CREDENTIAL_COUNT,
            &[self.state.credential_count() as u8],
        );
        tlv::push(
            &mut out,
            tag::HAS_CARD_KEY,
            &[u8::from(self.state.card_key.is_some())],
        );
        tlv::push(
            &mut out,
            tag::LATEST_TIME,
            &self.state.latest_time.to_be_bytes(),
        );
        if session {
            tlv::push(&mut out, tag::RIGHTS, &[self.session.rights()]);
            tlv::push(
                &mut out,
                tag::PIN_VERIFIED,
                &[u8::from(self.session.pin_verified)],
            );
        }
        out
    }

    fn public_key_template(&self) -> Result<Vec<u8>, Status> {
        let point = self.state.public_key().ok_or(Status::ReferenceNotFound)?;
        let mut inner = Vec::new();
        tlv::push(&mut inner, tag::EC_POINT, &point);
        let mut out = Vec::new();
        tlv::push(&mut out, tag::PUBLIC_KEY_TEMPLATE, &inner);
        Ok(out)
    }

    fn get_data(&mut self, obj: u16) -> Result<Vec<u8>, Status> {
        match obj {
            object::CARD_INFO => Ok(self.card_info(true)),
            object::CARD_PUBLIC_KEY => self.public_key_template(),
            object::DIRECTORY => {
                let mut out = Vec::new();
                for (slot, cred) in self.state.credentials.iter().enumerate() {
                    if let Some(c) = cred {
                        let mut e = Vec::new();
                        tlv::push(&mut e, tag::SLOT, &[slot as u8]);
                        tlv::push(&mut e, tag::KIND, &[c.kind]);
                        tlv::push(&mut e, tag::LENGTH, &(c.record.len() as u16).to_be_bytes());
                        tlv::push(&mut out, tag::DIRECTORY_ENTRY, &e);
                    }
                }
                Ok(out)
            }
            object::CARD_ID => self.state.card_id.clone().ok_or(Status::ReferenceNotFound),
            object::AUTHORITY_KEY => self
                .state
                .authority_key
                .clone()
                .ok_or(Status::ReferenceNotFound),
            object::ACCESS_LOG => {
                if !self.personalising() && !self.session.pin_verified {
                    return Err(Status::SecurityNotSatisfied);
                }
                let mut out = Vec::new();
                for e in &self.state.access_log {
                    tlv::push(&mut out, tag::LOG_ENTRY, &e.encode_inner());
                }
                Ok(out)
            }
            _ => {
                let slot = credential_slot(obj).ok_or(Status::NotFound)?;
                self.read_credential(slot)
            }
        }
    }

    /// GET DATA of a credential slot. Personalisation state: open, not logged. Issued: the
    /// read right of the credential's kind, or the citizen's PIN; health needs the PIN
    /// (with or without a terminal). A terminal session's reads are logged before the data
    /// leaves the card; if the log cannot be committed, the read is refused.
    fn read_credential(&mut self, slot: u8) -> Result<Vec<u8>, Status> {
        let c = self.state.credentials[usize::from(slot)]
            .as_ref()
            .ok_or(Status::ReferenceNotFound)?;
        let body = credential_body(c);
        if self.personalising() {
            return Ok(body);
        }
        let right = access::read_right(c.kind);
        let allowed = match c.kind {
            // (READ_HEALTH and the PIN) or the PIN alone: the citizen's consent either way.
            kind::HEALTH => self.session.pin_verified,
            _ => self.session.has(right) || self.session.pin_verified,
        };
        if !allowed {
            return Err(Status::SecurityNotSatisfied);
        }
        self.log_read(right)?;
        Ok(body)
    }

    /// Record a read by the authenticated terminal: append an entry on the session's first
    /// read, widen it on later reads; commit only when the bits grow. Oldest entries go when
    /// the log is full or the storage budget would be exceeded.
    fn log_read(&mut self, right: u8) -> Result<(), Status> {
        let Some(t) = &self.session.terminal else {
            return Ok(());
        };
        let what = t.logged | right;
        if what == t.logged {
            return Ok(());
        }
        let mut new = self.state.clone();
        let own_entry = new.access_log.last_mut().filter(|e| {
            t.logged != 0
                && e.terminal_id == t.terminal_id
                && e.role == t.role
                && e.time == t.time
                && e.what == t.logged
        });
        if let Some(e) = own_entry {
            e.what = what;
        } else {
            new.access_log.push(LogEntry {
                terminal_id: t.terminal_id.clone(),
                role: t.role,
                time: t.time,
                what,
            });
            let excess = new.access_log.len().saturating_sub(ACCESS_LOG_MAX);
            new.access_log.drain(..excess);
            let mut size = new.encode().map_err(|_| Status::NotEnoughMemory)?.len();
            // Make room by dropping the oldest entries, never the new one.
            let mut drop = 0;
            while size > STORAGE_BUDGET && drop + 1 < new.access_log.len() {
                size -= new.access_log[drop].encoded_len();
                drop += 1;
            }
            new.access_log.drain(..drop);
        }
        self.commit(new)?;
        if let Some(t) = &mut self.session.terminal {
            t.logged = what;
        }
        Ok(())
    }

    fn put_data(&mut self, obj: u16, data: &[u8]) -> Result<Vec<u8>, Status> {
        match obj {
            object::CAN => {
                if !self.personalising() {
                    return Err(Status::ConditionsNotSatisfied);
                }
                if !sm::valid_can(data) {
                    return Err(Status::WrongData);
                }
                let mut can = Zeroizing::new([0u8; sm::CAN_LEN]);
                can.copy_from_slice(data);
                let mut new = self.state.clone();
                new.can = Some(can);
                self.commit(new)?;
                Ok(Vec::new())
            }
            object::CARD_ID | object::AUTHORITY_KEY => {
                if !self.personalising() {
                    return Err(Status::ConditionsNotSatisfied);
                }
                let mut new = self.state.clone();
                match obj {
                    object::CARD_ID => {
                        if !valid_card_id(data) {
                            return Err(Status::WrongData);
                        }
                        new.card_id = Some(data.to_vec());
                    }
                    _ => {
                        if !valid_authority_key(data) {
                            return Err(Status::WrongData);
                        }
                        new.authority_key = Some(data.to_vec());
                    }
                }
                let authority_changed = new.authority_key != self.state.authority_key;
                self.commit(new)?;
                if authority_changed {
                    // Nothing verified under another authority key survives.
                    self.session.cert = None;
                    self.session.terminal = None;
                }
                Ok(Vec::new())
            }
            object::CARD_INFO
            | object::CARD_PUBLIC_KEY
            | object::DIRECTORY
            | object::ACCESS_LOG => Err(Status::ConditionsNotSatisfied),
            _ => {
                let slot = credential_slot(obj).ok_or(Status::NotFound)?;
                if !self.personalising() && !self.session.has(access::WRITE_CREDENTIALS) {
                    return Err(Status::SecurityNotSatisfied);
                }
                let cred = if data.is_empty() {
                    None
                } else {
                    Some(parse_credential_body(data)?)
                };
                if let Some(c) = &cred {
                    // Anything this large can never fit: refuse before building a copy.
                    if c.record.len() > STORAGE_BUDGET {
                        return Err(Status::NotEnoughMemory);
                    }
                }
                if self.state.credentials[usize::from(slot)] == cred {
                    return Ok(Vec::new());
                }
                let mut new = self.state.clone();
                new.credentials[usize::from(slot)] = cred;
                self.commit(new)?;
                Ok(Vec::new())
            }
        }
    }

    fn generate_key(&mut self, mode: GenerateMode) -> Result<Vec<u8>, Status> {
        match mode {
            GenerateMode::ReadPublic => self.public_key_template(),
            GenerateMode::Generate => {
                if !self.personalising() {
                    return Err(Status::ConditionsNotSatisfied);
                }
                let sk = p256::SecretKey::random(&mut self.rng);
                let mut scalar = Zeroizing::new([0u8; 32]);
                scalar.copy_from_slice(&sk.to_bytes());
                let mut new = self.state.clone();
                new.card_key = Some(scalar);
                self.commit(new)?;
                self.public_key_template()
            }
        }
    }

    fn internal_authenticate(&mut self, challenge: &[u8]) -> Result<Vec<u8>, Status> {
        let scalar = self
            .state
            .card_key
            .as_ref()
            .ok_or(Status::ReferenceNotFound)?;
        let card_id = self.state.card_id.as_deref().unwrap_or(&[]);
        let msg = internal_auth_message(card_id, challenge);
        Ok(sign_with_scalar(scalar, &msg)?.to_bytes().to_vec())
    }

    /// The PIN check with the counter decremented and persisted first. On a match the
    /// counter is still decremented: the caller restores it in its own commit (together with
    /// any other change, so a successful CHANGE REFERENCE DATA is two commits, not three).
    fn check_pin(&mut self, pin: &Pin) -> Result<(), Status> {
        let Some(record) = self.state.pin.clone() else {
            return Err(Status::ReferenceNotFound);
        };
        if self.state.pin_tries == 0 {
            return Err(Status::Blocked);
        }
        self.session.pin_verified = false;
        let mut dec = self.state.clone();
        dec.pin_tries -= 1;
        self.commit(dec)?;
        if record.matches(pin.as_bytes()) {
            Ok(())
        } else if self.state.pin_tries == 0 {
            Err(Status::Blocked)
        } else {
            Err(Status::TriesLeft(self.state.pin_tries))
        }
    }

    fn pin_status(&self) -> Result<Vec<u8>, Status> {
        if self.state.pin.is_none() {
            Err(Status::ReferenceNotFound)
        } else if self.session.pin_verified {
            Ok(Vec::new())
        } else if self.state.pin_tries == 0 {
            Err(Status::Blocked)
        } else {
            Err(Status::TriesLeft(self.state.pin_tries))
        }
    }

    fn verify(&mut self, req: VerifyRequest) -> Result<Vec<u8>, Status> {
        match req {
            VerifyRequest::Status => self.pin_status(),
            VerifyRequest::Pin(pin) => {
                self.check_pin(&pin)?;
                let mut restored = self.state.clone();
                restored.pin_tries = PIN_TRIES;
                self.commit(restored)?;
                self.session.pin_verified = true;
                Ok(Vec::new())
            }
        }
    }

    fn new_pin_record(&mut self, pin: &Pin) -> PinRecord {
        let mut salt = [0u8; SALT_LEN];
        self.rng.fill_bytes(&mut salt);
        PinRecord::new(salt, pin.as_bytes())
    }

    fn change_pin(&mut self, old: &Pin, new_pin: &Pin) -> Result<Vec<u8>, Status> {
        self.check_pin(old)?;
        let record = self.new_pin_record(new_pin);
        let mut new = self.state.clone();
        new.pin = Some(record);
        new.pin_tries = PIN_TRIES;
        self.commit(new)?;
        self.session.pin_verified = true;
        Ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, mode: ResetMode) -> Result<Vec<u8>, Status> {
        if !self.personalising() && !self.session.has(access::PIN_MANAGEMENT) {
            return Err(Status::SecurityNotSatisfied);
        }
        let mut new = self.state.clone();
        match mode {
            ResetMode::NewPin(pin) => {
                new.pin = Some(self.new_pin_record(&pin));
            }
            ResetMode::CounterOnly => {
                if new.pin.is_none() {
                    return Err(Status::ReferenceNotFound);
                }
            }
        }
        new.pin_tries = PIN_TRIES;
        self.commit(new)?;
        self.session.pin_verified = false;
        Ok(Vec::new())
    }

    /// ACTIVATE. The CAN is not required: without it the card still opens a session with
    /// the PIN (PACE with the PIN), and the office's workflow always writes one.
    fn activate(&mut self) -> Result<Vec<u8>, Status> {
        let s = &self.state;
        if !self.personalising()
            || s.card_id.is_none()
            || s.card_key.is_none()
            || s.authority_key.is_none()
            || s.pin.is_none()
        {
            return Err(Status::ConditionsNotSatisfied);
        }
        let mut new = self.state.clone();
        new.life_cycle = LifeCycle::Issued;
        self.commit(new)?;
        Ok(Vec::new())
    }

    /// GET CHALLENGE: a fresh 16-byte nonce, replacing any unused one.
    fn get_challenge(&mut self) -> Result<Vec<u8>, Status> {
        let mut challenge = [0u8; TERMINAL_CHALLENGE_LEN];
        self.rng.fill_bytes(&mut challenge);
        self.session.challenge = Some(challenge);
        Ok(challenge.to_vec())
    }

    /// PSO VERIFY CERTIFICATE: the certificate must chain to the installed authority key and
    /// not have expired relative to the latest time seen. Remembered (volatile) for EXTERNAL
    /// AUTHENTICATE; a refused certificate forgets the previous one, granted rights stay.
    fn verify_certificate(&mut self, cert: &[u8]) -> Result<Vec<u8>, Status> {
        let authority = self
            .state
            .authority_key
            .as_deref()
            .ok_or(Status::ConditionsNotSatisfied)?;
        self.session.cert = None;
        self.session.cert_digest = None;
        // A certificate this card verified before (same bytes, same authority key) and whose
        // terminal then proved its key is not verified again: on a contactless chip a P-256
        // verify is 140-230 ms of a ~500 ms tap (BENCHMARKS.md). Its validity time is checked
        // as for any other, here and in EXTERNAL AUTHENTICATE.
        let digest = terminal::digest(cert, authority);
        let seen = self.state.verified_certs.contains(&digest);
        let cert = if seen {
            terminal::parse_verified_before(cert)
        } else {
            terminal::verify(cert, authority)
        }
        .map_err(|_| Status::SecurityNotSatisfied)?;
        if cert.not_after < self.state.latest_time {
            return Err(Status::SecurityNotSatisfied);
        }
        self.session.cert = Some(cert);
        self.session.cert_digest = (!seen).then_some(digest);
        Ok(Vec::new())
    }

    /// EXTERNAL AUTHENTICATE: the terminal's signature over
    /// [`external_auth_message`]`(card id, challenge, time)` with its certified key. The
    /// challenge is consumed whatever the outcome. On success the time moves the card's
    /// latest time seen forward (persisted) and the session holds the certificate's rights.
    fn external_authenticate(
        &mut self,
        time: u64,
        signature: &[u8; 64],
    ) -> Result<Vec<u8>, Status> {
        let challenge = self.session.challenge.take();
        let (Some(challenge), Some(cert)) = (challenge, self.session.cert.as_ref()) else {
            return Err(Status::ConditionsNotSatisfied);
        };
        let latest = self.state.latest_time;
        if !cert.valid_at(time)
            || cert.not_after < latest
            || time.saturating_add(CLOCK_SKEW) < latest
        {
            return Err(Status::SecurityNotSatisfied);
        }
        let key = VerifyingKey::from_sec1_bytes(&cert.public_key)
            .map_err(|_| Status::SecurityNotSatisfied)?;
        let sig = Signature::from_slice(signature).map_err(|_| Status::SecurityNotSatisfied)?;
        let card_id = self.state.card_id.as_deref().unwrap_or(&[]);
        key.verify(&external_auth_message(card_id, &challenge, time), &sig)
            .map_err(|_| Status::SecurityNotSatisfied)?;
        let granted = TerminalSession {
            terminal_id: cert.terminal_id.clone(),
            role: cert.role,
            access: cert.access,
            time,
            logged: 0,
        };
        // One commit for the latest time and a newly verified certificate's digest (a
        // terminal that proved its key): no extra non-volatile write for the list.
        let digest = self.session.cert_digest.take();
        if time > latest || digest.is_some() {
            let mut new = self.state.clone();
            new.latest_time = new.latest_time.max(time);
            let plain = new.clone();
            if let Some(d) = digest {
                new.verified_certs.retain(|k| *k != d);
                new.verified_certs.insert(0, d);
                new.verified_certs.truncate(VERIFIED_CERTS_MAX);
            }
            match self.commit(new) {
                // The list is an optimisation: a card at its storage budget goes without it.
                Err(Status::NotEnoughMemory) if digest.is_some() => {
                    if time > latest {
                        self.commit(plain)?;
                    }
                }
                r => r?,
            }
        }
        self.session.terminal = Some(granted);
        Ok(Vec::new())
    }
}

fn credential_slot(obj: u16) -> Option<u8> {
    let [hi, lo] = obj.to_be_bytes();
    (u16::from(hi) << 8 == object::CREDENTIAL_BASE && lo < CREDENTIAL_SLOTS).then_some(lo)
}

/// GET DATA of a slot returns the same body PUT DATA wrote: 80 kind(1) 81 record.
fn credential_body(c: &Credential) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.record.len() + 8);
    tlv::push(&mut out, tag::PUT_KIND, &[c.kind]);
    tlv::push(&mut out, tag::PUT_RECORD, &c.record);
    out
}

/// PUT DATA body: exactly 80 kind(1) then 81 record (non-empty).
fn parse_credential_body(data: &[u8]) -> Result<Credential, Status> {
    let mut it = tlv::iter(data);
    let (Some(Ok((tag::PUT_KIND, [k]))), Some(Ok((tag::PUT_RECORD, record))), None) =
        (it.next(), it.next(), it.next())
    else {
        return Err(Status::WrongData);
    };
    if !kind::is_valid(*k) || record.is_empty() {
        return Err(Status::WrongData);
    }
    Ok(Credential {
        kind: *k,
        record: record.to_vec(),
    })
}

/// ECDSA P-256 / SHA-256 with an RFC 6979 nonce, straight from the stored scalar: the same
/// signature as `SigningKey::sign`, without building a `SigningKey`, which computes the public
/// key (a scalar multiplication) that signing does not need, on every INTERNAL AUTHENTICATE.
fn sign_with_scalar(scalar: &[u8; 32], msg: &[u8]) -> Result<Signature, Status> {
    use ecdsa::hazmat::SignPrimitive;
    use sha2::{Digest, Sha256};
    let d = Option::<p256::NonZeroScalar>::from(p256::NonZeroScalar::from_repr((*scalar).into()))
        .ok_or(Status::Unknown)?;
    let z = Sha256::digest(msg);
    let (sig, _) = d
        .as_ref()
        .try_sign_prehashed_rfc6979::<Sha256>(&z, &[])
        .map_err(|_| Status::Unknown)?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::sign_with_scalar;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};

    /// The card's direct signing must give exactly what `SigningKey::sign` gives (RFC 6979 is
    /// deterministic), for several keys and messages.
    #[test]
    fn signing_with_the_scalar_matches_signing_key() {
        for i in 1u8..=8 {
            let mut scalar = [0x11u8; 32];
            scalar[31] = i;
            scalar[0] = i.wrapping_mul(29);
            let key = SigningKey::from_slice(&scalar).expect("valid scalar");
            let msg = [i; 45];
            let want: Signature = key.sign(&msg);
            assert_eq!(sign_with_scalar(&scalar, &msg).expect("signs"), want);
        }
    }

    #[test]
    fn a_zero_scalar_is_refused_not_a_panic() {
        assert!(sign_with_scalar(&[0u8; 32], b"m").is_err());
    }
}
