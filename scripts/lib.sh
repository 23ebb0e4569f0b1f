# shellcheck shell=bash
# Shared helpers for scripts/demo and scripts/test. Source it; do not execute it.
#
#   civic_install_packages          apt-get install what is missing (+ check cargo)
#   civic_setup_traps               trap civic_stop_all on EXIT, INT and TERM
#   civic_start_pcscd DIR           our own pcscd with four vpcd readers (config in DIR)
#   civic_start_card STATE PORT [NAME [ARGS...]]
#                                   a civic-card on vpcd port PORT (extra civic-card ARGS, e.g.
#                                   --feed N); waits until pcscd sees it
#   civic_stop_card NAME [SIGNAL]   stop one card (default TERM; KILL for a "pulled" card)
#   civic_reader_name INDEX         reader name for index 0..3
#   civic_port INDEX                vpcd port for index 0..3
#   civic_reader_has_card READER    exit 0 when pcscd reports a card in READER
#   civic_stop_all                  stop every card, then pcscd; idempotent
#
# Reader layout (the same in tests/src/lib.rs; measured on Debian 12, pcscd 1.9.9):
#
#   index  reader name            vpcd port   config entry
#   0      "Virtual PCD 00 00"    31337       1: stock libifdvpcd.so, CHANNELID 0x7A69
#   1      "Virtual PCD 00 01"    31338       1
#   2      "Virtual PCD 2 00 00"  31339       2: a copy of libifdvpcd.so, CHANNELID 0x7A6B
#   3      "Virtual PCD 2 00 01"  31340       2
#
# The second entry has its own FRIENDLYNAME: with the same name pcscd lists both entries'
# readers as "Virtual PCD 00 00" / "00 01" (duplicate names, unusable by name). It loads its
# own copy of the driver: two entries sharing one .so misroute APDUs (NOTES-pcsc.md). Ports
# stay below 32768, outside Linux's ephemeral range.
#
# Environment:
#   CIVIC_BIN_DIR       where civic-card / civic live (default: <repo>/target/release)
#   CIVIC_PCSCD_DEBUG=1 start pcscd with -a -d (APDU and debug log in DIR/pcscd.log)
#   CIVIC_WAIT_SECS     bound for each wait (default 15)
#
# Needs only bash, coreutils and the packages below (no procps/iproute2: processes and
# listening ports are read from /proc).

CIVIC_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CIVIC_READERS=("Virtual PCD 00 00" "Virtual PCD 00 01" "Virtual PCD 2 00 00" "Virtual PCD 2 00 01")
CIVIC_PORTS=(31337 31338 31339 31340)
CIVIC_VPCD_DRIVER="${CIVIC_VPCD_DRIVER:-/usr/lib/pcsc/drivers/serial/libifdvpcd.so}"
CIVIC_PYTHON=/usr/bin/python3
CIVIC_PACKAGES=(pcscd libpcsclite-dev vsmartcard-vpcd opensc pcsc-tools python3-pyscard
    python3-cryptography python3-cbor2
    pkg-config build-essential chromium fonts-wqy-microhei)

# State of this shell's session (what we started, so we stop only that).
CIVIC_PCSCD_PID=""
CIVIC_PCSCD_DIR=""
declare -A CIVIC_CARD_PIDS=()
declare -A CIVIC_CARD_LOGS=()
CIVIC_CARD_ORDER=()

civic_log() { printf '==> %s\n' "$*" >&2; }
civic_err() { printf 'error: %s\n' "$*" >&2; }

civic_reader_name() { printf '%s\n' "${CIVIC_READERS[$1]}"; }
civic_port() { printf '%s\n' "${CIVIC_PORTS[$1]}"; }

civic__wait_secs() { printf '%s\n' "${CIVIC_WAIT_SECS:-15}"; }

# ---------------------------------------------------------------------------------------
# Packages

civic__sudo() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        civic_err "need root or sudo to run: $*"
        return 1
    fi
}

civic__pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

