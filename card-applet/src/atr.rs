//! The card's Answer-to-Reset (ISO 7816-3 section 8.2).
//!
//! `3B 8A 80 01` + 10 historical bytes + TCK:
//! - TS 3B direct convention; T0 8A: TD1 follows, 10 historical bytes;
//! - TD1 80: TD2 follows, T=0 ; TD2 01: T=1 (the PC/SC "contactless" shape pcscd uses as T=1);
//! - historical bytes (ISO 7816-4 section 8.1.1, compact-TLV after category 80):
//!   `31 80` card service data: application selection by full DF name;
//!   `73 80 00 C0` card capabilities: selection by full DF name; command chaining and
//!   extended Lc/Le supported; `82 90 00` status 9000;
//! - TCK: XOR of T0 up to the last historical byte, so that XOR(T0..=TCK) = 0.

/// Historical bytes.
pub const HISTORICAL: [u8; 10] = [0x80, 0x31, 0x80, 0x73, 0x80, 0x00, 0xC0, 0x82, 0x90, 0x00];

/// The full ATR, TCK included.
pub const ATR: [u8; 15] = build();

const fn build() -> [u8; 15] {
    let mut atr = [0u8; 15];
    atr[0] = 0x3B;
    atr[1] = 0x80 | HISTORICAL.len() as u8;
    atr[2] = 0x80;
    atr[3] = 0x01;
    let mut i = 0;
    while i < HISTORICAL.len() {
        atr[4 + i] = HISTORICAL[i];
        i += 1;
    }
    let mut tck = 0u8;
    let mut j = 1;
    while j < 14 {
        tck ^= atr[j];
        j += 1;
    }
    atr[14] = tck;
    atr
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tck_is_valid() {
        assert_eq!(ATR[..4], [0x3B, 0x8A, 0x80, 0x01]);
        assert_eq!(ATR[1..].iter().fold(0u8, |a, b| a ^ b), 0);
        assert_eq!(&ATR[4..14], &HISTORICAL);
    }
}
