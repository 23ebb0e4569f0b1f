#!/usr/bin/python3
"""An independent PACE-CAM terminal for an issued Civic Card, through pyscard and pcscd.

Usage: /usr/bin/python3 pace_client.py READER [CAN]
       (the CAN from the argument or from $CIVIC_CAN; optional $CIVIC_PIN, the citizen's PIN)

Written from notes/SECURE-MESSAGING.md ("What an independent client must send"), ICAO Doc
9303-11 (4.4 PACE, 4.4.3.5 Chip Authentication Mapping, 9.7 key derivation, 9.8 secure
messaging) and ISO 7816-4 only: it is the proof that the note is enough to speak the card's
secure channel without the Rust code. The primitives come from
card-applet/tests/vectors/sm_vectors.py (Python `cryptography`), which generated the
checked-in vectors; nothing here imports or translates the Rust implementation.

What it does, on the card in READER:
  1. SELECT (plain); the FCI's A5 / 82 must say 05 (issued).
  2. PACE-CAM with the CAN (MSE:SET AT, four GENERAL AUTHENTICATE), checks the card's token,
     decrypts A_IC.
  3. Inside the session (every response MAC and the send sequence counter checked): GET DATA
     card info (0101), card public key (0102), directory (0103) and the identity credential
     slot. A CAN alone gives no right to a credential: the card must refuse it (6982).
  4. Chip authentication: CA_IC * PK_IC == PK_map,PICC, PK_IC being the card key read in
     the session (0102); a tampered CA_IC must fail the same check (negative control). A
     clone passes this one (it reports its own key): step 5 is the check that counts.
  5. With $CIVIC_PIN: PACE-CAM with the PIN (password 03; the card sends a salt, 8F), which
     counts as the citizen's consent, so the identity credential (CBOR / COSE_Sign1) is
     readable: PK_IC is taken from its claims (card_public_key) and chip authentication is
     checked against it (the issuer's signature is not checked here: that needs the
     registry's issuer key).
  6. One flipped bit in a protected APDU: the card must answer a plain 6988 and close the
     session (the next correctly protected command gets 6988 too).
  7. A wrong CAN: the card must refuse it at the last GENERAL AUTHENTICATE (63Cx / 6983).

Prints one JSON object on stdout; exit 0 when every check passed, 1 otherwise (the JSON then
has "failures" and possibly "error"), 2 on bad usage. Short APDUs (Le 00 in DO97; 61xx
followed with a protected GET RESPONSE), and one extended read (Le 0000 in DO97) of the
identity credential in the PIN session, which pcscd and vpcd pass through.
"""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (CI runs in a clean clone)

import hashlib
import hmac
import json
import os
import secrets

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from smartcard.System import readers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "card-applet", "tests", "vectors"))

from read_card_info import parse_tlv, find, card_info_fields  # noqa: E402  (same folder)
from sm_vectors import (  # noqa: E402  (the independent primitives)
    CAM_OID,
    N,
    P,
    A,
    add,
    aes_cbc,
    aes_ecb,
    cmac,
    enc,
    kdf,
    mul,
    pad,
    protect_command,
    tlv,
    token,
)

# Curve coefficient b of P-256 (SEC 2 2.4.2); sm_vectors.py does not need it.
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
AID = bytes.fromhex("F0434956494301")
SELECT = bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID + b"\x00"
PASSWORD_CAN = 0x02
PASSWORD_PIN = 0x03
DOMAIN_PARAMETERS_P256 = 0x0C  # standardised domain parameters 12 (Doc 9303-11 9.5.1)
OBJ_CARD_INFO = 0x0101
OBJ_CARD_PUBLIC_KEY = 0x0102
OBJ_DIRECTORY = 0x0103
OBJ_CREDENTIAL_BASE = 0x0200
KIND_IDENTITY = 1


class Refused(Exception):
    """The card answered a status word that ends the step (sw as 4 hex digits)."""

    def __init__(self, what, sw):
        super().__init__("%s: card answered %s" % (what, sw))
        self.sw = sw


