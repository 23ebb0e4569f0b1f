//! Typed commands, parsed once at the boundary from a (de-chained) [`CommandApdu`].
//!
//! Error mapping: unknown CLA 6E00, unknown INS 6D00, bad P1/P2 6A86, malformed data 6A80,
//! a data field of the wrong length (or present where none is expected) 6700.

use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

use crate::apdu::CommandApdu;
use crate::protocol::{
    self, cla, genkey, ins, pso, reference, Status, CHALLENGE_MAX, CHALLENGE_MIN,
    EXTERNAL_AUTH_DATA_LEN, PIN_LEN, TERMINAL_CHALLENGE_LEN,
};

/// A citizen PIN: exactly six ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Zeroizing<[u8; PIN_LEN]>);

impl Pin {
    /// Parse a PIN field: wrong length 6700, non-digits 6A80.
    pub fn parse(data: &[u8]) -> Result<Self, Status> {
        let pin: [u8; PIN_LEN] = data.try_into().map_err(|_| Status::WrongLength)?;
        let pin = Zeroizing::new(pin);
        if !pin.iter().all(u8::is_ascii_digit) {
            return Err(Status::WrongData);
        }
        Ok(Pin(pin))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(******)")
    }
}

/// What VERIFY (P2=81, the citizen's PIN) presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyRequest {
    /// With data: the PIN.
    Pin(Pin),
    /// No data: ask for the verification status.
    Status,
}

/// GENERATE ASYMMETRIC KEY PAIR mode (P1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateMode {
    Generate,
    ReadPublic,
}

/// RESET RETRY COUNTER mode (P1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetMode {
    /// P1=02: set a new PIN (and reset the counter).
    NewPin(Pin),
    /// P1=03: reset the counter only.
    CounterOnly,
}

/// A command of the Civic Card applet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// SELECT by DF name; `fci` is false for P2=0C (no response data).
    Select {
        aid: Vec<u8>,
        fci: bool,
    },
    GetData {
        object: u16,
    },
    PutData {
        object: u16,
        data: Vec<u8>,
    },
    GenerateKey {
        mode: GenerateMode,
    },
    InternalAuthenticate {
        challenge: Vec<u8>,
    },
    Verify(VerifyRequest),
    ChangeReferenceData {
        old: Pin,
        new: Pin,
    },
    ResetRetryCounter(ResetMode),
    Activate,
    /// GET CHALLENGE: a fresh nonce for EXTERNAL AUTHENTICATE.
    GetChallenge,
    /// PSO VERIFY CERTIFICATE with a terminal certificate.
    VerifyCertificate {
        cert: Vec<u8>,
    },
    /// EXTERNAL AUTHENTICATE: the terminal's time and its signature (r||s).
    ExternalAuthenticate {
        time: u64,
        signature: [u8; 64],
    },
}

/// Whether `cla` is one this applet accepts (plain, optionally with the chaining bit).
/// Secure messaging, logical channels and proprietary classes are refused.
pub fn cla_supported(c: u8) -> bool {
    c & !cla::CHAINING == cla::PLAIN
}

/// Whether `i` is an instruction of this applet (GET RESPONSE included).
pub fn ins_supported(i: u8) -> bool {
    matches!(
        i,
        ins::SELECT
            | ins::GET_DATA
            | ins::PUT_DATA
            | ins::GENERATE_KEY
            | ins::INTERNAL_AUTHENTICATE
            | ins::VERIFY
            | ins::CHANGE_REFERENCE_DATA
            | ins::RESET_RETRY_COUNTER
            | ins::ACTIVATE
            | ins::GET_RESPONSE
            | ins::GET_CHALLENGE
            | ins::PSO
            | ins::EXTERNAL_AUTHENTICATE
    )
}

fn no_data(apdu: &CommandApdu) -> Result<(), Status> {
    if apdu.data.is_empty() {
        Ok(())
    } else {
        Err(Status::WrongLength)
    }
}

fn p1p2(apdu: &CommandApdu, p1: u8, p2: u8) -> Result<(), Status> {
    if apdu.p1 == p1 && apdu.p2 == p2 {
        Ok(())
    } else {
        Err(Status::IncorrectP1P2)
    }
}

impl TryFrom<&CommandApdu> for Command {
    type Error = Status;