civic_install_packages() {
    local missing=() p
    for p in "${CIVIC_PACKAGES[@]}"; do
        civic__pkg_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        civic_log "installing: ${missing[*]}"
        civic__sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
        civic__sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}"
        # Without systemd, the pcscd package's init script may start a system pcscd. It
        # would own /run/pcscd/pcscd.comm; ours must be the only one.
        if printf '%s\n' "${missing[@]}" | grep -qx pcscd && [ -n "$(civic__pcscd_pids)" ]; then
            civic_log "stopping the pcscd the package installation started"
            civic__sudo /etc/init.d/pcscd stop >/dev/null 2>&1 || true
        fi
    else
        civic_log "system packages present"
    fi
    for p in pcscd opensc-tool scriptor pkg-config cc; do
        command -v "$p" >/dev/null 2>&1 || { civic_err "'$p' missing after install"; return 1; }
    done
    [ -f "$CIVIC_VPCD_DRIVER" ] || { civic_err "vpcd driver not found: $CIVIC_VPCD_DRIVER"; return 1; }
    "$CIVIC_PYTHON" -c 'import smartcard' 2>/dev/null \
        || { civic_err "$CIVIC_PYTHON cannot import smartcard (python3-pyscard)"; return 1; }
    # tests/interop/pace_client.py, the independent PACE-CAM terminal (and sm_vectors.py).
    "$CIVIC_PYTHON" -c 'import cryptography, cbor2' 2>/dev/null \
        || { civic_err "$CIVIC_PYTHON cannot import cryptography and cbor2" \
            "(python3-cryptography, python3-cbor2)"; return 1; }
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        civic_err "cargo not found: install a Rust toolchain with rustup (https://rustup.rs)" \
            "and put ~/.cargo/bin on PATH"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------
# Processes (read from /proc: procps may be absent on a clean machine)

# 0 when PID exists and is not a zombie.
civic__alive() {
    local pid="$1" state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# The live pcscd processes that own our /run/pcscd: those in our mount namespace (a pcscd
# inside another checkout's scripts/sandbox has its own /run and is none of our business).
civic__pcscd_pids() {
    local d comm ours theirs
    ours="$(readlink "/proc/$$/ns/mnt" 2>/dev/null)" || ours=""
    for d in /proc/[0-9]*; do
        comm="$(cat "$d/comm" 2>/dev/null)" || continue
        [ "$comm" = "pcscd" ] || continue
        theirs="$(readlink "$d/ns/mnt" 2>/dev/null)" || theirs=""
        [ -z "$ours" ] || [ -z "$theirs" ] || [ "$ours" = "$theirs" ] || continue
        if civic__alive "${d#/proc/}"; then
            printf '%s\n' "${d#/proc/}"
        fi
    done
}

# Send SIGNAL to PID, wait up to SECS for it to be gone, then SIGKILL (and wait again).
civic__terminate() {
    local pid="$1" sig="${2:-TERM}" secs="${3:-5}" i
    civic__alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 20; i++)); do
        civic__alive "$pid" || break
        sleep 0.05
    done
    if civic__alive "$pid"; then
        civic_err "pid $pid ignored SIG$sig for ${secs}s: sending SIGKILL"
        kill -s KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            civic__alive "$pid" || break
            sleep 0.05
        done
    fi
    wait "$pid" 2>/dev/null || true
    if civic__alive "$pid"; then
        civic_err "pid $pid is still running after SIGKILL"
        return 1
    fi
}

# 0 when something listens on TCP PORT (IPv4 or IPv6).
civic__port_listening() {
    local hex
    hex="$(printf ':%04X' "$1")"
    awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 }
        END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

civic__tail() {
    local f="$1"
    if [ -f "$f" ]; then
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 25 "$f" >&2
        printf -- '---\n' >&2
    fi
}

# ---------------------------------------------------------------------------------------
# pcscd

