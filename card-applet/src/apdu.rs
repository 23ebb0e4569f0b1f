//! Command APDU parsing (ISO/IEC 7816-4:2020 section 5.1).

use alloc::vec::Vec;

use crate::protocol::Status;

/// Largest Ne of a short APDU (Le = 00).
pub const SHORT_NE_MAX: usize = 256;
/// Largest Ne of an extended APDU (Le = 0000).
pub const EXTENDED_NE_MAX: usize = 65_536;

/// A parsed command APDU.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandApdu {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// The command data field (Nc bytes; empty when Lc is absent).
    pub data: Vec<u8>,
    /// Ne, the maximum number of response data bytes expected; 0 when Le is absent.
    pub ne: usize,
    /// Whether the APDU used the extended length form.
    pub extended: bool,
}

// The data field may carry a PIN: never print it.
impl core::fmt::Debug for CommandApdu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CommandApdu")
            .field("cla", &self.cla)
            .field("ins", &self.ins)
            .field("p1", &self.p1)
            .field("p2", &self.p2)
            .field("nc", &self.data.len())
            .field("ne", &self.ne)
            .field("extended", &self.extended)
            .finish()
    }
}

/// The data field may hold a PIN: wipe it when the APDU is dropped.
impl Drop for CommandApdu {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.data.zeroize();
    }
}

/// Command chaining (ISO 7816-4 section 5.3.3): `data` in pieces of at most `max` bytes, each
/// with whether more follow (those carry CLA bit 0x10 and no Le). No data: one empty piece.
pub fn chain_pieces(data: &[u8], max: usize) -> impl Iterator<Item = (&[u8], bool)> {
    let max = max.max(1);
    let count = data.len().div_ceil(max).max(1);
    (0..count).map(move |i| {
        let start = i * max;
        (&data[start..(start + max).min(data.len())], i + 1 < count)
    })
}

impl CommandApdu {
    /// P1-P2 as one big-endian 16-bit value.
    pub fn p1p2(&self) -> u16 {
        u16::from_be_bytes([self.p1, self.p2])
    }

    /// Whether Le was present.
    pub fn le_present(&self) -> bool {
        self.ne != 0
    }

    /// Parse raw APDU bytes. Any inconsistency between the length fields and the number of
    /// bytes (truncated body, trailing bytes, Lc = 00 in short form) is [`Status::WrongLength`].
    pub fn parse(raw: &[u8]) -> Result<Self, Status> {
        let (header, body) = match raw.split_first_chunk::<4>() {
            Some(split) => split,
            None => return Err(Status::WrongLength),
        };
        let [cla, ins, p1, p2] = *header;
        let mut apdu = CommandApdu {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            ne: 0,
            extended: false,
        };
        match body {
            // Case 1.
            [] => {}
            // Case 2S.
            [le] => apdu.ne = short_ne(*le),
            // Extended forms start with a 00 byte followed by at least two bytes.
            [0, b1, b2, rest @ ..] => {
                apdu.extended = true;
                let n = usize::from(u16::from_be_bytes([*b1, *b2]));
                if rest.is_empty() {
                    // Case 2E.
                    apdu.ne = extended_ne(n);
                } else {
                    // Cases 3E and 4E: Lc is 00 b1 b2 and must be non-zero.
                    if n == 0 {
                        return Err(Status::WrongLength);
                    }
                    if rest.len() == n {
                        apdu.data = rest.to_vec();
                    } else if rest.len() == n + 2 {
                        let (data, le) = rest.split_at(n);
                        apdu.data = data.to_vec();
                        apdu.ne = extended_ne(usize::from(u16::from_be_bytes([le[0], le[1]])));
                    } else {
                        return Err(Status::WrongLength);
                    }
                }
            }
            // Short Lc = 00 is not a valid case 3S/4S, and 00 xx alone is nothing.
            [0, ..] => return Err(Status::WrongLength),
            // Cases 3S and 4S.
            [lc, rest @ ..] => {
                let n = usize::from(*lc);
                if rest.len() == n {
                    apdu.data = rest.to_vec();
                } else if rest.len() == n + 1 {
                    let (data, le) = rest.split_at(n);
                    apdu.data = data.to_vec();
                    apdu.ne = short_ne(le[0]);
                } else {
                    return Err(Status::WrongLength);
                }
            }
        }
        Ok(apdu)
    }

    /// Encode (used by tests and tools). Chooses the short form when both Nc <= 255 and
    /// Ne <= 256 unless `extended` is set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let ext = self.extended || self.data.len() > 255 || self.ne > SHORT_NE_MAX;
        let mut out = Vec::with_capacity(self.data.len() + 9);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if !self.data.is_empty() {
            if ext {
                out.push(0);
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
            } else {
                out.push(self.data.len() as u8);
            }
            out.extend_from_slice(&self.data);
        }
        if self.ne > 0 {
            if ext {
                if self.data.is_empty() {
                    out.push(0);
                }
                let le = if self.ne >= EXTENDED_NE_MAX {
                    0
                } else {
                    self.ne as u16
                };
                out.extend_from_slice(&le.to_be_bytes());
            } else {
                out.push(if self.ne >= SHORT_NE_MAX {
                    0
                } else {
                    self.ne as u8
                });
            }
        }
        out
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 {
        SHORT_NE_MAX
    } else {
        usize::from(le)
    }
}

