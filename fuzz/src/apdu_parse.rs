//! `CommandApdu::parse` and `Command::try_from` never panic on arbitrary bytes; an APDU that
//! parses re-encodes (`to_bytes`) to bytes that parse to the same value and the same command.

use card_applet::apdu::CommandApdu;
use card_applet::command::Command;

/// Run the target on one input; panics where an invariant fails.
pub fn check(data: &[u8]) {
    let Ok(apdu) = CommandApdu::parse(data) else {
        return;
    };
    let command = Command::try_from(&apdu);
    let encoded = apdu.to_bytes();
    let again = match CommandApdu::parse(&encoded) {
        Ok(a) => a,
        Err(s) => panic!("re-encoded APDU does not parse: {s:?}, {apdu:?} -> {encoded:02X?}"),
    };
    assert_eq!(again, apdu, "re-encoding changed the APDU: {encoded:02X?}");
    assert_eq!(Command::try_from(&again), command);
    // Short-form input re-encodes byte for byte (there is one short encoding per value).
    if !apdu.extended {
        assert_eq!(encoded, data, "short APDU re-encoded differently");
    }
}
