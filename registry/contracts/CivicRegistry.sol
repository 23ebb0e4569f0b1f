// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Civic Card registry on an EVM chain (issue 5).
///
/// The same trust model as the embedded ledger (registry/src/ledger.rs), split between what a
/// contract can enforce and what only a P-256 verifier can check:
///
/// - The authority (the deploying account) administers issuers: it registers each issuer
///   certificate with the issuer's Ethereum account, allowed kinds and key validity window,
///   registers rotated keys the same way, retires keys, and revokes terminals.
/// - Each issuer sends its anchors and status changes from its own registered account. The
///   contract checks the account, that the P-256 key the issuer names (by hash) is registered for
///   it, inside its validity window and not retired, that status indices were anchored by that
///   issuer, and that no request is recorded twice.
/// - Every event also carries the signed COSE bytes it stands for (issuer certificate, key
///   retirement, anchor / status request). The EVM has no P-256 precompile before RIP-7212, so
///   the contract cannot check those signatures: every reader (the backend and the clinic cache)
///   replays the events through the same rules and signature checks as ledger blocks
///   (ledger::validate), so an answer rests on the chain AND the signatures.
///
/// Deliberate differences from the ledger, each refused with its own custom error:
/// - Status ranges of one issuer must be anchored in ascending order (`first` at or above the
///   issuer's next free index): an O(1) overlap check instead of a scan of every batch.
/// - A status change names the batch that anchored its index, so ownership is one lookup.
///
/// Status words: 2 bits per index (0 valid, 1 suspended, 2 revoked), 128 indices per 256-bit
/// word, index i in word i / 128 at bit 2 * (i % 128).
contract CivicRegistry {
    /// Status indices stay below this, as in the ledger (ledger::MAX_STATUS_INDEX).
    uint32 public constant MAX_STATUS_INDEX = 1 << 26;
    /// The most changes one status batch carries (crate::MAX_BATCH_CHANGES).
    uint256 public constant MAX_BATCH_CHANGES = 100000;

    struct Key {
        bytes32 keyHash; // keccak256 of the 65-byte SEC1 P-256 public key
        uint64 notBefore; // unix seconds, inclusive
        uint64 notAfter; // unix seconds, inclusive
        uint64 retiredFrom; // 0 = not retired; else unix seconds, inclusive
    }

    struct Issuer {
        address account;
        uint8 kinds; // bit k = credential::Kind with discriminant k
        uint32 nextIndex; // one past the highest status index anchored
        Key[] keys;
    }

    struct Batch {
        bytes32 issuer; // keccak256 of the issuer id
        bytes32 root;
        uint64 size;
        uint32 first;
        uint32 count;
        uint64 blockNumber;
        uint64 time;
    }

    address public immutable authority;
    /// The authority's 65-byte SEC1 P-256 key: the key that signs issuer certificates.
    bytes public authorityKey;
    /// The block that created the contract: readers start their event scan here.
    uint64 public immutable genesisBlock;

    mapping(bytes32 => Issuer) private issuers;
    mapping(address => bytes32) public issuerOfAccount;
    Batch[] private batchList;
    mapping(bytes32 => mapping(uint256 => uint256)) private statusWords;
    mapping(bytes32 => bool) public recorded;
    mapping(bytes32 => uint64) public terminalRevokedAt;

    event RegistryCreated(address indexed authority, bytes authorityKey);
    event IssuerRegistered(bytes32 indexed issuer, address indexed account, bytes32 keyHash, bytes cert);
    event KeyRetired(bytes32 indexed issuer, bytes32 keyHash, uint64 from, bytes retirement);
    event BatchAnchored(uint64 indexed batchId, bytes32 indexed issuer, bytes32 root, uint64 size, uint32 first, uint32 count, bytes request);
    event StatusChanged(bytes32 indexed issuer, uint32 index, uint8 status, bytes request);
    event StatusBatchChanged(bytes32 indexed issuer, uint256 changes, bytes request);
    event TerminalRevoked(bytes32 indexed terminal, string terminalId, string reason);

    error NotAuthority(address sender);
    error NotIssuerAccount(address sender);
    error AccountInUse(address account, bytes32 issuer);
    error AccountMismatch(bytes32 issuer, address registered);
    error BadAuthorityKey();
    error BadValidity(uint64 notBefore, uint64 notAfter);
    error KeyAlreadyRegistered(bytes32 issuer, bytes32 keyHash);
    error UnknownIssuer(bytes32 issuer);
    error UnknownKey(bytes32 issuer, bytes32 keyHash);
    error RetirementNotEarlier(bytes32 keyHash, uint64 retiredFrom);
    error KeyNotAuthorised(bytes32 issuer, bytes32 keyHash);
    error EmptyBatch();
    error IndexOutOfRange(uint64 end);
    error RangeOverlap(uint32 first, uint32 nextIndex);
    error UnknownBatch(uint64 batchId);
    error IndexNotAnchored(uint64 batchId, uint32 index);
    error BadStatus(uint8 status);
    error TooManyChanges(uint256 count);
    error DuplicateIndex(uint32 index);
    error AlreadyRecorded(bytes32 requestHash);
    error TerminalAlreadyRevoked(bytes32 terminal);

    modifier onlyAuthority() {
        if (msg.sender != authority) revert NotAuthority(msg.sender);
        _;
    }

    constructor(bytes memory authorityKey_) {
        if (authorityKey_.length != 65 || authorityKey_[0] != 0x04) revert BadAuthorityKey();
        authority = msg.sender;
        authorityKey = authorityKey_;
        genesisBlock = uint64(block.number);
        emit RegistryCreated(msg.sender, authorityKey_);
    }

    // ------------------------------------------------------------------ authority

    /// Register an issuer certificate (first key, or a rotation to a new key). `cert` is the
    /// authority-signed COSE certificate whose body states the other arguments.
    function registerIssuer(
        bytes32 issuer,
        address account,
        uint8 kinds,
        bytes32 keyHash,
        uint64 notBefore,
        uint64 notAfter,
        bytes calldata cert
    ) external onlyAuthority {
        if (notBefore > notAfter) revert BadValidity(notBefore, notAfter);
        Issuer storage s = issuers[issuer];
        bytes32 owner = issuerOfAccount[account];
        if (account == address(0) || (owner != bytes32(0) && owner != issuer)) {
            revert AccountInUse(account, owner);
        }
        if (s.account != address(0) && s.account != account) revert AccountMismatch(issuer, s.account);
        for (uint256 i = 0; i < s.keys.length; i++) {
            if (s.keys[i].keyHash == keyHash) revert KeyAlreadyRegistered(issuer, keyHash);
        }
        s.account = account;
        s.kinds = kinds;
        s.keys.push(Key(keyHash, notBefore, notAfter, 0));
        issuerOfAccount[account] = issuer;
        emit IssuerRegistered(issuer, account, keyHash, cert);
    }

    /// Retire one key of an issuer from `from` on. A retirement only grows: a key already
    /// retired may only be retired again from an earlier time.
    function retireKey(bytes32 issuer, bytes32 keyHash, uint64 from, bytes calldata retirement)
        external
        onlyAuthority
    {
        Issuer storage s = issuers[issuer];
        if (s.account == address(0)) revert UnknownIssuer(issuer);
        Key storage k = findKey(s, issuer, keyHash);
        if (k.retiredFrom != 0 && from >= k.retiredFrom) revert RetirementNotEarlier(keyHash, k.retiredFrom);
        // `from` 0 would read as "not retired": the earliest representable time is 1.
        k.retiredFrom = from == 0 ? 1 : from;
        emit KeyRetired(issuer, keyHash, from, retirement);
    }

    /// Put a terminal on the revocation list (terminal certificates, issue 3).
    function revokeTerminal(string calldata terminalId, string calldata reason) external onlyAuthority {
        bytes32 t = keccak256(bytes(terminalId));
        if (terminalRevokedAt[t] != 0) revert TerminalAlreadyRevoked(t);
        terminalRevokedAt[t] = uint64(block.timestamp);
        emit TerminalRevoked(t, terminalId, reason);
    }

    // ------------------------------------------------------------------ issuers

    /// Anchor one Merkle batch root covering status indices first..first+count.
    function anchor(bytes32 root, uint64 size, uint32 first, uint32 count, bytes32 keyHash, bytes calldata request)
        external
        returns (uint64 batchId)
    {
        (bytes32 issuer, Issuer storage s) = sender();
        checkKey(s, issuer, keyHash);
        if (size == 0 || count == 0) revert EmptyBatch();
        uint64 end = uint64(first) + uint64(count);
        if (end > MAX_STATUS_INDEX) revert IndexOutOfRange(end);
        if (first < s.nextIndex) revert RangeOverlap(first, s.nextIndex);
        record(request);
        s.nextIndex = uint32(end);
        batchList.push(Batch(issuer, root, size, first, count, uint64(block.number), uint64(block.timestamp)));
        batchId = uint64(batchList.length);
        emit BatchAnchored(batchId, issuer, root, size, first, count, request);
    }

    /// Set one status entry of an index the issuer anchored in batch `batchId`.
    function setStatus(uint64 batchId, uint32 index, uint8 newStatus, bytes32 keyHash, bytes calldata request) external {
        (bytes32 issuer, Issuer storage s) = sender();
        checkKey(s, issuer, keyHash);
        checkAnchored(issuer, batchId, index);
        if (newStatus > 2) revert BadStatus(newStatus);
        record(request);
        writeStatus(issuer, index, newStatus);
        emit StatusChanged(issuer, index, newStatus, request);
    }

    /// Set many status entries in one transaction, all or nothing. Each change packs
    /// batchId << 64 | index << 8 | status, in strictly
    /// ascending index order.
    function setStatusBatch(uint256[] calldata changes, bytes32 keyHash, bytes calldata request) external {
        (bytes32 issuer, Issuer storage s) = sender();
        checkKey(s, issuer, keyHash);
        if (changes.length == 0) revert EmptyBatch();
        if (changes.length > MAX_BATCH_CHANGES) revert TooManyChanges(changes.length);
        record(request);
        for (uint256 i = 0; i < changes.length; i++) {
            uint256 c = changes[i];
            uint64 batchId = uint64(c >> 64);
            uint32 index = uint32(c >> 8);
            uint8 newStatus = uint8(c);
            checkAnchored(issuer, batchId, index);
            if (newStatus > 2) revert BadStatus(newStatus);
            // Strictly ascending indices: no index twice (the ledger refuses that too) in O(1)
            // per change. The COSE request keeps the issuer's order; the sender sorts the list.
            if (i > 0 && index <= uint32(changes[i - 1] >> 8)) revert DuplicateIndex(index);
            writeStatus(issuer, index, newStatus);
        }
        emit StatusBatchChanged(issuer, changes.length, request);
    }

    // ------------------------------------------------------------------ views

    function status(bytes32 issuer, uint32 index) external view returns (uint8) {
        return uint8((statusWords[issuer][index / 128] >> (2 * (index % 128))) & 3);
    }

    function statusWord(bytes32 issuer, uint256 word) external view returns (uint256) {
        return statusWords[issuer][word];
    }

    function batchCount() external view returns (uint64) {
        return uint64(batchList.length);
    }

    function batch(uint64 batchId)
        external
        view
        returns (bytes32 issuer, bytes32 root, uint64 size, uint32 first, uint32 count, uint64 blockNumber, uint64 time)
    {
        if (batchId == 0 || batchId > batchList.length) revert UnknownBatch(batchId);
        Batch storage b = batchList[batchId - 1];
        return (b.issuer, b.root, b.size, b.first, b.count, b.blockNumber, b.time);
    }

    function issuerInfo(bytes32 issuer)
        external
        view
        returns (address account, uint8 kinds, uint32 nextIndex, uint256 keyCount)
    {
        Issuer storage s = issuers[issuer];
        return (s.account, s.kinds, s.nextIndex, s.keys.length);
    }

    function issuerKey(bytes32 issuer, uint256 i) external view returns (Key memory) {
        return issuers[issuer].keys[i];
    }

    // ------------------------------------------------------------------ internal

    function sender() private view returns (bytes32 issuer, Issuer storage s) {
        issuer = issuerOfAccount[msg.sender];
        if (issuer == bytes32(0)) revert NotIssuerAccount(msg.sender);
        s = issuers[issuer];
    }

    function findKey(Issuer storage s, bytes32 issuer, bytes32 keyHash) private view returns (Key storage) {
        for (uint256 i = 0; i < s.keys.length; i++) {
            if (s.keys[i].keyHash == keyHash) return s.keys[i];
        }
        revert UnknownKey(issuer, keyHash);
    }

    function checkKey(Issuer storage s, bytes32 issuer, bytes32 keyHash) private view {
        for (uint256 i = 0; i < s.keys.length; i++) {
            Key storage k = s.keys[i];
            if (k.keyHash == keyHash) {
                bool valid = k.notBefore <= block.timestamp && block.timestamp <= k.notAfter;
                bool retired = k.retiredFrom != 0 && block.timestamp >= k.retiredFrom;
                if (valid && !retired) return;
                break;
            }
        }
        revert KeyNotAuthorised(issuer, keyHash);
    }

    function checkAnchored(bytes32 issuer, uint64 batchId, uint32 index) private view {
        if (batchId == 0 || batchId > batchList.length) revert UnknownBatch(batchId);
        Batch storage b = batchList[batchId - 1];
        if (b.issuer != issuer || index < b.first || uint64(index) >= uint64(b.first) + uint64(b.count)) {
            revert IndexNotAnchored(batchId, index);
        }
    }

    function record(bytes calldata request) private {
        bytes32 h = keccak256(request);
        if (recorded[h]) revert AlreadyRecorded(h);
        recorded[h] = true;
    }

    function writeStatus(bytes32 issuer, uint32 index, uint8 s) private {
        uint256 shift = 2 * (uint256(index) % 128);
        mapping(uint256 => uint256) storage words = statusWords[issuer];
        uint256 w = words[index / 128];
        words[index / 128] = (w & ~(uint256(3) << shift)) | (uint256(s) << shift);
    }
}
