"""Sealed payloads in the database: data keys, sealing, opening, shredding.

ADR 0010. Each owner (a patient's pseudonym, or ``ledger`` for payloads that
belong to no patient) has one random data key, stored in ``data_keys`` sealed
by the master key, which never touches the database. The sequencer seals
every payload with its owner's data key in the transaction that writes the
record; an ``erasure.execute`` record destroys the owner's data key and
every payload sealed with it, and a ``retention.shred`` record the payloads
of its prescriptions, in the transaction that writes that record.

Unwrapped data keys are kept in memory (bounded); a shredded key's payloads
are gone from the database in the same transaction, so a copy left in
another process's memory opens nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, insert, select, update

from ledger.core.record import Record
from ledger.core.sealing import (
    MasterKey,
    MasterKeyError,
    SealError,
    new_data_key,
    open_payload,
    seal_payload,
)
from ledger.domain.prescriptions import RX
from ledger.domain.privacy import LEDGER_OWNER
from ledger.store.schema import data_keys, ledger_meta, payloads, projections, records

MASTER_KEY_META = "master_key_id"
MAX_CACHED_KEYS = 100_000


class Vault:
    """The master key of one ledger, and the data keys it unwraps."""

    def __init__(self, master: MasterKey) -> None:
        self.master = master
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def bind(self, conn: Connection) -> None:
        """Check that the master key is this ledger's; record its id on first use.

        Raises :class:`MasterKeyError` naming both key ids (public
        fingerprints) when another key sealed this ledger's data.
        """
        stored = conn.execute(
            select(ledger_meta.c.value).where(ledger_meta.c.name == MASTER_KEY_META)
        ).scalar()
        if stored is None:
            conn.execute(insert(ledger_meta).values(name=MASTER_KEY_META, value=self.master.key_id))
        elif stored != self.master.key_id:
            raise MasterKeyError(
                f"the master key (id {self.master.key_id}) is not this ledger's "
                f"(id {stored}): its data keys would not open"
            )
        self.seal_legacy(conn)

    def seal_legacy(self, conn: Connection) -> int:
        """Seal the payloads a ledger stored in clear before migration 0003
        (``owner`` NULL); returns how many. The owner comes from the record:
        an issue's patient, a dispense's prescription's patient, else the ledger."""
        rows = conn.execute(
            select(payloads.c.seq, payloads.c.digest, payloads.c.content, records.c.record_bytes)
            .select_from(payloads.join(records, records.c.seq == payloads.c.seq))
            .where(
                payloads.c.owner.is_(None),
                payloads.c.content.is_not(None),
                payloads.c.erased_seq.is_(None),
            )
            .order_by(payloads.c.seq)
        ).all()
        fresh: dict[str, bytes] = {}
        for row in rows:
            fields = Record.from_bytes(bytes(row.record_bytes)).fields
            body = fields["body"]
            owner = LEDGER_OWNER
            if fields["type"] == "rx.issue":
                owner = str(body["patient"])
            elif fields["type"] == "rx.dispense":
                value = conn.execute(
                    select(projections.c.value).where(
                        projections.c.kind == RX, projections.c.key == str(body["rx_id"])
                    )
                ).scalar()
                if value is not None:
                    owner = str(json.loads(value)["patient"])
            seq, digest = int(row.seq), bytes(row.digest)
            sealed = self.seal(conn, owner, seq, digest, bytes(row.content), fresh=fresh)
            conn.execute(
                update(payloads).where(payloads.c.seq == seq).values(content=sealed, owner=owner)
            )
        return len(rows)

    # -- data keys ----------------------------------------------------------------

    def _cached(self, owner: str) -> bytes | None:
        with self._lock:
            return self._keys.get(owner)

    def _remember(self, owner: str, key: bytes) -> None:
        with self._lock:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[owner] = key

    def forget(self, owner: str) -> None:
        with self._lock:
            self._keys.pop(owner, None)

    def remember(self, fresh: dict[str, bytes]) -> None:
        """Cache the keys a write transaction used, once it has committed."""
        for owner, key in fresh.items():
            self._remember(owner, key)

    def data_key(
        self,
        conn: Connection,
        owner: str,
        *,
        create_at: int | None = None,
        fresh: dict[str, bytes] | None = None,
    ) -> bytes:
        """``owner``'s data key; made (and stored sealed) when ``create_at`` is a seq.

        A write transaction passes ``fresh``: the keys it reads or makes are
        kept there, not in the shared cache, until it commits (:meth:`remember`),
        so that a rolled-back key is never used again. Raises
        :class:`SealError` when the key was shredded or never made.
        """
        key = self._cached(owner)
        if key is None and fresh is not None:
            key = fresh.get(owner)
        if key is not None:
            return key
        row = conn.execute(
            select(data_keys.c.wrapped, data_keys.c.erased_seq).where(data_keys.c.owner == owner)
        ).first()
        if row is None:
            if create_at is None:
                raise SealError(f"{owner!r} has no data key")
            key = new_data_key()
            conn.execute(
                insert(data_keys).values(
                    owner=owner, wrapped=self.master.wrap(owner, key), created_seq=create_at
                )
            )
        elif row.wrapped is None:
            raise SealError(f"the data key of {owner!r} was shredded by record {row.erased_seq}")
        else:
            key = self.master.unwrap(owner, bytes(row.wrapped))
        if fresh is not None:
            fresh[owner] = key
        else:
            self._remember(owner, key)
        return key

    def seal(
        self,
        conn: Connection,
        owner: str,
        seq: int,
        digest: bytes,
        plain: bytes,
        *,
        fresh: dict[str, bytes],
    ) -> bytes:
        """Seal a payload in a write transaction (see :meth:`data_key` for ``fresh``)."""
        key = self.data_key(conn, owner, create_at=seq, fresh=fresh)
        return seal_payload(key, seq, digest, plain)

    def open(self, conn: Connection, owner: str, seq: int, digest: bytes, sealed: bytes) -> bytes:
        return open_payload(self.data_key(conn, owner), seq, digest, sealed)

    def read(self, engine: Engine, seq: int) -> tuple[str, bytes] | None:
        """``(owner, plaintext)`` of record ``seq``'s payload, ``None`` when it has
        none or it was shredded; raises :class:`SealError` when it does not open
        (the store is damaged)."""
        with engine.connect() as conn:
            row = conn.execute(
                select(
                    payloads.c.owner, payloads.c.digest, payloads.c.content, payloads.c.erased_seq
                ).where(payloads.c.seq == seq)
            ).first()
            if row is None or row.erased_seq is not None:
                return None
            if row.content is None or row.owner is None:
                raise SealError(f"the payload of record {seq} is missing but was not shredded")
            owner = str(row.owner)
            return owner, self.open(conn, owner, seq, bytes(row.digest), bytes(row.content))

    # -- shredding ----------------------------------------------------------------

    def shred_owner(self, conn: Connection, owner: str, seq: int) -> int:
        """Destroy ``owner``'s data key and their payloads; returns how many payloads."""
        conn.execute(
            update(data_keys).where(data_keys.c.owner == owner).values(wrapped=None, erased_seq=seq)
        )
        self.forget(owner)
        result = conn.execute(
            update(payloads)
            .where(payloads.c.owner == owner, payloads.c.content.is_not(None))
            .values(content=None, erased_seq=seq)
        )
        return int(result.rowcount or 0)

    @staticmethod
    def shred_records(conn: Connection, seqs: Iterable[int], seq: int) -> int:
        """Destroy the payloads of records ``seqs``; returns how many there were."""
        wanted = sorted(set(seqs))
        count = 0
        for start in range(0, len(wanted), 500):
            result = conn.execute(
                update(payloads)
                .where(
                    payloads.c.seq.in_(wanted[start : start + 500]), payloads.c.content.is_not(None)
                )
                .values(content=None, erased_seq=seq)
            )
            count += int(result.rowcount or 0)
        return count