civic_start_pcscd() {
    local dir="${1:?usage: civic_start_pcscd DIR}" conf pids i secs
    secs="$(civic__wait_secs)"
    if [ -n "$CIVIC_PCSCD_PID" ] && civic__alive "$CIVIC_PCSCD_PID"; then
        civic_err "civic_start_pcscd: this session's pcscd (pid $CIVIC_PCSCD_PID) is running"
        return 1
    fi
    pids="$(civic__pcscd_pids)"
    if [ -n "$pids" ]; then
        civic_err "another pcscd is running (pid $(echo $pids)), not started by this script." \
            "Only one pcscd can own /run/pcscd/pcscd.comm. Stop it first" \
            "(e.g. /etc/init.d/pcscd stop, or kill $(echo $pids))."
        return 1
    fi
    if [ ! -w /run ] && [ "$(id -u)" -ne 0 ]; then
        civic_err "pcscd needs root (it creates /run/pcscd)"
        return 1
    fi
    # A SIGKILLed pcscd leaves its socket and pid file: "Another pcscd seems to be running".
    rm -rf /run/pcscd

    mkdir -p "$dir/reader.conf.d"
    dir="$(cd "$dir" && pwd)"
    cp "$CIVIC_VPCD_DRIVER" "$dir/libifdvpcd-2.so"
    conf="$dir/reader.conf.d/civic-vpcd"
    cat >"$conf" <<EOF
# Generated by scripts/lib.sh: four vpcd readers on ports ${CIVIC_PORTS[*]}.
FRIENDLYNAME "Virtual PCD"
DEVICENAME /dev/null:0x7A69
LIBPATH $CIVIC_VPCD_DRIVER
CHANNELID 0x7A69

FRIENDLYNAME "Virtual PCD 2"
DEVICENAME /dev/null:0x7A6B
LIBPATH $dir/libifdvpcd-2.so
CHANNELID 0x7A6B
EOF
    local args=(--foreground --config "$dir/reader.conf.d")
    if [ "${CIVIC_PCSCD_DEBUG:-0}" = "1" ]; then
        args+=(-a -d)
    fi
    civic_log "starting pcscd (config $dir/reader.conf.d, log $dir/pcscd.log)"
    pcscd "${args[@]}" >"$dir/pcscd.log" 2>&1 </dev/null &
    CIVIC_PCSCD_PID=$!
    CIVIC_PCSCD_DIR="$dir"

    local ready=0 p ok
    for ((i = 0; i < secs * 20; i++)); do
        if ! civic__alive "$CIVIC_PCSCD_PID"; then
            civic_err "pcscd exited during start-up"
            civic__tail "$dir/pcscd.log"
            CIVIC_PCSCD_PID=""
            return 1
        fi
        if [ -S /run/pcscd/pcscd.comm ]; then
            ok=1
            for p in "${CIVIC_PORTS[@]}"; do
                civic__port_listening "$p" || { ok=0; break; }
            done
            if [ "$ok" = 1 ]; then ready=1; break; fi
        fi
        sleep 0.05
    done
    if [ "$ready" != 1 ]; then
        civic_err "pcscd did not create /run/pcscd/pcscd.comm and listen on ports" \
            "${CIVIC_PORTS[*]} within ${secs}s"
        civic__tail "$dir/pcscd.log"
        return 1
    fi
    civic_log "pcscd running (pid $CIVIC_PCSCD_PID), readers: $(printf '"%s" ' "${CIVIC_READERS[@]}")"
}

# ---------------------------------------------------------------------------------------
# Cards

# Exit 0 when pcscd reports a card present in READER (status only: does not connect, so a
# frozen card does not hang it; bounded by timeout anyway).
civic_reader_has_card() {
    timeout 5 "$CIVIC_PYTHON" - "$1" <<'EOF' >/dev/null 2>&1
import sys
from smartcard.scard import (SCardEstablishContext, SCardGetStatusChange, SCardListReaders,
    SCardReleaseContext, SCARD_SCOPE_USER, SCARD_STATE_UNAWARE, SCARD_STATE_PRESENT)
hr, ctx = SCardEstablishContext(SCARD_SCOPE_USER)
if hr != 0:
    sys.exit(2)
hr, readers = SCardListReaders(ctx, [])
if hr != 0 or sys.argv[1] not in readers:
    sys.exit(3)
hr, states = SCardGetStatusChange(ctx, 0, [(sys.argv[1], SCARD_STATE_UNAWARE)])
SCardReleaseContext(ctx)
sys.exit(0 if hr == 0 and states[0][1] & SCARD_STATE_PRESENT else 1)
EOF
}

civic__reader_for_port() {
    local i
    for i in "${!CIVIC_PORTS[@]}"; do
        if [ "${CIVIC_PORTS[$i]}" = "$1" ]; then
            printf '%s\n' "${CIVIC_READERS[$i]}"
            return 0
        fi
    done
    return 1
}