fn extended_ne(le: usize) -> usize {
    if le == 0 {
        EXTENDED_NE_MAX
    } else {
        le
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;

    fn p(b: &[u8]) -> Result<CommandApdu, Status> {
        CommandApdu::parse(b)
    }

    #[test]
    fn chain_pieces_cover_the_data_once_and_mark_all_but_the_last() {
        let sizes = |n: usize, max: usize| -> Vec<(usize, bool)> {
            let data = vec![7u8; n];
            chain_pieces(&data, max)
                .map(|(p, more)| (p.len(), more))
                .collect()
        };
        assert_eq!(sizes(0, 255), vec![(0, false)]);
        assert_eq!(sizes(255, 255), vec![(255, false)]);
        assert_eq!(sizes(256, 255), vec![(255, true), (1, false)]);
        assert_eq!(
            sizes(1000, 223),
            vec![
                (223, true),
                (223, true),
                (223, true),
                (223, true),
                (108, false)
            ]
        );
        let data: Vec<u8> = (0..=255).collect();
        let joined: Vec<u8> = chain_pieces(&data, 100)
            .flat_map(|(p, _)| p.to_vec())
            .collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn case1() {
        let a = p(&[0, 0x44, 0, 0]).unwrap();
        assert!(a.data.is_empty());
        assert_eq!(a.ne, 0);
        assert!(!a.extended);
    }

    #[test]
    fn case2s() {
        assert_eq!(p(&[0, 0xCA, 1, 1, 0]).unwrap().ne, 256);
        assert_eq!(p(&[0, 0xCA, 1, 1, 5]).unwrap().ne, 5);
    }

    #[test]
    fn case3s_4s() {
        let a = p(&[0, 0xDA, 1, 0x10, 2, 0xAA, 0xBB]).unwrap();
        assert_eq!(a.data, vec![0xAA, 0xBB]);
        assert_eq!(a.ne, 0);
        let a = p(&[0, 0x88, 0, 0, 1, 0xAA, 0]).unwrap();
        assert_eq!(a.data, vec![0xAA]);
        assert_eq!(a.ne, 256);
    }

    #[test]
    fn case2e() {
        let a = p(&[0, 0xCA, 1, 1, 0, 0, 0]).unwrap();
        assert!(a.extended);
        assert_eq!(a.ne, 65_536);
        assert_eq!(p(&[0, 0xCA, 1, 1, 0, 1, 0]).unwrap().ne, 256);
    }

    #[test]
    fn case3e_4e() {
        let mut raw = vec![0, 0xDA, 2, 0, 0, 1, 0];
        raw.extend_from_slice(&[7; 256]);
        let a = p(&raw).unwrap();
        assert_eq!(a.data.len(), 256);
        assert_eq!(a.ne, 0);
        assert!(a.extended);
        raw.extend_from_slice(&[0, 0]);
        let a = p(&raw).unwrap();
        assert_eq!(a.ne, 65_536);
        assert_eq!(a.to_bytes(), raw);
    }

    #[test]
    fn inconsistent_lengths() {
        for bad in [
            &[][..],
            &[0, 0xA4, 4],
            &[0, 0xA4, 4, 0, 0, 1],                // short Lc = 0 with a byte
            &[0, 0xA4, 4, 0, 2, 1],                // truncated
            &[0, 0xA4, 4, 0, 1, 1, 0, 0],          // trailing bytes
            &[0, 0xA4, 4, 0, 0, 0, 0, 1],          // extended Lc = 0
            &[0, 0xA4, 4, 0, 0, 0, 2, 1],          // extended truncated
            &[0, 0xA4, 4, 0, 0, 0, 1, 1, 0],       // extended Le one byte
            &[0, 0xA4, 4, 0, 0, 0, 1, 1, 0, 0, 0], // trailing
        ] {
            assert_eq!(p(bad), Err(Status::WrongLength), "{bad:02x?}");
        }
    }

    #[test]
    fn encode_round_trip() {
        for a in [
            CommandApdu {
                cla: 0,
                ins: 0xCA,
                p1: 1,
                p2: 1,
                data: vec![],
                ne: 256,
                extended: false,
            },
            CommandApdu {
                cla: 0,
                ins: 0xCA,
                p1: 1,
                p2: 1,
                data: vec![],
                ne: 0,
                extended: false,
            },
            CommandApdu {
                cla: 0x10,
                ins: 0xDA,
                p1: 2,
                p2: 0,
                data: vec![1; 255],
                ne: 17,
                extended: false,
            },
            CommandApdu {
                cla: 0,
                ins: 0xDA,
                p1: 2,
                p2: 0,
                data: vec![1; 1000],
                ne: 0,
                extended: true,
            },
            CommandApdu {
                cla: 0,
                ins: 0xCA,
                p1: 2,
                p2: 0,
                data: vec![],
                ne: 65_536,
                extended: true,
            },
        ] {
            assert_eq!(p(&a.to_bytes()).unwrap(), a);
        }
    }
}
