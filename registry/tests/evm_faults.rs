//! Faults of the EVM backend against a real local chain (anvil, one per test, stopped by PID):
//! node down, a transaction the contract refuses (named custom error, nothing advances), a wrong
//! chain id or contract address, an account the chain does not know.

#![cfg(feature = "evm")]
#![allow(clippy::unwrap_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use civic_registry::evm::{
    self, default_anvil_path, EthKey, EvmConfig, EvmRegistry, LocalNode, Signers, DEV_ACCOUNT_0,
    LOCAL_CHAIN_ID,
};
use civic_registry::keys::{self, SigningKey};
use civic_registry::*;

const YEAR: u64 = 365 * 24 * 3600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Fixture {
    node: LocalNode,
    cfg: EvmConfig,
    authority: SigningKey,
    issuer_key: SigningKey,
    issuer_account: EthKey,
}

/// A fresh chain with the contract deployed and issuer "health" registered with its own account.
fn fixture() -> Fixture {
    let node = LocalNode::start(&default_anvil_path(), &[]).unwrap();
    let admin = EthKey::from_hex(DEV_ACCOUNT_0).unwrap();
    let authority = keys::generate();
    let mut cfg = EvmConfig::new(node.url(), LOCAL_CHAIN_ID, Default::default());
    cfg.contract = evm::deploy(&cfg, &admin, authority.verifying_key())
        .unwrap()
        .contract
        .unwrap();
    let issuer_key = keys::generate();
    let issuer_account = EthKey::generate();
    node.fund(issuer_account.address()).unwrap();
    let mut signers = Signers {
        authority: Some(admin),
        ..Default::default()
    };
    signers
        .accounts
        .insert("health".into(), issuer_account.address());
    let mut reg = EvmRegistry::open(cfg.clone(), signers).unwrap();
    let t = now();
    reg.register_issuer(
        &IssuerCertificate::sign(
            &IssuerCertBody {
                issuer_id: "health".into(),
                name: "health bureau".into(),
                kinds: vec![Kind::Health],
                public_key: keys::public_key_bytes(issuer_key.verifying_key()).to_vec(),
                not_before: t - YEAR,
                not_after: t + YEAR,
            },
            &authority,
        )
        .unwrap(),
    )
    .unwrap();
    Fixture {
        node,
        cfg,
        authority,
        issuer_key,
        issuer_account,
    }
}

fn issuer_client(f: &Fixture, account: EthKey) -> EvmRegistry {
    let mut signers = Signers::default();
    signers.issuers.insert("health".into(), account);
    EvmRegistry::open(f.cfg.clone(), signers).unwrap()
}

fn anchor(first: u32, key: &SigningKey) -> SignedAnchor {
    SignedAnchor::sign(
        &AnchorRequest {
            issuer_id: "health".into(),
            root: [first as u8 + 1; 32],
            size: 2,
            first_status_index: first,
            status_count: 2,
        },
        key,
    )
    .unwrap()
}

#[test]
fn anchor_from_an_account_the_chain_does_not_know_is_refused_by_name_and_nothing_advances() {
    let f = fixture();
    // The office signs with the issuer's real P-256 key (so every off-chain rule passes) but
    // sends from an Ethereum account the authority never registered.
    let stranger = EthKey::generate();
    f.node.fund(stranger.address()).unwrap();
    let mut office = issuer_client(&f, stranger);
    let before = office.watermark().unwrap();
    let err = office.anchor_batch(&anchor(0, &f.issuer_key)).unwrap_err();
    assert!(matches!(err, Error::Reverted(_)), "{err}");
    assert!(err.to_string().contains("NotIssuerAccount"), "{err}");
    // Nothing was mined and nothing was recorded.
    assert_eq!(office.watermark().unwrap(), before);
    assert_eq!(office.batch(1).unwrap(), None);
    assert_eq!(office.next_status_index("health").unwrap(), 0);

    // The registered account anchors the same request fine.
    let mut office = issuer_client(&f, f.issuer_account.clone());
    let b = office.anchor_batch(&anchor(0, &f.issuer_key)).unwrap();
    assert_eq!(b.batch_id, 1);
    assert_eq!(office.watermark().unwrap().height, before.height + 1);
}

#[test]
fn administration_from_a_non_authority_account_is_refused_by_name() {
    let f = fixture();
    let other = EthKey::generate();
    f.node.fund(other.address()).unwrap();
    let mut signers = Signers {
        authority: Some(other),
        ..Default::default()
    };
    signers
        .accounts
        .insert("edu".into(), EthKey::generate().address());
    let mut reg = EvmRegistry::open(f.cfg.clone(), signers).unwrap();
    let key = keys::generate();
    let t = now();
    let cert = IssuerCertificate::sign(
        &IssuerCertBody {
            issuer_id: "edu".into(),
            name: "edu bureau".into(),
            kinds: vec![Kind::Education],
            public_key: keys::public_key_bytes(key.verifying_key()).to_vec(),
            not_before: t - YEAR,
            not_after: t + YEAR,
        },
        &f.authority,
    )
    .unwrap();
    let before = reg.watermark().unwrap();
    let err = reg.register_issuer(&cert).unwrap_err();
    assert!(err.to_string().contains("NotAuthority"), "{err}");
    assert!(reg.issuer_certs("edu").unwrap().is_empty());
    assert_eq!(reg.watermark().unwrap(), before);
}