civic_start_card() {
    local state="${1:?usage: civic_start_card STATEFILE PORT [NAME]}"
    local port="${2:?usage: civic_start_card STATEFILE PORT [NAME]}"
    local name="${3:-card-$port}" bin reader log pid i secs
    local extra=()
    if [ "$#" -gt 3 ]; then extra=("${@:4}"); fi
    secs="$(civic__wait_secs)"
    bin="${CIVIC_BIN_DIR:-$CIVIC_REPO_ROOT/target/release}/civic-card"
    [ -x "$bin" ] || { civic_err "civic-card not found at $bin (cargo build --release --bins, or set CIVIC_BIN_DIR)"; return 1; }
    reader="$(civic__reader_for_port "$port")" \
        || { civic_err "port $port is not one of ours (${CIVIC_PORTS[*]})"; return 1; }
    if [ -n "${CIVIC_CARD_PIDS[$name]:-}" ] && civic__alive "${CIVIC_CARD_PIDS[$name]}"; then
        civic_err "card '$name' is already running (pid ${CIVIC_CARD_PIDS[$name]})"
        return 1
    fi
    log="${CIVIC_PCSCD_DIR:-${TMPDIR:-/tmp}}/$name.log"
    "$bin" --state "$state" --vpcd-host 127.0.0.1 --vpcd-port "$port" ${extra[@]+"${extra[@]}"} \
        >"$log" 2>&1 </dev/null &
    pid=$!
    CIVIC_CARD_PIDS[$name]=$pid
    CIVIC_CARD_LOGS[$name]=$log
    CIVIC_CARD_ORDER+=("$name")

    for ((i = 0; i < secs * 20; i++)); do
        if ! civic__alive "$pid"; then
            civic_err "card '$name' exited during start-up"
            civic__tail "$log"
            return 1
        fi
        grep -q 'civic-card: connected to' "$log" 2>/dev/null && break
        sleep 0.05
    done
    grep -q 'civic-card: connected to' "$log" 2>/dev/null || {
        civic_err "card '$name' did not connect to vpcd port $port within ${secs}s"
        civic__tail "$log"
        return 1
    }
    # pcscd polls presence every 400 ms.
    for ((i = 0; i < secs * 5; i++)); do
        civic_reader_has_card "$reader" && {
            civic_log "card '$name' (pid $pid) is in reader \"$reader\""
            return 0
        }
        sleep 0.2
    done
    civic_err "pcscd does not show card '$name' in reader \"$reader\" after ${secs}s"
    civic__tail "$log"
    [ -n "$CIVIC_PCSCD_DIR" ] && civic__tail "$CIVIC_PCSCD_DIR/pcscd.log"
    return 1
}

civic_stop_card() {
    local name="${1:?usage: civic_stop_card NAME [SIGNAL]}" sig="${2:-TERM}" pid
    pid="${CIVIC_CARD_PIDS[$name]:-}"
    [ -n "$pid" ] || { civic_err "no card named '$name'"; return 1; }
    civic__terminate "$pid" "$sig" 5
    unset "CIVIC_CARD_PIDS[$name]"
    # pcscd polls every 400 ms; a card restarted within that window can leave the slot at
    # "no card" (NOTES-pcsc.md). Give it a poll before anyone reconnects.
    sleep 1
}

# ---------------------------------------------------------------------------------------
# Clean-up

civic_stop_all() {
    local rc=0 name pid
    for name in "${CIVIC_CARD_ORDER[@]}"; do
        pid="${CIVIC_CARD_PIDS[$name]:-}"
        [ -n "$pid" ] || continue
        civic__terminate "$pid" TERM 5 || rc=1
        unset "CIVIC_CARD_PIDS[$name]"
    done
    CIVIC_CARD_ORDER=()
    if [ -n "${CIVIC_ANVIL_PID:-}" ]; then
        civic__terminate "$CIVIC_ANVIL_PID" TERM 5 || rc=1
        CIVIC_ANVIL_PID=""
    fi
    if [ -n "$CIVIC_PCSCD_PID" ]; then
        if civic__terminate "$CIVIC_PCSCD_PID" TERM 5; then
            rm -rf /run/pcscd
        else
            rc=1
        fi
        CIVIC_PCSCD_PID=""
    fi
    return "$rc"
}

civic__on_signal() {
    local code="$1"
    trap - INT TERM
    civic_err "interrupted: stopping everything"
    civic_stop_all || true
    exit "$code"
}

civic__on_exit() {
    local rc=$?
    civic_stop_all || true
    return "$rc"
}