class SessionClosed(Exception):
    """A plain answer inside the session (6987 / 6988): the card closed it."""

    def __init__(self, sw):
        super().__init__("plain answer %s inside the session: the session is over" % sw)
        self.sw = sw


class BadAnswer(Exception):
    """The card's answer fails a check (MAC, counter, framing, token): not the card's."""


def sw_hex(sw1, sw2):
    return "%02X%02X" % (sw1, sw2)


def aes_cbc_dec(key, iv, data):
    d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return d.update(data) + d.finalize()


def unpad(data):
    """ISO 9797-1 padding method 2: strip 00s then the 80; anything else is an error."""
    i = len(data) - 1
    while i >= 0 and data[i] == 0:
        i -= 1
    if i < 0 or data[i] != 0x80 or len(data) - i > 16:
        raise BadAnswer("bad ISO 9797-1 padding")
    return data[:i]


# --- P-256 points: scalar multiplication by `cryptography` (OpenSSL), integers only to add.


def decode_point(b):
    """An uncompressed SEC1 point on P-256 (cryptography refuses one off the curve)."""
    if len(b) != 65 or b[0] != 0x04:
        raise BadAnswer("not an uncompressed P-256 point (%d bytes)" % len(b))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(b))
    n = key.public_numbers()
    return (n.x, n.y)


def ecdh_x(k, point):
    """x(k * point) with cryptography's ECDH (k in 1..n-1)."""
    peer = ec.EllipticCurvePublicNumbers(point[0], point[1], ec.SECP256R1()).public_key()
    priv = ec.derive_private_key(k, ec.SECP256R1())
    return int.from_bytes(priv.exchange(ec.ECDH(), peer), "big")


