#!/usr/bin/python3
"""Replay a list of APDUs (hex, one per line on stdin) through pyscard, an independent PC/SC
client, N times after W warm-up runs; print the median wall time per sequence in
microseconds and the response bytes of one sequence:

    median_us <float> bytes <int>

Usage: replay_apdus.py READER N W < apdus.hex

Used by tests/benches/critical_paths.rs as the peer of civic's own transport. Exit 1 if the
card refuses any APDU (anything but 9000)."""

import statistics
import sys
import time

from smartcard.System import readers
from smartcard.CardConnection import CardConnection


def main() -> int:
    name, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    apdus = [list(bytes.fromhex(l.strip())) for l in sys.stdin if l.strip()]
    reader = next((r for r in readers() if str(r) == name), None)
    if reader is None:
        print(f"no reader named {name!r}", file=sys.stderr)
        return 1
    conn = reader.createConnection()
    conn.connect(CardConnection.T1_protocol)
    nbytes = 0

    def once() -> int:
        got = 0
        for a in apdus:
            data, sw1, sw2 = conn.transmit(a)
            if (sw1, sw2) != (0x90, 0x00):
                raise SystemExit(f"APDU {bytes(a[:4]).hex()} answered {sw1:02X}{sw2:02X}")
            got += len(data) + 2
        return got

    for _ in range(warm):
        once()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        nbytes = once()
        samples.append(time.perf_counter() - t)
    # Leave the card as it is (a reset would be another client's surprise).
    conn.disconnect()
    print(f"median_us {statistics.median(samples) * 1e6:.1f} bytes {nbytes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