    fn try_from(apdu: &CommandApdu) -> Result<Self, Status> {
        if !cla_supported(apdu.cla) {
            return Err(Status::ClaNotSupported);
        }
        match apdu.ins {
            ins::SELECT => {
                if apdu.p1 != protocol::SELECT_BY_NAME {
                    return Err(Status::IncorrectP1P2);
                }
                let fci = match apdu.p2 {
                    protocol::SELECT_FCI => true,
                    0x0C => false,
                    _ => return Err(Status::IncorrectP1P2),
                };
                if apdu.data.is_empty() || apdu.data.len() > 16 {
                    return Err(Status::WrongLength);
                }
                Ok(Command::Select {
                    aid: apdu.data.clone(),
                    fci,
                })
            }
            ins::GET_DATA => {
                no_data(apdu)?;
                Ok(Command::GetData {
                    object: apdu.p1p2(),
                })
            }
            ins::PUT_DATA => Ok(Command::PutData {
                object: apdu.p1p2(),
                data: apdu.data.clone(),
            }),
            ins::GENERATE_KEY => {
                let mode = match apdu.p1 {
                    genkey::GENERATE => GenerateMode::Generate,
                    genkey::READ_PUBLIC => GenerateMode::ReadPublic,
                    _ => return Err(Status::IncorrectP1P2),
                };
                if apdu.p2 != 0 {
                    return Err(Status::IncorrectP1P2);
                }
                no_data(apdu)?;
                Ok(Command::GenerateKey { mode })
            }
            ins::INTERNAL_AUTHENTICATE => {
                p1p2(apdu, 0, 0)?;
                if !(CHALLENGE_MIN..=CHALLENGE_MAX).contains(&apdu.data.len()) {
                    return Err(Status::WrongLength);
                }
                Ok(Command::InternalAuthenticate {
                    challenge: apdu.data.clone(),
                })
            }
            ins::VERIFY => {
                p1p2(apdu, 0, reference::CITIZEN_PIN)?;
                if apdu.data.is_empty() {
                    return Ok(Command::Verify(VerifyRequest::Status));
                }
                Ok(Command::Verify(VerifyRequest::Pin(Pin::parse(&apdu.data)?)))
            }
            ins::CHANGE_REFERENCE_DATA => {
                p1p2(apdu, 0, reference::CITIZEN_PIN)?;
                if apdu.data.len() != 2 * PIN_LEN {
                    return Err(Status::WrongLength);
                }
                let (old, new) = apdu.data.split_at(PIN_LEN);
                Ok(Command::ChangeReferenceData {
                    old: Pin::parse(old)?,
                    new: Pin::parse(new)?,
                })
            }
            ins::RESET_RETRY_COUNTER => {
                if apdu.p2 != reference::CITIZEN_PIN {
                    return Err(Status::IncorrectP1P2);
                }
                match apdu.p1 {
                    protocol::RESET_WITH_NEW_PIN => Ok(Command::ResetRetryCounter(
                        ResetMode::NewPin(Pin::parse(&apdu.data)?),
                    )),
                    0x03 => {
                        no_data(apdu)?;
                        Ok(Command::ResetRetryCounter(ResetMode::CounterOnly))
                    }
                    _ => Err(Status::IncorrectP1P2),
                }
            }
            ins::ACTIVATE => {
                p1p2(apdu, 0, 0)?;
                no_data(apdu)?;
                Ok(Command::Activate)
            }
            ins::GET_CHALLENGE => {
                p1p2(apdu, 0, 0)?;
                no_data(apdu)?;
                // Le absent (61 10 follows) or room for the whole challenge.
                if apdu.le_present() && apdu.ne < TERMINAL_CHALLENGE_LEN {
                    return Err(Status::WrongLength);
                }
                Ok(Command::GetChallenge)
            }
            ins::PSO => {
                p1p2(apdu, pso::VERIFY_CERTIFICATE_P1, pso::VERIFY_CERTIFICATE_P2)?;
                if apdu.data.is_empty() {
                    return Err(Status::WrongLength);
                }
                Ok(Command::VerifyCertificate {
                    cert: apdu.data.clone(),
                })
            }
            ins::EXTERNAL_AUTHENTICATE => {
                p1p2(apdu, 0, 0)?;
                if apdu.data.len() != EXTERNAL_AUTH_DATA_LEN {
                    return Err(Status::WrongLength);
                }
                let (time, signature) = apdu.data.split_at(8);
                let time: [u8; 8] = time.try_into().map_err(|_| Status::WrongLength)?;
                let signature: [u8; 64] = signature.try_into().map_err(|_| Status::WrongLength)?;
                Ok(Command::ExternalAuthenticate {
                    time: u64::from_be_bytes(time),
                    signature,
                })
            }
            _ => Err(Status::InsNotSupported),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cmd(raw: &[u8]) -> Result<Command, Status> {
        Command::try_from(&CommandApdu::parse(raw)?)
    }

    #[test]
    fn parses_and_maps_errors() {
        assert!(matches!(
            cmd(&[0, 0xA4, 4, 0, 2, 1, 2]),
            Ok(Command::Select { fci: true, .. })
        ));
        assert_eq!(cmd(&[0x0C, 0xA4, 4, 0, 1, 1]), Err(Status::ClaNotSupported));
        assert_eq!(cmd(&[0x80, 0xA4, 4, 0, 1, 1]), Err(Status::ClaNotSupported));
        assert_eq!(cmd(&[0x01, 0xA4, 4, 0, 1, 1]), Err(Status::ClaNotSupported));
        assert_eq!(cmd(&[0, 0xB0, 0, 0]), Err(Status::InsNotSupported));
        assert_eq!(cmd(&[0, 0xA4, 1, 0, 1, 1]), Err(Status::IncorrectP1P2));
        assert_eq!(cmd(&[0, 0x20, 0, 0x83]), Err(Status::IncorrectP1P2));
        assert_eq!(
            cmd(&[0, 0x20, 0, 0x81, 6, b'1', b'2', b'3', b'4', b'5', b'x']),
            Err(Status::WrongData)
        );
        assert_eq!(
            cmd(&[0, 0x20, 0, 0x81, 5, b'1', b'2', b'3', b'4', b'5']),
            Err(Status::WrongLength)
        );
        assert_eq!(cmd(&[0, 0xCA, 1, 1, 1, 0]), Err(Status::WrongLength));
        assert_eq!(cmd(&[0, 0x88, 0, 0, 1, 0]), Err(Status::WrongLength));
        assert_eq!(
            cmd(&[0, 0x20, 0, 0x81]),
            Ok(Command::Verify(VerifyRequest::Status))
        );
        // The office secret reference of issue 2 is gone.
        assert_eq!(cmd(&[0, 0x20, 0, 0x82]), Err(Status::IncorrectP1P2));
    }

    #[test]
    fn terminal_authentication_commands() {
        assert_eq!(cmd(&[0, 0x84, 0, 0, 0x10]), Ok(Command::GetChallenge));
        assert_eq!(cmd(&[0, 0x84, 0, 0]), Ok(Command::GetChallenge));
        assert_eq!(cmd(&[0, 0x84, 0, 0, 0]), Ok(Command::GetChallenge));
        assert_eq!(cmd(&[0, 0x84, 0, 0, 8]), Err(Status::WrongLength));
        assert_eq!(cmd(&[0, 0x84, 0, 1, 0x10]), Err(Status::IncorrectP1P2));
        assert_eq!(cmd(&[0, 0x84, 0, 0, 1, 0, 0x10]), Err(Status::WrongLength));
        assert_eq!(
            cmd(&[0, 0x2A, 0, 0xBE, 2, 0xD2, 0x84]),
            Ok(Command::VerifyCertificate {
                cert: alloc::vec![0xD2, 0x84]
            })
        );
        assert_eq!(cmd(&[0, 0x2A, 0, 0xBE]), Err(Status::WrongLength));
        assert_eq!(
            cmd(&[0, 0x2A, 0x9E, 0x9A, 1, 0]),
            Err(Status::IncorrectP1P2)
        );
        let mut ea = alloc::vec![0, 0x82, 0, 0, 72];
        ea.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        ea.extend_from_slice(&[7; 64]);
        assert_eq!(
            cmd(&ea),
            Ok(Command::ExternalAuthenticate {
                time: 1_700_000_000,
                signature: [7; 64]
            })
        );
        ea[4] = 71;
        ea.pop();
        assert_eq!(cmd(&ea), Err(Status::WrongLength));
        assert_eq!(cmd(&[0, 0x82, 0, 0]), Err(Status::WrongLength));
    }

    #[test]
    fn pin_debug_is_redacted() {
        let p = Pin::parse(b"123456").unwrap();
        assert!(!alloc::format!("{p:?}").contains("123456"));
    }
}
