#!/usr/bin/env python3
"""Independent test vectors for Civic Card secure messaging (notes/SECURE-MESSAGING.md).

Computed with Python's `cryptography` package (AES, CMAC, SHA-256, P-256 scalar
multiplication) and integer arithmetic for the one thing it does not expose, the point
addition of PACE's Generic Mapping. Nothing here imports the Rust code: the Rust test
(card-applet/tests/secure_messaging.rs) checks its own results against this file's output.

    python3 card-applet/tests/vectors/sm_vectors.py > card-applet/tests/vectors/sm_vectors.txt
"""

import hashlib

from cryptography.hazmat.primitives import cmac as cmac_mod
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives import serialization

# NIST P-256 (SEC 2 / FIPS 186-4 D.1.2.3)
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

OID = bytes.fromhex("04007F00070202040204")  # id-PACE-ECDH-GM-AES-CBC-CMAC-256
CAM_OID = bytes.fromhex("04007F00070202040604")  # id-PACE-ECDH-CAM-AES-CBC-CMAC-256


def kdf(secret: bytes, counter: int) -> bytes:
    """Doc 9303-11 9.7.1 for AES-256: SHA-256(secret || counter32)."""
    return hashlib.sha256(secret + counter.to_bytes(4, "big")).digest()


def aes_ecb(key: bytes, block: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def aes_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def pad(data: bytes) -> bytes:
    """ISO 9797-1 padding method 2 to 16 bytes."""
    data = data + b"\x80"
    return data + b"\x00" * (-len(data) % 16)


def cmac(key: bytes, data: bytes) -> bytes:
    c = cmac_mod.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def mul(k: int, point=None) -> tuple:
    """k * point with `cryptography` (point None: the generator)."""
    if point is None:
        pub = ec.derive_private_key(k, ec.SECP256R1()).public_key()
        n = pub.public_numbers()
        return (n.x, n.y)
    # k * Q: ECDH of scalar k with Q gives only x; get y from the addition formula instead.
    return scalar_mult_int(k, point)


# Affine arithmetic in integers (the addition `cryptography` does not expose).
def add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def scalar_mult_int(k, point):
    r = None
    q = point
    while k:
        if k & 1:
            r = add(r, q)
        q = add(q, q)
        k >>= 1
    return r


def enc(point) -> bytes:
    x, y = point
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def tlv(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes(2, "big") if tag > 0xFF else bytes([tag])
    n = len(value)
    if n < 0x80:
        ln = bytes([n])
    elif n <= 0xFF:
        ln = bytes([0x81, n])
    else:
        ln = bytes([0x82]) + n.to_bytes(2, "big")
    return t + ln + value


def token(k_mac: bytes, point: bytes, oid: bytes = OID) -> bytes:
    return cmac(k_mac, tlv(0x7F49, tlv(0x06, oid) + tlv(0x86, point)))[:8]


def protect_command(k_enc, k_mac, ssc, cla, ins, p1, p2, data, le):
    s = ssc.to_bytes(16, "big")
    cla |= 0x0C
    do87 = b""
    if data:
        iv = aes_ecb(k_enc, s)
        do87 = tlv(0x87, b"\x01" + aes_cbc(k_enc, iv, pad(data)))
    do97 = tlv(0x97, le) if le is not None else b""
    mac = cmac(k_mac, pad(s + pad(bytes([cla, ins, p1, p2])) + do87 + do97))[:8]
    body = do87 + do97 + tlv(0x8E, mac)
    assert len(body) <= 255
    return bytes([cla, ins, p1, p2, len(body)]) + body + b"\x00"


def protect_response(k_enc, k_mac, ssc, data, sw):
    s = ssc.to_bytes(16, "big")
    out = b""
    if data:
        iv = aes_ecb(k_enc, s)
        out = tlv(0x87, b"\x01" + aes_cbc(k_enc, iv, pad(data)))
    out += tlv(0x99, sw)
    mac = cmac(k_mac, pad(s + out))[:8]
    return out + tlv(0x8E, mac) + sw


def main():
    out = []

    def put(k, v):
        out.append(f"{k} = {v.hex() if isinstance(v, bytes) else v}")

    # Password key from the CAN "123456" and from a PIN record.
    can = b"123456"
    put("can", can)
    put("k_pi_can", kdf(can, 3))
    salt = bytes(range(16))
    pin_hash = hashlib.sha256(salt + b"482913").digest()
    put("pin_salt", salt)
    put("pin_record", pin_hash)
    put("k_pi_pin", kdf(pin_hash, 3))

    # Nonce encryption
    s = bytes.fromhex("3F00C4D39D153F2B2A214A078D899B22")
    put("nonce", s)
    put("encrypted_nonce", aes_ecb(kdf(can, 3), s))

    # Generic Mapping with fixed scalars
    sk_map_pcd = int.from_bytes(hashlib.sha256(b"map pcd").digest(), "big") % N
    sk_map_picc = int.from_bytes(hashlib.sha256(b"map picc").digest(), "big") % N
    put("sk_map_pcd", sk_map_pcd.to_bytes(32, "big"))
    put("sk_map_picc", sk_map_picc.to_bytes(32, "big"))
    pk_map_pcd = mul(sk_map_pcd)
    pk_map_picc = mul(sk_map_picc)
    put("pk_map_pcd", enc(pk_map_pcd))
    put("pk_map_picc", enc(pk_map_picc))
    h = scalar_mult_int(sk_map_picc, pk_map_pcd)
    assert h == scalar_mult_int(sk_map_pcd, pk_map_picc)
    g_mapped = add(mul(int.from_bytes(s, "big")), h)
    put("mapped_generator", enc(g_mapped))

    # Key agreement on G'
    sk_pcd = int.from_bytes(hashlib.sha256(b"eph pcd").digest(), "big") % N
    sk_picc = int.from_bytes(hashlib.sha256(b"eph picc").digest(), "big") % N
    put("sk_eph_pcd", sk_pcd.to_bytes(32, "big"))
    put("sk_eph_picc", sk_picc.to_bytes(32, "big"))
    pk_pcd = scalar_mult_int(sk_pcd, g_mapped)
    pk_picc = scalar_mult_int(sk_picc, g_mapped)
    put("pk_eph_pcd", enc(pk_pcd))
    put("pk_eph_picc", enc(pk_picc))
    shared = scalar_mult_int(sk_pcd, pk_picc)
    assert shared == scalar_mult_int(sk_picc, pk_pcd)
    k = shared[0].to_bytes(32, "big")
    # Cross-check the x coordinate with cryptography's own ECDH on the standard generator
    # path: k * (m * G) where G' = m * G is unknown, so instead check one ECDH on G.
    priv = ec.derive_private_key(sk_map_picc, ec.SECP256R1())
    peer = ec.EllipticCurvePublicNumbers(pk_map_pcd[0], pk_map_pcd[1], ec.SECP256R1()).public_key()
    assert priv.exchange(ec.ECDH(), peer) == h[0].to_bytes(32, "big")
    assert serialization  # imported for completeness of the public-key encodings
    put("shared_secret", k)
    k_enc, k_mac = kdf(k, 1), kdf(k, 2)
    put("k_enc", k_enc)
    put("k_mac", k_mac)
    put("token_pcd", token(k_mac, enc(pk_picc)))
    put("token_picc", token(k_mac, enc(pk_pcd)))

    # PACE-CAM (Doc 9303-11 4.4.3.5) on the same run: the tokens cover the CAM OID; the chip
    # sends A_IC = AES-CBC(K_enc, IV = AES(K_enc, 0xFF * 16), pad(CA_IC)) with
    # CA_IC = SK_IC^-1 * SK_Map,IC mod n; the terminal checks PK_Map,IC == CA_IC * PK_IC.
    put("cam_token_pcd", token(k_mac, enc(pk_picc), CAM_OID))
    put("cam_token_picc", token(k_mac, enc(pk_pcd), CAM_OID))
    sk_ic = int.from_bytes(hashlib.sha256(b"chip key").digest(), "big") % N
    put("sk_ic", sk_ic.to_bytes(32, "big"))
    pk_ic = mul(sk_ic)
    put("pk_ic", enc(pk_ic))
    ca_ic = pow(sk_ic, -1, N) * sk_map_picc % N
    put("ca_ic", ca_ic.to_bytes(32, "big"))
    assert scalar_mult_int(ca_ic, pk_ic) == pk_map_picc
    # The same check with `cryptography`'s own multiplication: CA_IC * PK_IC as an ECDH x.
    ca_priv = ec.derive_private_key(ca_ic, ec.SECP256R1())
    pk_ic_key = ec.EllipticCurvePublicNumbers(pk_ic[0], pk_ic[1], ec.SECP256R1()).public_key()
    assert ca_priv.exchange(ec.ECDH(), pk_ic_key) == pk_map_picc[0].to_bytes(32, "big")
    cam_iv = aes_ecb(k_enc, b"\xff" * 16)
    put("cam_iv", cam_iv)
    put("a_ic", aes_cbc(k_enc, cam_iv, pad(ca_ic.to_bytes(32, "big"))))

    # Secure messaging with those keys: SSC 1 command, SSC 2 response, SSC 3 command
    put("cmd1_plain", bytes.fromhex("00CA010100"))
    put("cmd1_protected", protect_command(k_enc, k_mac, 1, 0x00, 0xCA, 0x01, 0x01, b"", b"\x00"))
    put("rsp1_plain", bytes.fromhex("8002010081034142439000"))
    put("rsp1_protected", protect_response(k_enc, k_mac, 2, bytes.fromhex("800201008103414243"), b"\x90\x00"))
    put("cmd3_plain", bytes.fromhex("002000810634383239313300"))
    put("cmd3_protected", protect_command(k_enc, k_mac, 3, 0x00, 0x20, 0x00, 0x81, b"482913", b"\x00"))
    put("rsp3_plain", bytes.fromhex("63C2"))
    put("rsp3_protected", protect_response(k_enc, k_mac, 4, b"", b"\x63\xC2"))
    print("# Generated by sm_vectors.py (Python cryptography); do not edit by hand.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
