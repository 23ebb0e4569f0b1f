//! The office and clinic workflows on the EVM backend: `civic registry deploy` writes
//! evm.json, and from then on every command reads and writes the registry contract on a real
//! local chain (anvil on 127.0.0.1 port 0, stopped by PID when the test ends), with the card
//! behind a real pcscd + vpcd.

use std::path::Path;

use anyhow::{ensure, Context as _, Result};
use civic_e2e::{pcscd, run_civic, serial, VirtualCard};
use civic_registry::evm::{default_anvil_path, EthKey, LocalNode, DEV_ACCOUNT_0};

const PIN: &str = "482913";
const CARD: &str = "CIV-2026-0000-0001";
const CARD_2: &str = "CIV-2026-0000-0002";

struct Ran {
    code: i32,
    out: String,
}

fn civic(home: &Path, args: &[&str], stdin: Option<&str>) -> Result<Ran> {
    let home = home.display().to_string();
    let out = run_civic(args, stdin, &[("CIVIC_HOME", home.as_str())])?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn expect(home: &Path, code: i32, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let r = civic(home, args, stdin)?;
    ensure!(
        r.code == code,
        "`civic {}` exited {} (wanted {code}):\n{}",
        args.join(" "),
        r.code,
        r.out
    );
    Ok(r.out)
}

fn citizen(home: &Path, card_id: &str) -> Result<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/data/alice.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src)?)?;
    v["card_id"] = card_id.into();
    let p = home.join(format!("{card_id}.json"));
    std::fs::write(&p, v.to_string())?;
    Ok(p.display().to_string())
}

