//! Client-side command APDUs: one constructor per command, encoding in short or extended
//! form (ISO 7816-4 section 5.1), command chaining for long data on short-only readers, and
//! 61xx / GET RESPONSE collection of long answers.

use card_applet::apdu::chain_pieces;
use card_applet::protocol::{cla, genkey, ins, object, reference, Status, AID, RESET_WITH_NEW_PIN};
use zeroize::Zeroizing;

use crate::transport::{Transport, TransportError};

/// How long command APDUs are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApduMode {
    /// Extended Lc/Le when needed: one APDU per command (pcscd and vpcd pass them through).
    #[default]
    Extended,
    /// Short APDUs only: command chaining out, 61xx + GET RESPONSE back.
    Short,
}

/// A command APDU before encoding. The data is zeroized on drop because it may hold a PIN or
/// the office secret.
#[derive(Clone)]
pub struct Command {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Zeroizing<Vec<u8>>,
    /// Expected response length Ne; 0 for none.
    pub ne: usize,
}

impl std::fmt::Debug for Command {
    // The data may be a PIN: show its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Command({:02X} {:02X} {:02X} {:02X}, {} data bytes, Ne {})",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.ne
        )
    }
}

/// The card's nonce for terminal authentication (GET CHALLENGE), in bytes.
pub const TERMINAL_CHALLENGE_LEN: usize = 16;

/// Ne asking for "everything the card has" in extended form.
pub const NE_MAX: usize = 65_536;

impl Command {
    fn new(ins: u8, p1: u8, p2: u8, data: Vec<u8>, ne: usize) -> Self {
        Self {
            cla: cla::PLAIN,
            ins,
            p1,
            p2,
            data: Zeroizing::new(data),
            ne,
        }
    }

    fn p1p2(ins: u8, p1p2: u16, data: Vec<u8>, ne: usize) -> Self {
        let [p1, p2] = p1p2.to_be_bytes();
        Self::new(ins, p1, p2, data, ne)
    }

    pub fn select() -> Self {
        Self::new(ins::SELECT, 0x04, 0x00, AID.to_vec(), 256)
    }
    pub fn get_data(obj: u16) -> Self {
        Self::p1p2(ins::GET_DATA, obj, Vec::new(), NE_MAX)
    }
    pub fn put_data(obj: u16, data: Vec<u8>) -> Self {
        Self::p1p2(ins::PUT_DATA, obj, data, 0)
    }
    pub fn put_credential(slot: u8, body: Vec<u8>) -> Self {
        Self::put_data(object::credential(slot), body)
    }
    pub fn generate_key() -> Self {
        Self::new(ins::GENERATE_KEY, genkey::GENERATE, 0, Vec::new(), 256)
    }
    pub fn internal_authenticate(challenge: &[u8]) -> Self {
        Self::new(ins::INTERNAL_AUTHENTICATE, 0, 0, challenge.to_vec(), 256)
    }
    pub fn verify_pin(pin: &[u8]) -> Self {
        Self::new(ins::VERIFY, 0, reference::CITIZEN_PIN, pin.to_vec(), 0)
    }
    /// VERIFY without data: asks for the retry counter (ISO 7816-4 section 11.5.6).
    pub fn pin_status() -> Self {
        Self::new(ins::VERIFY, 0, reference::CITIZEN_PIN, Vec::new(), 0)
    }
    pub fn get_challenge() -> Self {
        Self::new(ins::GET_CHALLENGE, 0, 0, Vec::new(), TERMINAL_CHALLENGE_LEN)
    }
    /// PSO VERIFY CERTIFICATE (ISO 7816-8 section 5.3.7): P1 00, P2 BE.
    pub fn verify_certificate(cert: &[u8]) -> Self {
        Self::new(ins::PSO, 0x00, 0xBE, cert.to_vec(), 0)
    }
    /// EXTERNAL AUTHENTICATE: the terminal's time (8 bytes) and its signature.
    pub fn external_authenticate(time: u64, signature: &[u8; 64]) -> Self {
        let mut d = Vec::with_capacity(72);
        d.extend_from_slice(&time.to_be_bytes());
        d.extend_from_slice(signature);
        Self::new(ins::EXTERNAL_AUTHENTICATE, 0, 0, d, 0)
    }
    pub fn change_pin(old: &[u8], new: &[u8]) -> Self {
        let mut d = Vec::with_capacity(old.len() + new.len());
        d.extend_from_slice(old);
        d.extend_from_slice(new);
        Self::new(ins::CHANGE_REFERENCE_DATA, 0, reference::CITIZEN_PIN, d, 0)
    }
    pub fn reset_pin(new: &[u8]) -> Self {
        Self::new(
            ins::RESET_RETRY_COUNTER,
            RESET_WITH_NEW_PIN,
            reference::CITIZEN_PIN,
            new.to_vec(),
            0,
        )
    }
    pub fn activate() -> Self {
        Self::new(ins::ACTIVATE, 0, 0, Vec::new(), 0)
    }
    pub fn get_response(ne: usize) -> Self {
        Self::new(ins::GET_RESPONSE, 0, 0, Vec::new(), ne)
    }