# Stop everything we started on exit (any exit status), Ctrl-C or SIGTERM.
civic_setup_traps() {
    trap civic__on_exit EXIT
    trap 'civic__on_signal 130' INT
    trap 'civic__on_signal 143' TERM
}

# cargo-fuzz, from crates.io (scripts/fuzz). It drives libFuzzer through nightly-only rustc flags
# (-Zsanitizer=address and friends); the machine has one stable toolchain, so scripts/fuzz runs
# it with RUSTC_BOOTSTRAP=1 instead of a nightly.
civic_install_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return 0
    fi
    civic_log "installing cargo-fuzz from crates.io"
    cargo install --locked cargo-fuzz
}

# ---------------------------------------------------------------------------------------
# The EVM backend's npm packages (issue 5)
#
#   civic_install_npm               node + npm from Debian if missing, then the pinned solc and
#                                   anvil of registry/contracts/package-lock.json (npm ci
#                                   --ignore-scripts: the anvil binary ships inside its
#                                   platform package, no install script runs). Sets CIVIC_ANVIL.

civic_install_npm() {
    local dir="$CIVIC_REPO_ROOT/registry/contracts"
    # By command, not by package: a nodejs that bundles npm (as on these machines) conflicts
    # with Debian's separate npm package.
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        civic_log "installing nodejs and npm"
        civic__sudo apt-get update -qq
        civic__sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    local anvil="$dir/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    # npm ci removes and reinstalls node_modules; skip it when the lockfile is already installed.
    if [ ! -x "$anvil" ] || [ ! -f "$dir/node_modules/.package-lock.json" ] ||
        [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        civic_log "npm ci --ignore-scripts in registry/contracts (solc, anvil)"
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || return 1
    fi
    [ -x "$anvil" ] || {
        civic_err "anvil missing at $anvil after npm ci"
        return 1
    }
    export CIVIC_ANVIL="$anvil"
    civic_install_desk_browser
}

# civic_start_anvil LOG: start the local chain ($CIVIC_ANVIL, from civic_install_npm) on
# 127.0.0.1, port chosen by the kernel; sets CIVIC_ANVIL_URL and CIVIC_ANVIL_PID (civic_stop_all
# stops it by that PID). anvil prints nothing with --silent, so its stdout goes to LOG and the
# port is read from its "Listening on" line.
CIVIC_ANVIL_PID=""
civic_start_anvil() {
    local log="$1" i
    [ -x "${CIVIC_ANVIL:-}" ] || {
        civic_err "CIVIC_ANVIL is not set or not executable: run civic_install_npm first"
        return 1
    }
    "$CIVIC_ANVIL" --host 127.0.0.1 --port 0 >"$log" 2>&1 &
    CIVIC_ANVIL_PID=$!
    for i in $(seq 1 200); do
        CIVIC_ANVIL_URL="$(sed -n 's/^Listening on \([0-9.]*:[0-9]*\).*/http:\/\/\1/p' "$log" | head -n1)"
        if [ -n "$CIVIC_ANVIL_URL" ]; then
            civic_log "anvil (pid $CIVIC_ANVIL_PID) listening on $CIVIC_ANVIL_URL"
            export CIVIC_ANVIL_URL
            return 0
        fi
        kill -0 "$CIVIC_ANVIL_PID" 2>/dev/null || break
        sleep 0.05
    done
    civic_err "anvil did not start (after ${i} tries); its output:"
    cat "$log" >&2
    return 1
}

# ---------------------------------------------------------------------------------------
# The desk's browser tests (issue 9)
#
#   civic_install_desk_browser      the pinned playwright-core of tests/browser/package-lock.json
#                                   (npm ci --ignore-scripts: it drives Debian's /usr/bin/chromium,
#                                   from civic_install_packages, and downloads no browser).
#                                   Called by civic_install_npm.

civic_install_desk_browser() {
    local dir="$CIVIC_REPO_ROOT/tests/browser"
    if [ ! -f "$dir/node_modules/playwright-core/package.json" ] ||
        [ ! -f "$dir/node_modules/.package-lock.json" ] ||
        [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        civic_log "npm ci --ignore-scripts in tests/browser (playwright-core)"
        (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || return 1
    fi
    [ -x /usr/bin/chromium ] || {
        civic_err "/usr/bin/chromium missing: Debian's chromium (civic_install_packages) installs it"
        return 1
    }
}