#[test]
fn a_request_the_issuer_did_not_sign_never_reaches_the_chain() {
    let f = fixture();
    let mut office = issuer_client(&f, f.issuer_account.clone());
    let before = office.watermark().unwrap();
    let err = office
        .anchor_batch(&anchor(0, &keys::generate()))
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature(_)), "{err}");
    assert_eq!(office.watermark().unwrap(), before);
}

#[test]
fn node_down_is_a_clear_error() {
    let f = fixture();
    let office = issuer_client(&f, f.issuer_account.clone());
    let url = f.cfg.rpc_url.clone();
    drop(f.node);
    let err = office.watermark().unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    let err = EvmRegistry::open(f.cfg.clone(), Signers::default()).unwrap_err();
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
}

#[test]
fn wrong_chain_id_or_contract_address_is_refused_on_open() {
    let f = fixture();
    let mut cfg = f.cfg.clone();
    cfg.chain_id = 1;
    let err = EvmRegistry::open(cfg, Signers::default()).unwrap_err();
    assert!(matches!(err, Error::WrongChain(_)), "{err}");
    assert!(err.to_string().contains("chain id 31337"), "{err}");

    // An address with no code, and an account that is not a contract (dev account #0).
    for addr in [
        "0x00000000000000000000000000000000000000aa",
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    ] {
        let mut cfg = f.cfg.clone();
        cfg.contract = addr.parse().unwrap();
        let err = EvmRegistry::open(cfg, Signers::default()).unwrap_err();
        assert!(matches!(err, Error::WrongChain(_)), "{addr}: {err}");
    }
    // A transaction signed for another chain id is refused by the node, not mined.
    let mut cfg = f.cfg.clone();
    cfg.chain_id = 1;
    let err = evm::deploy(
        &cfg,
        &EthKey::from_hex(DEV_ACCOUNT_0).unwrap(),
        f.authority.verifying_key(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongChain(_)), "{err}");
}