    /// Encode in short form; `None` if data or Ne do not fit.
    pub fn encode_short(&self) -> Option<Vec<u8>> {
        if self.data.len() > 255 || self.ne > 256 {
            return None;
        }
        let mut out = vec![self.cla, self.ins, self.p1, self.p2];
        if !self.data.is_empty() {
            out.push(self.data.len() as u8);
            out.extend_from_slice(&self.data);
        }
        if self.ne > 0 {
            out.push(if self.ne == 256 { 0 } else { self.ne as u8 });
        }
        Some(out)
    }

    /// Encode in extended form (ISO 7816-4 section 5.1: a 00 byte, then 2-byte Lc and/or Le).
    pub fn encode_extended(&self) -> Vec<u8> {
        let mut out = vec![self.cla, self.ins, self.p1, self.p2, 0];
        if !self.data.is_empty() {
            out.extend_from_slice(&(self.data.len().min(0xFFFF) as u16).to_be_bytes());
            out.extend_from_slice(&self.data);
        }
        if self.ne > 0 {
            let le = if self.ne >= NE_MAX { 0 } else { self.ne as u16 };
            out.extend_from_slice(&le.to_be_bytes());
        }
        out
    }
}

/// A response APDU: data and status word.
#[derive(Debug, Clone)]
pub struct Response {
    pub data: Vec<u8>,
    pub status: Status,
    pub sw: u16,
}

/// An error at the APDU level.
#[derive(Debug, thiserror::Error)]
pub enum ApduError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("command data too long ({0} bytes)")]
    TooLong(usize),
    #[error("the card sent more data than any card may (over 64 KB)")]
    ResponseTooLong,
    /// The card answered more bytes than the command allows (ISO 7816-4 section 5.1: the
    /// response data field has at most Ne bytes; none for a command without Le).
    #[error("the card answered {got} data bytes to {what}, which allows at most {allowed}")]
    MoreThanAsked {
        what: String,
        got: usize,
        allowed: usize,
    },
    /// 61xx without end: the card kept announcing more data, or a GET RESPONSE that was
    /// told "more data" brought none.
    #[error(
        "the card kept answering 61xx (more data) to {what}: gave up after {rounds} GET \
         RESPONSE rounds and {bytes} bytes"
    )]
    EndlessChain {
        what: String,
        rounds: usize,
        bytes: usize,
    },
    /// 6Cxx twice: the card asked again for another Le after being given the one it named.
    #[error("the card answered {sw:04X} (wrong Le) to {what} even with the Le it asked for")]
    WrongLengthLoop { what: String, sw: u16 },
}

/// Most GET RESPONSE rounds one answer may take: the largest answer (64 KB) in full 256-byte
/// pieces (ISO 7816-4 section 5.3.4) is 256 rounds; a card that needs more is not talking in
/// good faith.
pub const MAX_GET_RESPONSE_ROUNDS: usize = 256;

/// The largest response data field any command may have (extended Ne, ISO 7816-4 5.1).
pub const MAX_RESPONSE_DATA: usize = 65_536;

