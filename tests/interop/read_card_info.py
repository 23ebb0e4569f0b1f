#!/usr/bin/python3
"""Read a Civic Card's FCI and card info with pyscard (a PC/SC client nobody here wrote).

Usage: /usr/bin/python3 read_card_info.py "READER NAME"

Prints one JSON object on stdout; exit status 0 when SELECT answered 9000 with an FCI that
names the applet and GET DATA card info was read, 1 otherwise (the JSON then has "error").
Uses only short APDUs. pcscd does not follow 61xx, so this script sends GET RESPONSE itself.
Run it with Debian's /usr/bin/python3 (python3-pyscard); other pythons may lack pyscard.
"""

import json
import sys

from smartcard.System import readers

AID = bytes.fromhex("F0434956494301")
SELECT = [0x00, 0xA4, 0x04, 0x00, len(AID)] + list(AID) + [0x00]
GET_CARD_INFO = [0x00, 0xCA, 0x01, 0x01, 0x00]
LIFE_CYCLE_NAMES = {0x03: "personalisation", 0x05: "issued"}


def transmit(conn, apdu, log):
    """Send one APDU; follow 61xx with GET RESPONSE and 6Cxx with the corrected Le.

    Returns (data, sw) with sw as 4 hex digits. Every exchange is appended to log."""
    data, sw1, sw2 = conn.transmit(list(apdu))
    log.append({"command": bytes(apdu).hex(), "response": bytes(data).hex(),
                "sw": "%02X%02X" % (sw1, sw2)})
    if sw1 == 0x6C:
        apdu = list(apdu[:4]) + [sw2] if len(apdu) == 5 else list(apdu[:-1]) + [sw2]
        data, sw1, sw2 = conn.transmit(apdu)
        log.append({"command": bytes(apdu).hex(), "response": bytes(data).hex(),
                    "sw": "%02X%02X" % (sw1, sw2)})
    out = list(data)
    rounds = 0
    while sw1 == 0x61 and rounds < 300:
        rounds += 1
        get_response = [0x00, 0xC0, 0x00, 0x00, sw2]
        data, sw1, sw2 = conn.transmit(get_response)
        log.append({"command": bytes(get_response).hex(), "response": bytes(data).hex(),
                    "sw": "%02X%02X" % (sw1, sw2)})
        out += data
    return bytes(out), "%02X%02X" % (sw1, sw2)


def parse_tlv(buf):
    """BER-TLV (ISO 7816-4) into a list of (tag, value, children-or-None)."""
    items = []
    i = 0
    while i < len(buf):
        if buf[i] in (0x00, 0xFF):  # padding between objects
            i += 1
            continue
        start = i
        tag = buf[i]
        i += 1
        if tag & 0x1F == 0x1F:
            while True:
                if i >= len(buf):
                    raise ValueError("truncated tag at offset %d" % start)
                tag = (tag << 8) | buf[i]
                i += 1
                if not buf[i - 1] & 0x80:
                    break
        if i >= len(buf):
            raise ValueError("missing length at offset %d" % start)
        length = buf[i]
        i += 1
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 3 or i + n > len(buf):
                raise ValueError("bad length at offset %d" % start)
            length = int.from_bytes(buf[i:i + n], "big")
            i += n
        if i + length > len(buf):
            raise ValueError("value of tag %X overruns the buffer" % tag)
        value = buf[i:i + length]
        i += length
        first = tag >> (8 * ((tag.bit_length() - 1) // 8)) if tag > 0xFF else tag
        children = parse_tlv(value) if first & 0x20 else None
        items.append((tag, value, children))
    return items


def find(items, tag):
    """First primitive or constructed object with tag, depth first."""
    for t, v, children in items:
        if t == tag:
            return v
        if children is not None:
            found = find(children, tag)
            if found is not None:
                return found
    return None


def card_info_fields(items):
    """Fields of the card-info TLVs (flat, or wrapped in a template such as A5)."""
    if len(items) == 1 and items[0][2] is not None:
        items = items[0][2]
    fields = {}
    get = {t: v for t, v, _ in items}
    if 0x80 in get:
        fields["version"] = list(get[0x80])
    if 0x81 in get:
        fields["card_id"] = get[0x81].decode("ascii", "replace")
    if 0x82 in get and len(get[0x82]) == 1:
        fields["life_cycle"] = get[0x82][0]
        fields["life_cycle_name"] = LIFE_CYCLE_NAMES.get(get[0x82][0], "unknown")
    if 0x83 in get:
        fields["free_storage"] = int.from_bytes(get[0x83], "big")
    if 0x84 in get:
        fields["total_storage"] = int.from_bytes(get[0x84], "big")
        fields["total_storage_len"] = len(get[0x84])
    if 0x85 in get and len(get[0x85]) == 1:
        fields["pin_tries_left"] = get[0x85][0]
    if 0x86 in get and len(get[0x86]) == 1:
        fields["credential_count"] = get[0x86][0]
    if 0x87 in get and len(get[0x87]) == 1:
        fields["has_card_key"] = bool(get[0x87][0])
    return fields


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = sys.argv[1]
    result = {"reader": name, "apdus": []}
    try:
        matching = [r for r in readers() if str(r) == name]
        if not matching:
            raise RuntimeError("no reader named %r; readers: %s" % (name, [str(r) for r in readers()]))
        conn = matching[0].createConnection()
        conn.connect()
        result["atr"] = bytes(conn.getATR()).hex()

        fci, sw = transmit(conn, SELECT, result["apdus"])
        result["select_sw"] = sw
        result["fci"] = fci.hex()
        if sw != "9000":
            raise RuntimeError("SELECT returned %s" % sw)
        if not fci or fci[0] != 0x6F:
            raise RuntimeError("FCI does not start with 6F")
        fci_items = parse_tlv(fci)
        fci_children = fci_items[0][2] or []
        result["fci_has_aid"] = any(t == 0x84 and v == AID for t, v, _ in fci_children)
        if not result["fci_has_aid"]:
            raise RuntimeError("FCI has no 84 %s" % AID.hex())
        proprietary = find(fci_children, 0xA5)
        if proprietary is not None:
            result["fci_proprietary"] = card_info_fields(parse_tlv(proprietary))

        first = conn.transmit(list(GET_CARD_INFO))
        result["card_info_first_sw"] = "%02X%02X" % (first[1], first[2])
        # Read it again through the 61xx-following helper (GET DATA is idempotent).
        info, sw = transmit(conn, GET_CARD_INFO, result["apdus"])
        result["card_info_sw"] = sw
        result["card_info"] = info.hex()
        if sw != "9000":
            raise RuntimeError("GET DATA card info returned %s" % sw)
        result.update(card_info_fields(parse_tlv(info)))
        conn.disconnect()
    except Exception as e:  # report everything as JSON for the Rust test
        result["error"] = "%s: %s" % (type(e).__name__, e)
        print(json.dumps(result, indent=1))
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
