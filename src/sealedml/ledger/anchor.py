"""Anchoring signed tree heads (STHs) of the transparency log on an Ethereum-compatible chain.

An anchor is an ordinary transaction (value 0, sent by the log operator's account to a fixed anchor
address or to itself) whose calldata is the fixed-size, domain-separated encoding::

    b"SMLANCHOR" | version (1) | log_id (32) | tree_size (u64 BE) | root_hash (32) | timestamp_ms (u64 BE)

Nothing is compiled or deployed: the chain only has to keep the calldata, which every full node does.
Once anchored, a log operator who shows two different histories to two people has to put both tree
heads on the chain under its own account, where anyone scanning it (:meth:`ChainAnchor.anchors_for`
and :func:`detect_fork`) sees the fork.

web3.py (and eth-tester for the embedded chain) is an *optional* dependency: this module imports
without it, and only the functions that talk to a chain ask for it (``pip install sealedml[chain]``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from sealedml.errors import ConfigError, InputError, LedgerError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

__all__ = [
    "ANCHOR_FORMAT",
    "DEFAULT_MAX_SCAN_BLOCKS",
    "MAGIC",
    "PAYLOAD_SIZE",
    "VERSION",
    "Anchor",
    "AnchorPayload",
    "ChainAnchor",
    "Fork",
    "assert_no_fork",
    "calldata_gas",
    "decode_payload",
    "detect_fork",
    "encode_payload",
]

MAGIC = b"SMLANCHOR"
VERSION = 1
_LAYOUT = struct.Struct(">9sB32sQ32sQ")
PAYLOAD_SIZE = _LAYOUT.size  # 90 bytes
ANCHOR_FORMAT = "sealedml.anchor/1"
DEFAULT_MAX_SCAN_BLOCKS = 10_000
_U64_MAX = 2**64 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PREFIXED_HEX64 = re.compile(r"0x[0-9a-f]{64}")
_INSTALL_HINT = (
    "web3 is not installed: install sealedml[chain] (web3, eth-tester[py-evm]) to anchor on a chain"
)

# Gas schedule of a transaction that runs no code (EIP-2028 calldata prices, EIP-7623 floor, Prague).
_TX_BASE_GAS = 21_000
_ZERO_BYTE_GAS = 4
_NONZERO_BYTE_GAS = 16
_FLOOR_GAS_PER_TOKEN = 10
_TOKENS_PER_NONZERO_BYTE = 4


# --------------------------------------------------------------------------------------------------
# The calldata payload


def _check_log_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
        raise LedgerError(
            "ledger.malformed", f"{where}: log_id must be 64 hex characters (SHA-256 of the log key)"
        )
    return value.lower()


def _check_u64(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise LedgerError(
            "ledger.malformed", f"{where}: {name} must be an integer in [0, 2**64-1], got {value!r}"
        )
    return value


def _check_hash32(value: object, name: str, where: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        got = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise LedgerError("ledger.malformed", f"{where}: {name} must be 32 bytes, got {got}")
    return bytes(value)


@dataclass(frozen=True)
class AnchorPayload:
    """The tree head an anchor commits to; constructing one guarantees every field is in range."""

    log_id: str
    tree_size: int
    root_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        where = "anchor payload"
        object.__setattr__(self, "log_id", _check_log_id(self.log_id, where))
        _check_u64(self.tree_size, "tree_size", where)
        object.__setattr__(self, "root_hash", _check_hash32(self.root_hash, "root_hash", where))
        _check_u64(self.timestamp_ms, "timestamp_ms", where)

    def encode(self) -> bytes:
        """Return the exact :data:`PAYLOAD_SIZE`-byte calldata; :func:`decode_payload` inverts it."""
        return _LAYOUT.pack(
            MAGIC, VERSION, bytes.fromhex(self.log_id), self.tree_size, self.root_hash, self.timestamp_ms
        )


def encode_payload(log_id: str, tree_size: int, root_hash: bytes, timestamp_ms: int) -> bytes:
    """Return the anchor calldata for this tree head; raises ``ledger.malformed`` on out-of-range fields."""
    return AnchorPayload(log_id, tree_size, root_hash, timestamp_ms).encode()


def decode_payload(data: bytes) -> AnchorPayload:
    """Decode anchor calldata, accepting only the exact v1 layout.

    Guarantees: any input other than a well-formed v1 payload (wrong magic, unknown version, any
    other length, non-bytes) raises ``LedgerError("ledger.malformed")`` and nothing else.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LedgerError("ledger.malformed", f"anchor calldata must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw.startswith(MAGIC):
        raise LedgerError("ledger.malformed", "calldata does not start with the SMLANCHOR magic")
    if len(raw) > len(MAGIC) and raw[len(MAGIC)] != VERSION:
        raise LedgerError(
            "ledger.malformed", f"unsupported anchor version {raw[len(MAGIC)]} (this build reads {VERSION})"
        )
    if len(raw) != PAYLOAD_SIZE:
        raise LedgerError("ledger.malformed", f"anchor calldata is {len(raw)} bytes, expected {PAYLOAD_SIZE}")
    _magic, _version, log_id, tree_size, root_hash, timestamp_ms = _LAYOUT.unpack(raw)
    return AnchorPayload(log_id.hex(), tree_size, root_hash, timestamp_ms)


def calldata_gas(data: bytes) -> int:
    """Return the gas a post-Prague chain charges for a transaction that carries ``data`` and runs no code.

    That is ``21000 + max(4*zero + 16*nonzero, 10*(zero + 4*nonzero))`` (EIP-2028 and the EIP-7623
    floor); a transaction to an account without code uses exactly this much.
    """
    zero = data.count(0)
    nonzero = len(data) - zero
    standard = _ZERO_BYTE_GAS * zero + _NONZERO_BYTE_GAS * nonzero
    floor = _FLOOR_GAS_PER_TOKEN * (zero + _TOKENS_PER_NONZERO_BYTE * nonzero)
    return _TX_BASE_GAS + max(standard, floor)


# --------------------------------------------------------------------------------------------------
# The anchor record


def _hex_field(data: dict[str, Any], name: str, *, prefixed: bool) -> bytes:
    value = data.get(name)
    pattern = _PREFIXED_HEX64 if prefixed else _HEX64
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shape = "0x + 64 lowercase hex" if prefixed else "64 lowercase hex"
        raise LedgerError("ledger.malformed", f"anchor record: {name} must be {shape} characters")
    return bytes.fromhex(value.removeprefix("0x"))


def _int_field(data: dict[str, Any], name: str) -> int:
    return _check_u64(data.get(name), name, "anchor record")


@dataclass(frozen=True)
class Anchor:
    """Where a tree head was anchored, and what was anchored.

    Guarantees: every field is well-formed (hashes 32 bytes, integers unsigned 64-bit, ``sender`` a
    0x-prefixed 20-byte address); it says nothing about the chain until
    :meth:`ChainAnchor.verify_anchor` has re-read it from there.
    """

    chain_id: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    tx_index: int
    sender: str
    log_id: str
    tree_size: int
    root_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        where = "anchor record"
        _check_u64(self.chain_id, "chain_id", where)
        object.__setattr__(self, "tx_hash", _check_hash32(self.tx_hash, "tx_hash", where))
        _check_u64(self.block_number, "block_number", where)
        object.__setattr__(self, "block_hash", _check_hash32(self.block_hash, "block_hash", where))
        _check_u64(self.tx_index, "tx_index", where)
        if not isinstance(self.sender, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", self.sender):
            raise LedgerError("ledger.malformed", f"{where}: sender must be a 0x-prefixed 20-byte address")
        object.__setattr__(self, "log_id", _check_log_id(self.log_id, where))
        _check_u64(self.tree_size, "tree_size", where)
        object.__setattr__(self, "root_hash", _check_hash32(self.root_hash, "root_hash", where))
        _check_u64(self.timestamp_ms, "timestamp_ms", where)

    @property
    def payload(self) -> AnchorPayload:
        """The tree head this record claims was anchored."""
        return AnchorPayload(self.log_id, self.tree_size, self.root_hash, self.timestamp_ms)

    def to_dict(self) -> dict[str, object]:
        """Return the JSON-ready form; :meth:`from_dict` restores an equal :class:`Anchor`."""
        return {
            "format": ANCHOR_FORMAT,
            "chain_id": self.chain_id,
            "tx_hash": "0x" + self.tx_hash.hex(),
            "block_number": self.block_number,
            "block_hash": "0x" + self.block_hash.hex(),
            "tx_index": self.tx_index,
            "sender": self.sender,
            "log_id": self.log_id,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
        }

    @classmethod
    def from_dict(cls, data: object) -> Anchor:
        """Parse the form :meth:`to_dict` writes; anything else raises ``ledger.malformed``, never more."""
        if not isinstance(data, dict):
            raise LedgerError(
                "ledger.malformed", f"anchor record must be an object, got {type(data).__name__}"
            )
        if data.get("format") != ANCHOR_FORMAT:
            raise LedgerError("ledger.malformed", f"anchor record format must be {ANCHOR_FORMAT!r}")
        expected = {f.name for f in dataclasses.fields(cls)} | {"format"}
        extra = set(data) - expected
        if extra:
            raise LedgerError(
                "ledger.malformed", f"anchor record has unknown fields: {sorted(map(str, extra))}"
            )
        log_id = data.get("log_id")
        if not isinstance(log_id, str) or not _HEX64.fullmatch(log_id):
            raise LedgerError("ledger.malformed", "anchor record: log_id must be 64 lowercase hex characters")
        sender = data.get("sender")
        if not isinstance(sender, str):
            raise LedgerError("ledger.malformed", "anchor record: sender must be a string")
        return cls(
            chain_id=_int_field(data, "chain_id"),
            tx_hash=_hex_field(data, "tx_hash", prefixed=True),
            block_number=_int_field(data, "block_number"),
            block_hash=_hex_field(data, "block_hash", prefixed=True),
            tx_index=_int_field(data, "tx_index"),
            sender=sender,
            log_id=log_id,
            tree_size=_int_field(data, "tree_size"),
            root_hash=_hex_field(data, "root_hash", prefixed=False),
            timestamp_ms=_int_field(data, "timestamp_ms"),
        )

    def to_json(self) -> str:
        """Return canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Anchor:
        """Parse :meth:`to_json` output; invalid JSON or fields raise ``ledger.malformed``, never more."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise LedgerError("ledger.malformed", f"anchor record is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# --------------------------------------------------------------------------------------------------
# Fork detection


@dataclass(frozen=True)
class Fork:
    """Two anchors of one log that cannot both describe a single append-only history.

    ``kind`` is ``"conflicting_roots"`` (same tree size, different roots) or ``"timestamp_regression"``
    (``second`` is a larger tree whose timestamp is earlier than ``first``'s).
    """

    kind: Literal["conflicting_roots", "timestamp_regression"]
    log_id: str
    first: Anchor
    second: Anchor

    def describe(self) -> str:
        """Return one sentence naming both anchors by transaction, size, root and timestamp."""
        a, b = self.first, self.second
        if self.kind == "conflicting_roots":
            return (
                f"log {self.log_id} anchored two roots for tree_size {a.tree_size}: "
                f"{a.root_hash.hex()} (tx 0x{a.tx_hash.hex()}, block {a.block_number}) and "
                f"{b.root_hash.hex()} (tx 0x{b.tx_hash.hex()}, block {b.block_number})"
            )
        return (
            f"log {self.log_id} anchored tree_size {b.tree_size} at timestamp_ms {b.timestamp_ms} "
            f"(tx 0x{b.tx_hash.hex()}), earlier than the smaller tree_size {a.tree_size} at "
            f"timestamp_ms {a.timestamp_ms} (tx 0x{a.tx_hash.hex()})"
        )

    def to_error(self) -> LedgerError:
        """Return the ``ledger.fork_detected`` error that reports this fork."""
        return LedgerError("ledger.fork_detected", self.describe())


def _chain_order(anchor: Anchor) -> tuple[int, int, int, bytes]:
    return (anchor.chain_id, anchor.block_number, anchor.tx_index, anchor.tx_hash)


def _fork_in_log(log_id: str, anchors: list[Anchor]) -> Fork | None:
    by_size: dict[int, Anchor] = {}
    for anchor in sorted(anchors, key=_chain_order):
        seen = by_size.setdefault(anchor.tree_size, anchor)
        if seen.root_hash != anchor.root_hash:
            return Fork("conflicting_roots", log_id, seen, anchor)
    latest_smaller: Anchor | None = None  # the latest-timestamped anchor of any strictly smaller tree
    ordered = sorted(anchors, key=lambda a: (a.tree_size, a.timestamp_ms, _chain_order(a)))
    index = 0
    while index < len(ordered):
        size = ordered[index].tree_size
        group_end = index
        while group_end < len(ordered) and ordered[group_end].tree_size == size:
            group_end += 1
        group = ordered[index:group_end]
        if latest_smaller is not None and group[0].timestamp_ms < latest_smaller.timestamp_ms:
            return Fork("timestamp_regression", log_id, latest_smaller, group[0])
        if latest_smaller is None or group[-1].timestamp_ms > latest_smaller.timestamp_ms:
            latest_smaller = group[-1]
        index = group_end
    return None


def detect_fork(anchors: Iterable[Anchor]) -> Fork | None:
    """Return a :class:`Fork` if these anchors contradict an append-only log, else ``None``.

    Guarantees: anchors are only compared within one ``log_id``; the result is the same for any order
    of the input; re-anchoring the same (size, root) at a later time is not a fork. It cannot see a
    fork that keeps sizes distinct (that needs the log's consistency proofs).
    """
    by_log: dict[str, list[Anchor]] = {}
    for anchor in anchors:
        if not isinstance(anchor, Anchor):
            raise LedgerError(
                "ledger.malformed", f"detect_fork expects Anchor objects, got {type(anchor).__name__}"
            )
        by_log.setdefault(anchor.log_id, []).append(anchor)
    for log_id in sorted(by_log):
        fork = _fork_in_log(log_id, by_log[log_id])
        if fork is not None:
            return fork
    return None


def assert_no_fork(anchors: Iterable[Anchor]) -> None:
    """Return only if :func:`detect_fork` finds nothing; otherwise raise ``ledger.fork_detected``."""
    fork = detect_fork(anchors)
    if fork is not None:
        raise fork.to_error()


# --------------------------------------------------------------------------------------------------
# The chain


def _import_web3() -> Any:
    try:
        import web3
    except ImportError:
        raise ConfigError("config.invalid", _INSTALL_HINT) from None
    return web3


def _import_account() -> Any:
    try:
        from eth_account import Account
    except ImportError:
        raise ConfigError("config.invalid", _INSTALL_HINT) from None
    return Account


def _check_confirmations(confirmations: object) -> int:
    if isinstance(confirmations, bool) or not isinstance(confirmations, int) or confirmations < 1:
        raise ConfigError("config.invalid", f"confirmations must be an integer >= 1, got {confirmations!r}")
    return confirmations


def _checksum(address: object, what: str) -> str:
    web3 = _import_web3()
    if not isinstance(address, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
        raise ConfigError("config.invalid", f"{what} {address!r} is not a 0x-prefixed 20-byte hex address")
    digits = address[2:]
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if mixed_case and not web3.Web3.is_checksum_address(address):
        raise ConfigError("config.invalid", f"{what} {address} has a wrong EIP-55 checksum (mistyped?)")
    return str(web3.Web3.to_checksum_address(address))


class ChainAnchor:
    """Puts tree heads on one chain from one account, and reads them back.

    Guarantees: :meth:`anchor` returns only once the transaction is mined and succeeded;
    :meth:`verify_anchor` returns only if the chain itself shows that exact tree head, sent by a trusted
    account, in the stated block, with at least ``confirmations`` blocks on top. Chain failures raise
    ``ledger.chain_unavailable``; nothing a node returns escapes as a web3 exception.
    """

    def __init__(
        self,
        w3: Web3,
        *,
        sender: str,
        account: LocalAccount | None,
        chain_id: int,
        anchor_address: str | None,
        confirmations: int,
        receipt_timeout: float,
        endpoint: str,
        redact: tuple[str, ...] = (),
    ) -> None:
        """Use :meth:`embedded`, :meth:`connect` or :meth:`from_web3`; this stores already-checked values."""
        self._w3 = w3
        self._sender = sender
        self._account = account
        self._chain_id = chain_id
        self._to = anchor_address if anchor_address is not None else sender
        self._confirmations = confirmations
        self._receipt_timeout = receipt_timeout
        self._endpoint = endpoint
        self._redact = redact
        self._lock = threading.Lock()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def embedded(cls, *, confirmations: int = 1, receipt_timeout: float = 10.0) -> ChainAnchor:
        """Start a fresh in-process eth-tester chain (py-evm) and anchor from its first unlocked account.

        Guarantees: no network, no files; the chain lives as long as this object.
        """
        web3 = _import_web3()
        try:
            provider = web3.EthereumTesterProvider()
        except ImportError:
            raise ConfigError("config.invalid", _INSTALL_HINT) from None
        return cls.from_web3(
            web3.Web3(provider),
            confirmations=confirmations,
            receipt_timeout=receipt_timeout,
            endpoint="embedded eth-tester chain",
        )

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        private_key: str | bytes,
        *,
        anchor_address: str | None = None,
        confirmations: int = 1,
        timeout: float = 10.0,
        receipt_timeout: float = 180.0,
    ) -> ChainAnchor:
        """Connect to a JSON-RPC node over HTTP(S) and sign anchors locally with ``private_key``.

        Guarantees: a bad URL, key, address or confirmation count raises ``config.invalid``; a node
        that cannot be reached (within ``timeout`` seconds per request) raises ``ledger.chain_unavailable``.
        The key never leaves this process: transactions are signed here and sent raw.
        """
        if not isinstance(rpc_url, str):
            raise ConfigError("config.invalid", "rpc_url must be a string such as https://rpc.example:8545")
        parts = urlsplit(rpc_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "config.invalid", f"rpc_url {rpc_url!r} must be an http:// or https:// URL with a host"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(
                "config.invalid", f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        web3 = _import_web3()
        provider = web3.HTTPProvider(rpc_url, request_kwargs={"timeout": float(timeout)})
        # Hosted RPC URLs carry API keys in the path, query or user info: keep them out of messages.
        secrets = (parts.path, parts.query, parts.username, parts.password)
        return cls._build(
            web3.Web3(provider),
            private_key=private_key,
            anchor_address=anchor_address,
            confirmations=confirmations,
            receipt_timeout=receipt_timeout,
            endpoint=f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else ""),
            redact=tuple(sorted({x for x in secrets if x and x != "/"}, key=len, reverse=True)),
        )

    @classmethod
    def from_web3(
        cls,
        w3: Web3,
        *,
        private_key: str | bytes | None = None,
        anchor_address: str | None = None,
        confirmations: int = 1,
        receipt_timeout: float = 180.0,
        endpoint: str = "web3 provider",
    ) -> ChainAnchor:
        """Anchor through an existing :class:`web3.Web3`.

        With ``private_key`` transactions are signed locally and sent raw; without it the node's first
        unlocked account sends them (only sensible for a development chain). Guarantees the same
        errors as :meth:`connect`.
        """
        return cls._build(
            w3,
            private_key=private_key,
            anchor_address=anchor_address,
            confirmations=confirmations,
            receipt_timeout=receipt_timeout,
            endpoint=endpoint,
            redact=(),
        )

    @classmethod
    def _build(
        cls,
        w3: Web3,
        *,
        private_key: str | bytes | None,
        anchor_address: str | None,
        confirmations: int,
        receipt_timeout: float,
        endpoint: str,
        redact: tuple[str, ...],
    ) -> ChainAnchor:
        confirmations = _check_confirmations(confirmations)
        if (
            isinstance(receipt_timeout, bool)
            or not isinstance(receipt_timeout, int | float)
            or receipt_timeout <= 0
        ):
            raise ConfigError("config.invalid", f"receipt_timeout must be positive, got {receipt_timeout!r}")
        to = _checksum(anchor_address, "anchor_address") if anchor_address is not None else None
        account: LocalAccount | None = None
        if private_key is not None:
            account_cls = _import_account()
            if not isinstance(private_key, str | bytes):
                raise ConfigError("config.invalid", "private_key must be 32 bytes or 64 hex characters")
            try:
                account = account_cls.from_key(private_key)
            except (ValueError, TypeError):
                # The library's message may echo the key: say only what is wrong with it.
                raise ConfigError(
                    "config.invalid",
                    "private_key is not a valid secp256k1 key (32 bytes or 64 hex characters, 0 < key < n)",
                ) from None
        with _node_errors(endpoint, redact, "read the chain id"):
            chain_id = int(w3.eth.chain_id)
        if account is not None:
            sender = str(account.address)
        else:
            with _node_errors(endpoint, redact, "list the node's accounts"):
                accounts = list(w3.eth.accounts)
            if not accounts:
                raise ConfigError(
                    "config.invalid", f"{endpoint} has no unlocked account: pass private_key to sign locally"
                )
            sender = str(accounts[0])
        return cls(
            w3,
            sender=sender,
            account=account,
            chain_id=chain_id,
            anchor_address=to,
            confirmations=confirmations,
            receipt_timeout=float(receipt_timeout),
            endpoint=endpoint,
            redact=redact,
        )

    # ---- properties --------------------------------------------------------------------------

    @property
    def web3(self) -> Web3:
        """The underlying :class:`web3.Web3` (for reading receipts or driving a development chain)."""
        return self._w3

    @property
    def address(self) -> str:
        """The checksummed account that sends this object's anchors."""
        return self._sender

    @property
    def chain_id(self) -> int:
        """The EIP-155 chain id of the connected chain, read once at construction."""
        return self._chain_id

    @property
    def confirmations(self) -> int:
        """How many blocks (the anchor's own included) :meth:`verify_anchor` requires."""
        return self._confirmations

    # ---- error mapping -----------------------------------------------------------------------

    def _rpc(
        self, what: str, *, refused_code: str = "ledger.chain_unavailable"
    ) -> AbstractContextManager[None]:
        return _node_errors(self._endpoint, self._redact, what, refused_code)

    # ---- anchoring ---------------------------------------------------------------------------

    def anchor(self, log_id: str, tree_size: int, root_hash: bytes, timestamp_ms: int) -> Anchor:
        """Put this tree head on the chain and return where it landed.

        Guarantees: returns only after the transaction is mined with status 1; the returned record
        matches the mined transaction. It may still need more blocks on top before
        :meth:`verify_anchor` accepts it (``confirmations``).
        """
        payload = AnchorPayload(log_id, tree_size, root_hash, timestamp_ms)
        data = payload.encode()
        exceptions = _import_web3().exceptions
        with self._lock:
            tx_hash = self._send(data)
        try:
            with self._rpc("wait for the anchor transaction"):
                receipt = self._w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self._receipt_timeout, poll_latency=0.05
                )
        except exceptions.TimeExhausted:
            raise LedgerError(
                "ledger.anchor_timeout",
                f"anchor transaction 0x{bytes(tx_hash).hex()} was not mined within "
                f"{self._receipt_timeout:g} s; look it up later or raise the fee",
                status=504,
            ) from None
        if receipt["status"] != 1:
            raise LedgerError(
                "ledger.anchor_rejected",
                f"anchor transaction 0x{bytes(tx_hash).hex()} reverted in block {receipt['blockNumber']} "
                f"(is anchor_address {self._to} a contract that rejects calls?)",
            )
        return Anchor(
            chain_id=self._chain_id,
            tx_hash=bytes(receipt["transactionHash"]),
            block_number=int(receipt["blockNumber"]),
            block_hash=bytes(receipt["blockHash"]),
            tx_index=int(receipt["transactionIndex"]),
            sender=self._sender,
            log_id=payload.log_id,
            tree_size=payload.tree_size,
            root_hash=payload.root_hash,
            timestamp_ms=payload.timestamp_ms,
        )

    def _send(self, data: bytes) -> bytes:
        w3 = self._w3
        tx: dict[str, Any] = {"from": self._sender, "to": self._to, "value": 0, "data": data}
        with self._rpc("estimate gas for the anchor", refused_code="ledger.anchor_rejected"):
            estimate = int(w3.eth.estimate_gas(tx))
        # Some estimators ignore the EIP-7623 calldata floor; a limit below it is rejected by real nodes.
        tx["gas"] = max(estimate, calldata_gas(data))
        if self._account is None:
            with self._rpc("send the anchor transaction", refused_code="ledger.anchor_rejected"):
                return bytes(w3.eth.send_transaction(tx))
        with self._rpc("prepare the anchor transaction"):
            tx["nonce"] = w3.eth.get_transaction_count(self._sender, "pending")
            tx["chainId"] = self._chain_id
            base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
            if base_fee is None:
                tx["gasPrice"] = w3.eth.gas_price
            else:
                tip = w3.eth.max_priority_fee
                tx["maxPriorityFeePerGas"] = tip
                tx["maxFeePerGas"] = 2 * int(base_fee) + int(tip)
        del tx["from"]
        signed = self._account.sign_transaction(tx)
        with self._rpc("send the anchor transaction", refused_code="ledger.anchor_rejected"):
            return bytes(w3.eth.send_raw_transaction(signed.raw_transaction))

    # ---- verification ------------------------------------------------------------------------

    def _trusted(self, trusted_senders: Collection[str] | None) -> set[str]:
        if trusted_senders is None:
            return {self._sender}
        if isinstance(trusted_senders, str):
            raise ConfigError(
                "config.invalid", "trusted_senders must be a collection of addresses, not one string"
            )
        return {_checksum(s, "trusted sender") for s in trusted_senders}

    def verify_anchor(
        self,
        anchor: Anchor,
        *,
        log_id: str,
        tree_size: int,
        root_hash: bytes,
        timestamp_ms: int | None = None,
        trusted_senders: Collection[str] | None = None,
    ) -> None:
        """Return only if the chain shows exactly this tree head anchored as ``anchor`` says.

        Checks, against the chain itself: the transaction exists, was sent by a trusted account
        (default: this object's own), succeeded, sits at the stated index of the stated block, that
        block is the canonical one at that height, its calldata decodes to exactly these values, and
        the block has at least ``confirmations`` blocks (itself included). Raises
        ``ledger.anchor_mismatch``, ``ledger.anchor_not_found``, ``ledger.untrusted_sender``,
        ``ledger.anchor_unconfirmed`` or ``ledger.chain_unavailable``.
        """
        if not isinstance(anchor, Anchor):
            raise LedgerError("ledger.malformed", f"expected an Anchor, got {type(anchor).__name__}")
        expected = AnchorPayload(
            log_id, tree_size, root_hash, anchor.timestamp_ms if timestamp_ms is None else timestamp_ms
        )
        _compare_payload(anchor.payload, expected, "the anchor record")
        if anchor.chain_id != self._chain_id:
            raise LedgerError(
                "ledger.anchor_mismatch",
                f"anchor is on chain {anchor.chain_id} but {self._endpoint} is chain {self._chain_id}",
            )
        trusted = self._trusted(trusted_senders)
        tx_label = f"0x{anchor.tx_hash.hex()}"
        exceptions = _import_web3().exceptions
        try:
            with self._rpc(f"read transaction {tx_label}"):
                tx = self._w3.eth.get_transaction(anchor.tx_hash)
        except exceptions.TransactionNotFound:
            raise LedgerError(
                "ledger.anchor_not_found", f"chain {self._chain_id} has no transaction {tx_label}", status=404
            ) from None
        if tx.get("blockNumber") is None:
            raise LedgerError(
                "ledger.anchor_unconfirmed", f"anchor transaction {tx_label} is still pending", status=409
            )
        sender = str(tx["from"])
        if sender != anchor.sender:
            raise LedgerError(
                "ledger.anchor_mismatch", f"transaction {tx_label} was sent by {sender}, not {anchor.sender}"
            )
        if sender not in trusted:
            raise LedgerError(
                "ledger.untrusted_sender",
                f"transaction {tx_label} was sent by {sender}, which is not a trusted anchoring account "
                f"({', '.join(sorted(trusted))})",
            )
        if tx.get("to") is None:
            raise LedgerError(
                "ledger.anchor_mismatch", f"transaction {tx_label} creates a contract: not an anchor"
            )
        mined_number, mined_hash = int(tx["blockNumber"]), bytes(tx["blockHash"])
        if mined_number != anchor.block_number or mined_hash != anchor.block_hash:
            raise LedgerError(
                "ledger.anchor_mismatch",
                f"transaction {tx_label} is mined in block {mined_number} (0x{mined_hash.hex()}), "
                f"not block {anchor.block_number} (0x{anchor.block_hash.hex()}) as the record says",
            )
        if int(tx["transactionIndex"]) != anchor.tx_index:
            raise LedgerError(
                "ledger.anchor_mismatch",
                f"transaction {tx_label} is at index {tx['transactionIndex']}, not {anchor.tx_index}",
            )
        try:
            with self._rpc(f"read block {anchor.block_number}"):
                block = self._w3.eth.get_block(anchor.block_number)
        except exceptions.BlockNotFound:
            raise LedgerError(
                "ledger.anchor_not_found",
                f"chain {self._chain_id} has no block {anchor.block_number}",
                status=404,
            ) from None
        if bytes(block["hash"]) != anchor.block_hash or anchor.tx_hash not in {
            bytes(h) for h in block["transactions"]
        }:
            raise LedgerError(
                "ledger.anchor_mismatch",
                f"block {anchor.block_number} on the canonical chain is 0x{bytes(block['hash']).hex()} "
                f"and does not hold {tx_label} (reorganised away?)",
            )
        try:
            on_chain = decode_payload(bytes(_tx_input(tx)))
        except LedgerError as err:
            raise LedgerError(
                "ledger.anchor_mismatch", f"transaction {tx_label} carries no anchor: {err.message}"
            ) from None
        _compare_payload(on_chain, expected, f"transaction {tx_label}")
        with self._rpc(f"read the receipt of {tx_label}"):
            receipt = self._w3.eth.get_transaction_receipt(anchor.tx_hash)
            latest = int(self._w3.eth.block_number)
        if receipt["status"] != 1:
            raise LedgerError(
                "ledger.anchor_mismatch", f"transaction {tx_label} reverted: it anchors nothing"
            )
        depth = latest - anchor.block_number + 1
        if depth < self._confirmations:
            raise LedgerError(
                "ledger.anchor_unconfirmed",
                f"anchor {tx_label} has {depth} confirmation(s), {self._confirmations} required: retry later",
                status=409,
            )

    # ---- scanning ----------------------------------------------------------------------------

    def anchors_for(
        self,
        log_id: str,
        *,
        from_block: int = 0,
        to_block: int | None = None,
        trusted_senders: Collection[str] | None = None,
        max_blocks: int = DEFAULT_MAX_SCAN_BLOCKS,
    ) -> list[Anchor]:
        """Return every successful anchor of ``log_id`` by a trusted sender in ``[from_block, to_block]``.

        ``to_block`` defaults to the newest block with ``confirmations`` confirmations. Guarantees: the
        result is in chain order; transactions whose calldata is not an exact v1 anchor (other magic,
        version or length), other logs' anchors, untrusted senders' anchors and reverted transactions
        are left out; at most ``max_blocks`` blocks are read per call (page through longer ranges by
        calling again with the next ``from_block``), a larger range raises ``input.too_large``.
        """
        wanted = _check_log_id(log_id, "anchors_for")
        trusted = self._trusted(trusted_senders)
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
            raise ConfigError("config.invalid", f"max_blocks must be an integer >= 1, got {max_blocks!r}")
        with self._rpc("read the chain head"):
            head = int(self._w3.eth.block_number)
        last = head - self._confirmations + 1 if to_block is None else min(to_block, head)
        first = _check_u64(from_block, "from_block", "anchors_for")
        if to_block is not None:
            _check_u64(to_block, "to_block", "anchors_for")
        if last < first:
            return []
        if last - first + 1 > max_blocks:
            raise InputError(
                "input.too_large",
                f"blocks {first}..{last} are {last - first + 1} blocks, more than max_blocks={max_blocks}: "
                f"scan in pages (from_block={first}, to_block={first + max_blocks - 1}, then onwards)",
                status=413,
            )
        found: list[Anchor] = []
        for number in range(first, last + 1):
            found.extend(self._anchors_in_block(number, wanted, trusted))
        return found

    def _anchors_in_block(self, number: int, log_id: str, trusted: set[str]) -> Iterator[Anchor]:
        with self._rpc(f"read block {number}"):
            block = self._w3.eth.get_block(number, full_transactions=True)
        # The position in the block is the transaction index (eth-tester's full transactions lack
        # the camelCase "transactionIndex" key, so do not rely on it).
        for index, tx in enumerate(block["transactions"]):
            data = _tx_input(tx)
            if len(data) != PAYLOAD_SIZE or not bytes(data).startswith(MAGIC):
                continue
            try:
                payload = decode_payload(bytes(data))
            except LedgerError:
                continue
            sender = str(tx["from"])
            if payload.log_id != log_id or sender not in trusted or tx.get("to") is None:
                continue
            with self._rpc(f"read the receipt of 0x{bytes(tx['hash']).hex()}"):
                receipt = self._w3.eth.get_transaction_receipt(tx["hash"])
            if receipt["status"] != 1:
                continue
            yield Anchor(
                chain_id=self._chain_id,
                tx_hash=bytes(tx["hash"]),
                block_number=number,
                block_hash=bytes(block["hash"]),
                tx_index=index,
                sender=sender,
                log_id=payload.log_id,
                tree_size=payload.tree_size,
                root_hash=payload.root_hash,
                timestamp_ms=payload.timestamp_ms,
            )


def _refusal_types() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the node answered, and said no" (web3's, and eth-tester's in-process ones)."""
    web3 = _import_web3()
    types: list[type[BaseException]] = [web3.exceptions.Web3Exception]
    try:
        import eth_utils

        types.append(eth_utils.ValidationError)
    except ImportError:  # pragma: no cover - eth_utils is a dependency of web3
        pass
    try:
        from eth_tester import exceptions as tester_exceptions
    except ImportError:
        pass
    else:
        types += [
            tester_exceptions.ValidationError,
            tester_exceptions.TransactionFailed,
            tester_exceptions.AccountLocked,
        ]
    return tuple(types)


def _tx_input(tx: Any) -> bytes:
    data = tx.get("input", tx.get("data", b""))
    return bytes(data) if data is not None else b""


def _compare_payload(got: AnchorPayload, expected: AnchorPayload, source: str) -> None:
    fields: list[tuple[str, Callable[[AnchorPayload], object]]] = [
        ("log_id", lambda p: p.log_id),
        ("tree_size", lambda p: p.tree_size),
        ("root_hash", lambda p: p.root_hash.hex()),
        ("timestamp_ms", lambda p: p.timestamp_ms),
    ]
    for name, get in fields:
        if get(got) != get(expected):
            raise LedgerError(
                "ledger.anchor_mismatch", f"{source} anchors {name} {get(got)}, expected {get(expected)}"
            )


@contextmanager
def _node_errors(
    endpoint: str, redact: tuple[str, ...], what: str, refused_code: str = "ledger.chain_unavailable"
) -> Iterator[None]:
    """Map failures to typed errors: transport -> ``ledger.chain_unavailable``, the node saying no ->
    ``refused_code``. Not-found lookups and receipt timeouts pass through for the caller to name."""
    exceptions = _import_web3().exceptions
    try:
        yield
    except (exceptions.TransactionNotFound, exceptions.BlockNotFound, exceptions.TimeExhausted):
        raise
    except (OSError, TimeoutError, exceptions.ProviderConnectionError, exceptions.RequestTimedOut) as exc:
        raise LedgerError(
            "ledger.chain_unavailable",
            f"could not {what} at {endpoint}: {type(exc).__name__}: {_short(exc, redact)}",
            status=503,
        ) from None
    except _refusal_types() as exc:
        raise LedgerError(
            refused_code,
            f"{endpoint} refused to {what}: {type(exc).__name__}: {_short(exc, redact)}",
            status=503 if refused_code == "ledger.chain_unavailable" else None,
        ) from None


def _short(exc: BaseException, redact: tuple[str, ...] = (), limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    for secret in redact:
        text = text.replace(secret, "<redacted>")
    return text if len(text) <= limit else text[: limit - 3] + "..."