def mul_point(k, point):
    """The whole point k * point. ECDH gives x only; y is one of the two roots of the curve
    equation, and the right one is the root R with x(R + point) = x((k+1) * point) (the other
    root would need 2 * point = identity, impossible in a group of prime order)."""
    k %= N
    if k == 0:
        raise ValueError("zero scalar")
    x = ecdh_x(k, point)
    rhs = (x * x * x + A * x + B) % P
    y = pow(rhs, (P + 1) // 4, P)  # P = 3 mod 4
    if y * y % P != rhs:
        raise ValueError("ECDH x is not on the curve")
    roots = [(x, y), (x, P - y)]
    if k + 1 < N:
        x_next, step = ecdh_x(k + 1, point), point
    else:  # k = n-1: compare with (k-1) * point = R - point instead
        x_next, step = ecdh_x(k - 1, point), (point[0], P - point[1])
    right = [r for r in roots if (add(r, step) or (None,))[0] == x_next]
    if len(right) != 1:
        raise ValueError("could not fix the sign of y")
    return right[0]


def random_scalar():
    return secrets.randbelow(N - 1) + 1


# --- Plain and protected APDUs


class Terminal:
    def __init__(self, conn, log):
        self.conn = conn
        self.log = log
        self.k_enc = None
        self.k_mac = None
        self.ssc = 0

    def raw(self, apdu, note=""):
        data, sw1, sw2 = self.conn.transmit(list(apdu))
        entry = {"c": bytes(apdu).hex(), "r": bytes(data).hex(), "sw": sw_hex(sw1, sw2)}
        if note:
            entry["note"] = note
        self.log.append(entry)
        return bytes(data), sw_hex(sw1, sw2)

    def select(self):
        fci, sw = self.raw(SELECT, "SELECT (plain)")
        if sw != "9000":
            raise Refused("SELECT", sw)
        return fci

    # PACE, notes/SECURE-MESSAGING.md "What an independent client must send", steps 1-5.
    def pace(self, password_ref, password, oid=CAM_OID):
        """Run PACE; returns a dict of what happened. On success the session keys are set."""
        self.k_enc = self.k_mac = None
        out = {"password": {PASSWORD_CAN: "can", PASSWORD_PIN: "pin"}[password_ref],
               "oid": oid.hex()}
        # 1. MSE:SET AT (ISO 7816-4 / Doc 9303-11 4.4.4.1): 80 OID, 83 password, 84 parameters.
        body = tlv(0x80, oid) + tlv(0x83, bytes([password_ref])) + tlv(0x84, bytes([DOMAIN_PARAMETERS_P256]))
        _, sw = self.raw(bytes([0x00, 0x22, 0xC1, 0xA4, len(body)]) + body, "MSE:SET AT")
        out["mse_sw"] = sw
        if sw != "9000":
            raise Refused("MSE:SET AT", sw)

        # 2. Encrypted nonce (and, for the PIN, the salt of f(PIN) = SHA-256(salt || PIN)).
        r, sw = self.ga(b"", "GA 1: encrypted nonce")
        out["ga1_sw"] = sw
        if sw != "9000":
            raise Refused("GENERAL AUTHENTICATE 1", sw)
        z = self.dyn(r, 0x80, 16)
        if password_ref == PASSWORD_PIN:
            salt = self.dyn(r, 0x8F, 16)
            secret = hashlib.sha256(salt + password).digest()
            out["pin_salt_received"] = True
        else:
            secret = password
        k_pi = kdf(secret, 3)
        e = Cipher(algorithms.AES(k_pi), modes.CBC(b"\x00" * 16)).decryptor()
        s = int.from_bytes(e.update(z) + e.finalize(), "big")

        # 3. Generic Mapping (Doc 9303-11 4.4.3.3.1): G' = s*G + SK_map,PCD * PK_map,PICC.
        sk_map = random_scalar()
        pk_map_pcd = mul(sk_map)
        r, sw = self.ga(tlv(0x81, enc(pk_map_pcd)), "GA 2: mapping")
        out["ga2_sw"] = sw
        if sw != "9000":
            raise Refused("GENERAL AUTHENTICATE 2", sw)
        pk_map_picc = decode_point(self.dyn(r, 0x82, 65))
        if pk_map_picc == pk_map_pcd:
            raise BadAnswer("the card echoed our mapping key")
        h = mul_point(sk_map, pk_map_picc)
        g_mapped = add(mul(s), h) if s else h
        if g_mapped is None:
            raise BadAnswer("mapped generator is the identity")

        # 4. Key agreement on G' (4.4.3.3.2 / 4.4.3.4).
        sk = random_scalar()
        pk_pcd = mul_point(sk, g_mapped)
        r, sw = self.ga(tlv(0x83, enc(pk_pcd)), "GA 3: key agreement")
        out["ga3_sw"] = sw
        if sw != "9000":
            raise Refused("GENERAL AUTHENTICATE 3", sw)
        pk_picc_raw = self.dyn(r, 0x84, 65)
        pk_picc = decode_point(pk_picc_raw)
        if pk_picc == pk_pcd:
            raise BadAnswer("PK_PICC equals PK_PCD (Doc 9303-11 4.4.3.4 requires a check)")
        k = ecdh_x(sk, pk_picc).to_bytes(32, "big")
        k_enc, k_mac = kdf(k, 1), kdf(k, 2)

        # 5. Mutual authentication: tokens over the other side's key (4.4.3.4), A_IC (4.4.3.5).
        t_pcd = token(k_mac, enc(pk_picc), oid)
        r, sw = self.raw(bytes([0x00, 0x86, 0x00, 0x00, 0x0C]) + tlv(0x7C, tlv(0x85, t_pcd)) + b"\x00",
                         "GA 4: mutual authentication")
        out["ga4_sw"] = sw
        if sw != "9000":
            raise Refused("GENERAL AUTHENTICATE 4", sw)
        t_picc = self.dyn(r, 0x86, 8)
        if not hmac.compare_digest(t_picc, token(k_mac, enc(pk_pcd), oid)):
            raise BadAnswer("the card's authentication token T_PICC does not verify")
        out["token_verified"] = True
        if oid == CAM_OID:
            a_ic = self.dyn(r, 0x8A, None)
            out["a_ic_len"] = len(a_ic)
            if len(a_ic) == 0 or len(a_ic) % 16:
                raise BadAnswer("A_IC is %d bytes, not whole AES blocks" % len(a_ic))
            ca = unpad(aes_cbc_dec(k_enc, aes_ecb(k_enc, b"\xff" * 16), a_ic))
            if len(ca) != 32:
                raise BadAnswer("CA_IC is %d bytes, not 32" % len(ca))
            ca_ic = int.from_bytes(ca, "big")
            if not 0 < ca_ic < N:
                raise BadAnswer("CA_IC out of range")
            out["a_ic_decrypted"] = True
            self.ca_ic = ca_ic
            self.pk_map_picc = pk_map_picc
        self.k_enc, self.k_mac, self.ssc = k_enc, k_mac, 0
        return out

    def ga(self, inner, note):
        """GENERAL AUTHENTICATE as a chained link (CLA 10), dynamic authentication data 7C."""
        body = tlv(0x7C, inner)
        return self.raw(bytes([0x10, 0x86, 0x00, 0x00, len(body)]) + body + b"\x00", note)

    @staticmethod
    def dyn(r, tag, length):
        """One object of a 7C answer, of the given length (None: any)."""
        items = parse_tlv(r)
        if len(items) != 1 or items[0][0] != 0x7C:
            raise BadAnswer("GENERAL AUTHENTICATE answer is not one 7C template: %s" % r.hex())
        v = find(items[0][2] or [], tag)
        if v is None or (length is not None and len(v) != length):
            raise BadAnswer("7C has no %02X of %s bytes: %s" % (tag, length, r.hex()))
        return bytes(v)

    # Secure messaging (Doc 9303-11 9.8, ISO 7816-4 section 10).
    def protected(self, ins, p1, p2, data=b"", note="", flip_bit=None, extended=False):
        """Send one protected command, return (data, inner sw) of the checked answer.

        extended: an extended APDU with Le 0000 in DO97 (up to 65536 bytes in one answer)
        instead of a short one with Le 00 (at most 223 bytes in a short protected answer, then 61xx).
        flip_bit: flip that bit of the protected APDU (the tampering test); a plain answer
        raises SessionClosed."""
        if self.k_enc is None:
            raise SessionClosed("none")
        self.ssc += 1
        if extended:
            apdu = bytearray(protect_extended(self.k_enc, self.k_mac, self.ssc, ins, p1, p2, data))
        else:
            apdu = bytearray(protect_command(self.k_enc, self.k_mac, self.ssc, 0x00, ins, p1, p2, data, b"\x00"))
        if flip_bit is not None:
            apdu[flip_bit // 8] ^= 0x80 >> (flip_bit % 8)
        resp, sw = self.raw(bytes(apdu), note)
        self.ssc += 1
        if not resp:
            # A plain status word: the card has closed the session (notes: 6987 / 6988).
            self.k_enc = self.k_mac = None
            raise SessionClosed(sw)
        return self.unprotect(resp, sw)

    def unprotect(self, resp, outer_sw):
        ssc = self.ssc.to_bytes(16, "big")
        items = parse_tlv(resp)
        tags = [t for t, _, _ in items]
        if tags not in ([0x99, 0x8E], [0x87, 0x99, 0x8E]):
            raise BadAnswer("protected answer has objects %s" % [hex(t) for t in tags])
        # Byte-exact framing: parse_tlv skips 00/FF filler, which a protected answer has none of.
        if b"".join(tlv(t, v) for t, v, _ in items) != resp:
            raise BadAnswer("protected answer is not plain DER-length TLVs")
        objs = {t: bytes(v) for t, v, _ in items}
        macced = b"".join(tlv(t, objs[t]) for t in tags[:-1])
        want = cmac(self.k_mac, pad(ssc + macced))[:8]
        if not hmac.compare_digest(objs[0x8E], want):
            raise BadAnswer("response MAC does not verify at SSC %d" % self.ssc)
        sw = objs[0x99]
        if len(sw) != 2:
            raise BadAnswer("DO99 is %d bytes" % len(sw))
        inner_sw = sw.hex().upper()
        if inner_sw != outer_sw:
            raise BadAnswer("DO99 %s differs from the outer status word %s" % (inner_sw, outer_sw))
        data = b""
        if 0x87 in objs:
            d = objs[0x87]
            if not d or d[0] != 0x01 or (len(d) - 1) % 16 or len(d) == 1:
                raise BadAnswer("DO87 is not 01 || whole AES blocks")
            data = unpad(aes_cbc_dec(self.k_enc, aes_ecb(self.k_enc, ssc), d[1:]))
        self.log[-1]["mac_ok"] = True
        self.log[-1]["ssc"] = self.ssc
        return data, inner_sw

    def get_data(self, obj, what, extended=False):
        """Protected GET DATA; 61xx is followed with a protected GET RESPONSE (a plain one
        would end the session)."""
        data, sw = self.protected(0xCA, obj >> 8, obj & 0xFF, note="GET DATA %04X %s" % (obj, what),
                                  extended=extended)
        rounds = 0
        while sw.startswith("61") and rounds < 300:
            rounds += 1
            more, sw = self.protected(0xC0, 0x00, 0x00, note="GET RESPONSE")
            data += more
        return data, sw


def protect_extended(k_enc, k_mac, ssc, ins, p1, p2, data):
    """As sm_vectors.protect_command, in an extended APDU: DO97 = 97 02 0000 (Le 65536),
    Lc on three bytes, the outer Le 0000 (ISO 7816-4 5.1, 10.3)."""
    s = ssc.to_bytes(16, "big")
    header = bytes([0x0C, ins, p1, p2])
    do87 = tlv(0x87, b"\x01" + aes_cbc(k_enc, aes_ecb(k_enc, s), pad(data))) if data else b""
    do97 = tlv(0x97, b"\x00\x00")
    mac = cmac(k_mac, pad(s + pad(header) + do87 + do97))[:8]
    body = do87 + do97 + tlv(0x8E, mac)
    return header + b"\x00" + len(body).to_bytes(2, "big") + body + b"\x00\x00"


# --- The run


def directory_entries(data):
    out = []
    for t, _, children in parse_tlv(data):
        if t != 0x61 or children is None:
            continue
        fields = {ct: bytes(cv) for ct, cv, _ in children}
        out.append({"slot": fields[0x80][0], "kind": fields[0x81][0],
                    "length": int.from_bytes(fields[0x82], "big")})
    return out


def identity_card_key(slot_body, card_id):
    """PK_IC from a slot's GET DATA body `80 kind 81 record`: record = CBOR map
    {credential: tagged COSE_Sign1, batch_id, proof}, payload = the credential map whose
    claims carry card_public_key (65-byte SEC1)."""
    fields = {t: bytes(v) for t, v, _ in parse_tlv(slot_body)}
    if fields.get(0x80) != bytes([KIND_IDENTITY]):
        raise BadAnswer("slot is not an identity credential")
    record = cbor2.loads(fields[0x81])
    sign1 = cbor2.loads(record["credential"])
    if not isinstance(sign1, cbor2.CBORTag) or sign1.tag != 18 or len(sign1.value) != 4:
        raise BadAnswer("credential is not a tagged COSE_Sign1")
    protected, _unprotected, payload, signature = sign1.value
    header = cbor2.loads(protected)
    if header.get(1) != -7 or len(signature) != 64:
        raise BadAnswer("COSE_Sign1 is not ES256")
    cred = cbor2.loads(payload)
    if cred.get("kind") != "identity" or cred.get("card_id") != card_id:
        raise BadAnswer("identity credential names card %r, kind %r" % (cred.get("card_id"), cred.get("kind")))
    return bytes(cred["claims"]["card_public_key"]), cred


def chip_authentication(term, pk_ic_raw):
    """Doc 9303-11 4.4.3.5.2: the chip is genuine if CA_IC * PK_IC = PK_map,PICC."""
    pk_ic = decode_point(pk_ic_raw)
    passed = mul_point(term.ca_ic, pk_ic) == term.pk_map_picc
    # Negative control: the same check with a CA_IC off by one must fail, so a pass above
    # is the check's own doing.
    control = mul_point(term.ca_ic + 1, pk_ic) == term.pk_map_picc
    return {"passed": passed, "tampered_ca_ic_refused": not control}


def run(conn, can, pin, result):
    failures = result["failures"]
    term = Terminal(conn, result["apdus"])

    def expect(cond, what):
        if not cond:
            failures.append(what)
        return cond

    # 1. SELECT, FCI life cycle.
    fci = term.select()
    a5 = find(parse_tlv(fci), 0xA5)
    fields = card_info_fields(parse_tlv(a5)) if a5 is not None else {}
    result["fci"] = fields
    card_id = fields.get("card_id")
    expect(fields.get("life_cycle") == 0x05, "FCI does not say issued (A5/82 = 05)")

    # 2. PACE-CAM with the CAN.
    session = {}
    result["can_session"] = session
    session["pace"] = term.pace(PASSWORD_CAN, can)
    session["established"] = True

    # 3. Protected reads.
    reads = {}
    session["reads"] = reads
    info, sw = term.get_data(OBJ_CARD_INFO, "card info")
    reads["card_info"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc}
    if expect(sw == "9000", "card info answered %s" % sw):
        session["card_info"] = card_info_fields(parse_tlv(info))
        expect(session["card_info"].get("card_id") == card_id, "card info names another card")
    key, sw = term.get_data(OBJ_CARD_PUBLIC_KEY, "card public key")
    reads["card_public_key"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc}
    pk_object = bytes(find(parse_tlv(key), 0x86) or b"") if sw == "9000" else b""
    expect(len(pk_object) == 65, "no card public key (0102)")
    session["card_public_key"] = pk_object.hex()
    directory, sw = term.get_data(OBJ_DIRECTORY, "directory")
    reads["directory"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc}
    entries = directory_entries(directory) if sw == "9000" else []
    session["directory"] = entries
    identity = [e["slot"] for e in entries if e["kind"] == KIND_IDENTITY]
    expect(len(identity) == 1, "directory has %d identity credentials" % len(identity))
    slot = OBJ_CREDENTIAL_BASE | (identity[0] if identity else 0)
    result["identity_object"] = "%04X" % slot
    _, sw = term.get_data(slot, "identity credential")
    reads["identity_credential"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc}
    # A CAN opens the channel, not the data: reading identity needs READ_IDENTITY (a
    # terminal certificate) or the citizen's PIN (notes/CONTRACTS.md issue 3).
    expect(sw == "6982", "identity credential with the CAN alone answered %s, not 6982" % sw)
    session["identity_credential_needs"] = "terminal authentication (READ_IDENTITY) or the PIN"
    # A refusal inside the session is a protected answer and leaves the session open.
    _, sw = term.get_data(OBJ_CARD_INFO, "card info after the refusal")
    reads["card_info_after_refusal"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc}
    expect(sw == "9000", "card info after a refusal answered %s" % sw)

    # 4. Chip authentication against the card key read inside this session.
    ca = chip_authentication(term, pk_object)
    ca["pk_ic_from"] = "GET DATA 0102 (inside the session)"
    session["chip_authentication"] = ca
    expect(ca["passed"], "chip authentication failed (CAN session)")
    expect(ca["tampered_ca_ic_refused"], "a tampered CA_IC passed")

    # 5. With the PIN: the identity credential, PK_IC from it.
    if pin is not None:
        term.select()
        ps = {}
        result["pin_session"] = ps
        ps["pace"] = term.pace(PASSWORD_PIN, pin)
        ps["established"] = True
        body, sw = term.get_data(slot, "identity credential")
        ps["identity_credential"] = {"sw": sw, "mac_verified": True, "ssc": term.ssc,
                                     "bytes": len(body),
                                     "get_response_rounds": term.ssc // 2 - 1}
        # The same object in one extended APDU (DO97 = 0000): the whole answer at once.
        again, sw_ext = term.get_data(slot, "identity credential (extended)", extended=True)
        ps["identity_credential_extended"] = {"sw": sw_ext, "mac_verified": True,
                                              "ssc": term.ssc, "bytes": len(again)}
        expect(sw_ext == "9000" and again == body,
               "extended read of the identity credential: %s, %d bytes" % (sw_ext, len(again)))
        if expect(sw == "9000", "identity credential with the PIN answered %s" % sw):
            pk_ic, cred = identity_card_key(body, card_id)
            ps["identity_credential"].update({
                "card_id": cred["card_id"], "issuer_id": cred["issuer_id"],
                "card_public_key": pk_ic.hex(),
                "issuer_signature": "not checked (needs the registry's issuer key)"})
            expect(pk_ic == pk_object, "the credential's card key differs from 0102")
            ca = chip_authentication(term, pk_ic)
            ca["pk_ic_from"] = "identity credential claims.card_public_key"
            ps["chip_authentication"] = ca
            expect(ca["passed"], "chip authentication failed (PIN session, credential key)")
            expect(ca["tampered_ca_ic_refused"], "a tampered CA_IC passed (PIN session)")

    # 6. One flipped bit in a protected APDU: 6988 and the session closed.
    term.select()
    term.pace(PASSWORD_CAN, can)
    flip = {}
    result["flipped_bit"] = flip
    # Bit 0x01 of the last MAC byte (the protected APDU ends MAC(8) || Le(1)).
    probe = protect_command(term.k_enc, term.k_mac, term.ssc + 1, 0, 0xCA, 1, 1, b"", b"\x00")
    flip["bit"] = (len(probe) - 2) * 8 + 7
    keys = (term.k_enc, term.k_mac)
    try:
        term.protected(0xCA, 0x01, 0x01, note="GET DATA 0101, one bit flipped", flip_bit=flip["bit"])
        flip["sw"] = "protected answer"
    except SessionClosed as e:
        flip["sw"] = e.sw
    # The keys are still ours: a correctly protected command (next SSC) must be refused too.
    term.k_enc, term.k_mac = keys
    try:
        term.protected(0xCA, 0x01, 0x01, note="GET DATA 0101 after the flip")
        flip["next_sw"] = "protected answer"
    except SessionClosed as e:
        flip["next_sw"] = e.sw
    flip["session_closed"] = flip["next_sw"] == "6988"
    expect(flip["sw"] == "6988", "flipped bit answered %s, not 6988" % flip["sw"])
    expect(flip["session_closed"], "session still open after the flipped bit (%s)" % flip["next_sw"])

    # 7. A wrong CAN (last: three in a row would block the CAN until a power cycle).
    term.select()
    wrong = b"000000" if can != b"000000" else b"111111"
    wc = {}
    result["wrong_can"] = wc
    try:
        term.pace(PASSWORD_CAN, wrong)
        wc["sw"] = "9000"
    except Refused as e:
        wc["sw"] = e.sw
        wc["step"] = str(e).split(":")[0]
    except BadAnswer as e:
        wc["sw"] = "bad answer"
        wc["error"] = str(e)
    wc["refused"] = wc["sw"].startswith("63C") or wc["sw"] == "6983"
    expect(wc["refused"], "wrong CAN answered %s" % wc["sw"])
    expect(wc.get("step") == "GENERAL AUTHENTICATE 4", "wrong CAN refused at %s" % wc.get("step"))


def main():
    args = sys.argv[1:]
    if len(args) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    can = args[1] if len(args) == 2 else os.environ.get("CIVIC_CAN", "")
    if len(can) != 6 or not can.isdigit():
        print("pace_client.py: the CAN must be 6 digits (argument or CIVIC_CAN)", file=sys.stderr)
        return 2
    pin = os.environ.get("CIVIC_PIN")
    result = {"reader": args[0], "apdus": [], "failures": []}
    try:
        matching = [r for r in readers() if str(r) == args[0]]
        if not matching:
            raise RuntimeError("no reader named %r; readers: %s" % (args[0], [str(r) for r in readers()]))
        conn = matching[0].createConnection()
        conn.connect()
        result["atr"] = bytes(conn.getATR()).hex()
        run(conn, can.encode(), pin.encode() if pin else None, result)
        conn.disconnect()
    except Exception as e:  # everything goes into the JSON for the Rust test
        result["error"] = "%s: %s" % (type(e).__name__, e)
    result["ok"] = not result["failures"] and "error" not in result
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