fn verdicts(scan: &serde_json::Value) -> Vec<String> {
    scan["credentials"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "{}={}",
                        c["kind"].as_str().unwrap_or("?"),
                        c["verdict"].as_str().unwrap_or("not read")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn office_and_clinic_workflows_run_on_the_chain_and_a_reverted_anchor_writes_nothing() -> Result<()>
{
    let _lock = serial();
    pcscd();
    let node = LocalNode::start(&default_anvil_path(), &[])?;
    let home_dir = tempfile::Builder::new()
        .prefix("civic-evm-home-")
        .tempdir()?;
    let h = home_dir.path();
    expect(h, 0, &["authority", "init"], None)?;
    // `authority init` writes the embedded ledger's genesis; after the deploy it must never
    // change again (every write goes to the chain).
    let ledger_bytes = || -> Vec<Vec<u8>> {
        ["registry.sqlite", "registry.sqlite-wal"]
            .iter()
            .map(|f| std::fs::read(h.join(f)).unwrap_or_default())
            .collect()
    };
    let key_file = h.join("authority.eth.key");
    std::fs::write(&key_file, DEV_ACCOUNT_0)?;
    let key_path = key_file.display().to_string();
    expect(
        h,
        0,
        &[
            "registry",
            "deploy",
            "--rpc-url",
            node.url(),
            "--chain-id",
            "31337",
            "--signer-key-file",
            &key_path,
        ],
        None,
    )?;

    let ledger_at_deploy = ledger_bytes();

    // Issuers: each gets its own Ethereum account (key in issuers/<id>.eth.key, never printed);
    // the operator funds it (here anvil_setBalance).
    for (id, name, kind) in [
        ("identity-bureau", "City Identity Bureau", "identity"),
        ("health-bureau", "City Health Bureau", "health,emergency"),
        ("education-bureau", "City Education Bureau", "education"),
    ] {
        let out = expect(
            h,
            0,
            &["issuer", "add", "--id", id, "--name", name, "--kinds", kind],
            None,
        )?;
        let account = EthKey::from_file(&h.join(format!("issuers/{id}.eth.key")))?;
        ensure!(out.contains(&account.address().to_string()), "{out}");
        let hex = account.to_hex();
        ensure!(
            !out.contains(hex.trim_start_matches("0x")),
            "key printed: {out}"
        );
        node.fund(account.address())?;
    }
    let list = expect(h, 0, &["issuer", "list"], None)?;
    ensure!(list.contains("health-bureau"), "{list}");
    for (id, role) in [("office-01", "issuing-office"), ("clinic-01", "clinic")] {
        expect(
            h,
            0,
            &["terminal", "enroll", "--id", id, "--role", role],
            None,
        )?;
    }

    // Provision, scan, revoke, scan again: every registry read and write on the chain.
    let card = VirtualCard::blank(0)?;
    let reader = card.reader();
    let alice = citizen(h, CARD)?;
    let out = expect(
        h,
        0,
        &[
            "provision",
            "--reader",
            &reader,
            "--citizen",
            &alice,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    ensure!(out.contains(CARD) && out.contains("anchored"), "{out}");
    let scan: serde_json::Value = serde_json::from_str(&expect(
        h,
        0,
        &["--json", "scan", "--reader", &reader],
        None,
    )?)
    .context("scan --json")?;
    ensure!(scan["valid"] == true, "{scan}");
    expect(
        h,
        0,
        &["revoke", "--card-id", CARD, "--kind", "health"],
        None,
    )?;
    let scan: serde_json::Value = serde_json::from_str(&expect(
        h,
        1,
        &[
            "--json",
            "scan",
            "--reader",
            &reader,
            "--consent",
            "--pin-stdin",
        ],
        Some(PIN),
    )?)?;
    let v = verdicts(&scan);
    ensure!(v.contains(&"health=revoked".to_owned()), "{v:?}");
    ensure!(v.contains(&"identity=valid".to_owned()), "{v:?}");

    // Key rotation and retirement are recorded on the chain too.
    expect(
        h,
        0,
        &["issuer", "rotate", "--id", "education-bureau"],
        None,
    )?;
    let status = expect(h, 0, &["registry", "verify"], None)?;
    ensure!(
        status.contains("0x") || status.contains("block"),
        "{status}"
    );

    ensure!(
        ledger_bytes() == ledger_at_deploy,
        "the embedded ledger was written"
    );

    // The clinic cache follows the chain: a sync brings it to the head.
    let out = expect(h, 0, &["registry", "sync"], None)?;
    ensure!(out.contains("Cache OK: 3 issuers"), "{out}");

    // An issuer sending from an account the authority never registered: the contract refuses
    // the anchor by name, the second card gets no credential, the office book records nothing.
    let stranger = EthKey::generate();
    node.fund(stranger.address())?;
    std::fs::write(
        h.join("issuers/identity-bureau.eth.key"),
        stranger.to_hex().as_bytes(),
    )?;
    // A status change sent from that account is refused by name too; the status stays.
    let r = civic(
        h,
        &["revoke", "--card-id", CARD, "--kind", "identity"],
        None,
    )?;
    ensure!(
        r.code == 3 && r.out.contains("NotIssuerAccount"),
        "revoke from an unregistered account exited {}:\n{}",
        r.code,
        r.out
    );
    let scan: serde_json::Value =
        serde_json::from_str(&civic(h, &["--json", "scan", "--reader", &reader], None)?.out)?;
    ensure!(
        verdicts(&scan).contains(&"identity=valid".to_owned()),
        "{scan}"
    );
    let card2 = VirtualCard::blank(1)?;
    let reader2 = card2.reader();
    let bob = citizen(h, CARD_2)?;
    let r = civic(
        h,
        &[
            "provision",
            "--reader",
            &reader2,
            "--citizen",
            &bob,
            "--pin-stdin",
        ],
        Some(PIN),
    )?;
    ensure!(r.code == 3, "provision exited {}:\n{}", r.code, r.out);
    ensure!(
        r.out.contains("refused by the registry contract") && r.out.contains("NotIssuerAccount"),
        "{}",
        r.out
    );
    let r = civic(
        h,
        &["revoke", "--card-id", CARD_2, "--kind", "identity"],
        None,
    )?;
    ensure!(
        r.code == 3 && r.out.contains("no record"),
        "the book recorded the failed card:\n{}",
        r.out
    );
    // The card holds no credential: a scan finds nothing valid on it.
    let r = civic(h, &["--json", "scan", "--reader", &reader2], None)?;
    ensure!(
        r.code != 0,
        "the half-provisioned card scans valid:\n{}",
        r.out
    );

    // The clinic cache (built by the first scan from the chain's verified events) answers as
    // the chain does.
    let live = civic(h, &["--json", "scan", "--reader", &reader], None)?;
    let live_json: serde_json::Value = serde_json::from_str(&live.out)?;
    let out = expect(h, 0, &["registry", "sync"], None)?;
    ensure!(out.contains("Cache OK"), "{out}");
    let offline = civic(
        h,
        &["--json", "scan", "--cache-only", "--reader", &reader],
        None,
    )?;
    let offline_json: serde_json::Value = serde_json::from_str(&offline.out)?;
    ensure!(
        offline.code == live.code && verdicts(&offline_json) == verdicts(&live_json),
        "cache scan exited {} with {:?}, live {} with {:?}",
        offline.code,
        verdicts(&offline_json),
        live.code,
        verdicts(&live_json)
    );

    // The node goes away. Without a cache: a clear error naming it, exit 3.
    let pid = node.pid();
    drop(node);
    ensure!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "anvil {pid} still running"
    );
    let aside = h.join("cache.sqlite.aside");
    std::fs::rename(h.join("cache.sqlite"), &aside)?;
    let r = civic(h, &["--json", "scan", "--reader", &reader], None)?;
    ensure!(
        r.code == 3 && r.out.contains("registry node unreachable"),
        "scan with the node down exited {}:\n{}",
        r.code,
        r.out
    );
    // With the cache: the scan falls back to it and says so, with the exit code and verdicts
    // of an offline scan.
    std::fs::rename(&aside, h.join("cache.sqlite"))?;
    let r = civic(h, &["scan", "--reader", &reader], None)?;
    ensure!(
        r.code == offline.code
            && r.out
                .contains("registry node unreachable: status as of block")
            && r.out.contains("ago (clinic cache)"),
        "scan with the node down and a cache exited {}:\n{}",
        r.code,
        r.out
    );
    let r = civic(h, &["--json", "scan", "--reader", &reader], None)?;
    let fallback: serde_json::Value =
        serde_json::from_str(r.out.split("\ncivic: note:").next().unwrap_or_default())?;
    ensure!(
        fallback["freshness"]["source"] == "cache"
            && verdicts(&fallback) == verdicts(&offline_json),
        "{fallback}"
    );
    Ok(())
}