/// Send `cmd` and collect the whole answer: chaining on the way out in short mode, 61xx /
/// GET RESPONSE on the way back in both modes, one retry with the Le the card names on 6Cxx.
///
/// Whatever the card answers, this ends: the GET RESPONSE rounds are bounded
/// ([`MAX_GET_RESPONSE_ROUNDS`], and each must bring data), the total is bounded by Ne (at
/// most [`MAX_RESPONSE_DATA`]), and a second 6Cxx is an error, not another retry.
pub fn exchange(
    t: &mut dyn Transport,
    cmd: &Command,
    mode: ApduMode,
) -> Result<Response, ApduError> {
    if cmd.data.len() > 0xFFFF {
        return Err(ApduError::TooLong(cmd.data.len()));
    }
    let (mut raw, mut le_sent) = send(t, cmd, mode)?;
    if let Some(le) = wrong_le(&raw) {
        // 6Cxx (ISO 7816-4 section 5.1.3): "wrong Le; SW2 gives the exact number of bytes
        // available". Ask once more with exactly that Le; a card that names yet another one
        // is looping.
        if cmd.ne == 0 {
            return Err(ApduError::MoreThanAsked {
                what: describe(cmd),
                got: le,
                allowed: 0,
            });
        }
        let retry = Command {
            ne: le,
            ..cmd.clone()
        };
        (raw, le_sent) = send(t, &retry, mode)?;
        if wrong_le(&raw).is_some() {
            return Err(ApduError::WrongLengthLoop {
                what: describe(cmd),
                sw: sw_of(&raw),
            });
        }
    }
    // The first answer holds at most the Le that went out (256 for a short APDU, ISO 7816-4
    // section 5.1); the whole answer, 61xx pieces included, at most Ne.
    if raw.len() - 2 > le_sent {
        return Err(ApduError::MoreThanAsked {
            what: describe(cmd),
            got: raw.len() - 2,
            allowed: le_sent,
        });
    }
    let allowed = cmd.ne.min(MAX_RESPONSE_DATA);
    let mut data = Vec::new();
    let mut rounds = 0;
    loop {
        let (body, sw) = split(raw);
        let fresh = body.len();
        data.extend_from_slice(&body);
        if data.len() > allowed {
            if data.len() > MAX_RESPONSE_DATA {
                return Err(ApduError::ResponseTooLong);
            }
            return Err(ApduError::MoreThanAsked {
                what: describe(cmd),
                got: data.len(),
                allowed,
            });
        }
        let status = Status::from_sw(sw);
        match status {
            Status::MoreData(n) => {
                // The first answer may be 61xx alone; every GET RESPONSE after it must bring
                // data, or the card is stringing us along.
                if rounds >= MAX_GET_RESPONSE_ROUNDS || (rounds > 0 && fresh == 0) {
                    return Err(ApduError::EndlessChain {
                        what: describe(cmd),
                        rounds,
                        bytes: data.len(),
                    });
                }
                rounds += 1;
                let ne = if n == 0 { 256 } else { n as usize };
                let gr = Command::get_response(ne);
                let enc = gr.encode_short().unwrap_or_default();
                raw = transmit(t, &enc)?;
                // One piece may not exceed what this GET RESPONSE asked for either.
                if raw.len() - 2 > ne {
                    return Err(ApduError::MoreThanAsked {
                        what: format!("GET RESPONSE (Le {ne}) for {}", describe(cmd)),
                        got: raw.len() - 2,
                        allowed: ne,
                    });
                }
            }
            _ => return Ok(Response { data, status, sw }),
        }
    }
}

/// Send `cmd` in the form `mode` allows; returns the answer and the Le that went out (the most
/// data the answer may carry).
fn send(
    t: &mut dyn Transport,
    cmd: &Command,
    mode: ApduMode,
) -> Result<(Vec<u8>, usize), ApduError> {
    match (mode, cmd.encode_short()) {
        (_, Some(short)) if cmd.ne <= 256 => Ok((transmit(t, &short)?, cmd.ne)),
        (ApduMode::Extended, _) => Ok((
            transmit(t, &cmd.encode_extended())?,
            cmd.ne.min(MAX_RESPONSE_DATA),
        )),
        (ApduMode::Short, _) => Ok((send_chained(t, cmd)?, cmd.ne.min(256))),
    }
}

/// `Some(Le)` when the answer is 6Cxx (xx = 00 means 256).
fn wrong_le(raw: &[u8]) -> Option<usize> {
    match sw_of(raw).to_be_bytes() {
        [0x6C, 0] => Some(256),
        [0x6C, n] => Some(usize::from(n)),
        _ => None,
    }
}