#[test]
fn retired_key_is_refused_and_the_mirror_agrees_with_contract_storage() {
    let f = fixture();
    let mut admin = EvmRegistry::open(
        f.cfg.clone(),
        Signers {
            authority: Some(EthKey::from_hex(DEV_ACCOUNT_0).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut office = issuer_client(&f, f.issuer_account.clone());
    office.anchor_batch(&anchor(0, &f.issuer_key)).unwrap();
    let t = now();
    admin
        .retire_issuer_key(
            &KeyRetirement::sign(
                &KeyRetirementBody {
                    issuer_id: "health".into(),
                    public_key: keys::public_key_bytes(f.issuer_key.verifying_key()).to_vec(),
                    from: t - 10,
                    reason: "key lost".into(),
                },
                &f.authority,
            )
            .unwrap(),
        )
        .unwrap();
    let err = office.anchor_batch(&anchor(2, &f.issuer_key)).unwrap_err();
    assert!(matches!(err, Error::NotAuthorised(_)), "{err}");
    let report = office.verify_chain().unwrap();
    assert_eq!(report.batches, 1);
    assert_eq!(report.retired_keys, 1);
}

/// A reader that waits for confirmations never sees a block that is later reorganised away; one
/// that reads the newest block (0 confirmations) and then sees it replaced reports the
/// reorganisation instead of answering from it.
#[test]
fn reorganised_block_never_reaches_a_confirming_mirror() {
    let f = fixture();
    let reader = |confirmations: u64| {
        let mut cfg = f.cfg.clone();
        cfg.confirmations = confirmations;
        EvmRegistry::open(cfg, Signers::default()).unwrap()
    };
    // The issuer's registration 3 blocks deep first: a confirming office acts on confirmed state
    // only (before that its checks say the issuer is unknown).
    for _ in 0..3 {
        f.node.call("evm_mine", serde_json::json!([])).unwrap();
    }
    let eager = reader(0);
    let careful = reader(3);
    let careful_before = careful.watermark().unwrap();

    let snapshot = f.node.call("evm_snapshot", serde_json::json!([])).unwrap();
    // An office that itself waits for 3 confirmations still gets its anchor's record at once.
    let mut office = {
        let mut cfg = f.cfg.clone();
        cfg.confirmations = 3;
        let mut signers = Signers::default();
        signers
            .issuers
            .insert("health".into(), f.issuer_account.clone());
        EvmRegistry::open(cfg, signers).unwrap()
    };
    let b = office.anchor_batch(&anchor(0, &f.issuer_key)).unwrap();
    assert_eq!(b.batch_id, 1);
    assert_eq!(office.batch(1).unwrap(), None, "not 3 blocks deep yet");
    assert_eq!(eager.batch(b.batch_id).unwrap(), Some(b.clone()));
    // Not yet 3 blocks deep: the careful reader does not know it.
    assert_eq!(careful.batch(1).unwrap(), None);
    assert!(careful.watermark().unwrap().height < b.height);

    // Reorganise: drop the anchor's block and mine a longer chain without it.
    assert_eq!(
        f.node
            .call("evm_revert", serde_json::json!([snapshot]))
            .unwrap(),
        serde_json::json!(true)
    );
    for _ in 0..5 {
        f.node.call("evm_mine", serde_json::json!([])).unwrap();
    }
    let err = eager.watermark().unwrap_err();
    assert!(matches!(err, Error::ChainBroken { .. }), "{err}");
    assert!(err.to_string().contains("reorganised"), "{err}");
    // The careful reader moves on over the new chain and never saw the anchor.
    let wm = careful.watermark().unwrap();
    assert!(wm.height > careful_before.height);
    assert_eq!(careful.batch(1).unwrap(), None);
    assert_eq!(careful.next_status_index("health").unwrap(), 0);
}

/// An issuer account that bypasses the backend and puts on chain an anchor whose root is not
/// the one its issuer signed: the contract accepts it (it cannot check P-256 signatures), but
/// every reader's replay refuses the event and names its block, instead of answering from it.
#[test]
fn event_that_does_not_match_its_signed_request_breaks_every_reader() {
    use civic_registry::evm::abi::CivicRegistry;
    use civic_registry::evm::key_hash;

    let f = fixture();
    let office = issuer_client(&f, f.issuer_account.clone());
    let signed = anchor(0, &f.issuer_key);
    let input = civic_registry::evm::SolCall::abi_encode(&CivicRegistry::anchorCall {
        root: [0xEE; 32].into(),
        size: 2,
        first: 0,
        count: 2,
        keyHash: key_hash(&keys::public_key_bytes(f.issuer_key.verifying_key())),
        request: signed.to_bytes().into(),
    });
    let receipt = office
        .call_contract(&f.issuer_account, input)
        .expect("the contract itself accepts it");
    let err = office.watermark().unwrap_err();
    match &err {
        Error::ChainBroken { height, reason } => {
            assert_eq!(*height, receipt.block);
            assert!(reason.contains("does not match the signed"), "{reason}");
        }
        other => panic!("{other}"),
    }
    let err = EvmRegistry::open(f.cfg.clone(), Signers::default()).unwrap_err();
    assert!(matches!(err, Error::ChainBroken { .. }), "{err}");
}

/// The contract's own checks, reached directly: a key the authority never registered for the
/// issuer, a status change on an index the issuer never anchored, each refused by name and not
/// mined.
#[test]
fn contract_refuses_unregistered_key_and_unanchored_index_by_name() {
    use civic_registry::evm::abi::CivicRegistry;
    use civic_registry::evm::{key_hash, SolCall};

    let f = fixture();
    let office = issuer_client(&f, f.issuer_account.clone());
    let before = office.watermark().unwrap();
    let stranger_key = keys::generate();
    let input = CivicRegistry::anchorCall {
        root: [1; 32].into(),
        size: 1,
        first: 0,
        count: 1,
        keyHash: key_hash(&keys::public_key_bytes(stranger_key.verifying_key())),
        request: anchor(0, &stranger_key).to_bytes().into(),
    }
    .abi_encode();
    let err = office.call_contract(&f.issuer_account, input).unwrap_err();
    assert!(matches!(err, Error::Reverted(_)), "{err}");
    assert!(err.to_string().contains("KeyNotAuthorised"), "{err}");

    let input = CivicRegistry::setStatusCall {
        batchId: 1,
        index: 0,
        newStatus: 2,
        keyHash: key_hash(&keys::public_key_bytes(f.issuer_key.verifying_key())),
        request: vec![0xA0].into(),
    }
    .abi_encode();
    let err = office.call_contract(&f.issuer_account, input).unwrap_err();
    assert!(err.to_string().contains("UnknownBatch"), "{err}");
    assert_eq!(office.watermark().unwrap(), before);
}

/// Terminal revocation on chain: the authority's account lists a terminal once, every reader
/// sees it with its reason; a second revocation and one from an issuer's account are refused by
/// name.
#[test]
fn revoked_terminals_are_listed_once_and_only_by_the_authority() {
    let f = fixture();
    let mut admin = EvmRegistry::open(
        f.cfg.clone(),
        Signers {
            authority: Some(EthKey::from_hex(DEV_ACCOUNT_0).unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    admin
        .revoke_terminal("clinic-07", "stolen from the ward")
        .unwrap();
    let err = admin.revoke_terminal("clinic-07", "again").unwrap_err();
    assert!(err.to_string().contains("TerminalAlreadyRevoked"), "{err}");
    let mut not_admin = EvmRegistry::open(
        f.cfg.clone(),
        Signers {
            authority: Some(f.issuer_account.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let err = not_admin.revoke_terminal("clinic-08", "x").unwrap_err();
    assert!(err.to_string().contains("NotAuthority"), "{err}");
    let reader = EvmRegistry::open(f.cfg.clone(), Signers::default()).unwrap();
    let list = reader.revoked_terminals().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list["clinic-07"].0, "stolen from the ward");
}