fn sw_of(raw: &[u8]) -> u16 {
    u16::from_be_bytes([raw[raw.len() - 2], raw[raw.len() - 1]])
}

/// The command in error messages: its INS by name (never its data: it may be a PIN).
pub fn describe(cmd: &Command) -> String {
    let name = match cmd.ins {
        ins::SELECT => "SELECT",
        ins::GET_DATA => "GET DATA",
        ins::PUT_DATA => "PUT DATA",
        ins::GENERATE_KEY => "GENERATE ASYMMETRIC KEY PAIR",
        ins::INTERNAL_AUTHENTICATE => "INTERNAL AUTHENTICATE",
        ins::EXTERNAL_AUTHENTICATE => "EXTERNAL AUTHENTICATE",
        ins::GET_CHALLENGE => "GET CHALLENGE",
        ins::PSO => "PSO VERIFY CERTIFICATE",
        ins::VERIFY => "VERIFY",
        ins::CHANGE_REFERENCE_DATA => "CHANGE REFERENCE DATA",
        ins::RESET_RETRY_COUNTER => "RESET RETRY COUNTER",
        ins::ACTIVATE => "ACTIVATE",
        ins::GET_RESPONSE => "GET RESPONSE",
        _ => return format!("command {:02X} {:02X}", cmd.cla, cmd.ins),
    };
    format!("{name} ({:02X}{:02X})", cmd.p1, cmd.p2)
}

/// Command chaining (ISO 7816-4 section 5.3.3): all but the last piece carry CLA bit 0x10
/// and must be answered 9000.
fn send_chained(t: &mut dyn Transport, cmd: &Command) -> Result<Vec<u8>, ApduError> {
    // No data (e.g. GET DATA asking for more than 256 bytes) is one short APDU with Le 00.
    let mut r = Vec::new();
    for (data, more) in chain_pieces(&cmd.data, 255) {
        let piece = Command {
            cla: if more {
                cmd.cla | cla::CHAINING
            } else {
                cmd.cla
            },
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data: Zeroizing::new(data.to_vec()),
            ne: if more { 0 } else { cmd.ne.min(256) },
        };
        let enc = piece.encode_short().ok_or(ApduError::TooLong(data.len()))?;
        r = transmit(t, &enc)?;
        if r[r.len() - 2..] != [0x90, 0x00] {
            // The card refused a piece: its answer is the answer to the whole command.
            break;
        }
    }
    // The last piece's answer, or the refused one's.
    Ok(r)
}

fn transmit(t: &mut dyn Transport, apdu: &[u8]) -> Result<Vec<u8>, ApduError> {
    let r = t.transmit(apdu)?;
    if r.len() < 2 {
        return Err(TransportError::ShortResponse.into());
    }
    Ok(r)
}

fn split(mut raw: Vec<u8>) -> (Vec<u8>, u16) {
    let sw = sw_of(&raw);
    raw.truncate(raw.len() - 2);
    (raw, sw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_extended_encodings_follow_iso_7816_4_cases() {
        // Case 2S with Le 00 = 256.
        assert_eq!(
            Command::get_response(256).encode_short().unwrap(),
            [0x00, 0xC0, 0x00, 0x00, 0x00]
        );
        // Case 3S.
        assert_eq!(
            Command::verify_pin(b"123456").encode_short().unwrap(),
            hex::decode("0020008106313233343536").unwrap()
        );
        // Case 4E with Le 0000 = 65536.
        assert_eq!(
            Command::put_data(0x0200, vec![0xAA; 300]).encode_extended()[..7],
            [0x00, 0xDA, 0x02, 0x00, 0x00, 0x01, 0x2C]
        );
        assert_eq!(
            Command::get_data(0x0101).encode_extended(),
            [0x00, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x00]
        );
        assert!(Command::put_data(0x0200, vec![0; 256])
            .encode_short()
            .is_none());
    }

    #[test]
    fn debug_never_shows_pin_bytes() {
        let s = format!("{:?}", Command::verify_pin(b"987654"));
        assert!(!s.contains("987654") && !s.contains("39 38"), "{s}");
    }
}
