"""A dishonest operator: rewrites its own database and re-signs it with the log key.

What it produces is a "valid-looking" history: every record chained, every
Merkle node and checkpoint consistent, every checkpoint signed by the log key,
so that ``verify --db`` on it passes. Only someone who kept an earlier
checkpoint can tell (``ledger.auditing``), or a witness that cosigned one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, delete, insert, select, update

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint
from ledger.core.note import Signer
from ledger.core.record import Record, build_record_bytes, record_hash
from ledger.core.verify import head_extension
from ledger.store.schema import checkpoints, log_head, merkle_nodes, payloads, records

#: (seq, record) -> the received_at the operator wants it to have
Retime = Callable[[int, Record], str]


def rewrite_history(
    engine: Engine,
    log_signer: Signer,
    origin: str,
    *,
    retime: Retime | None = None,
    keep: int | None = None,
) -> int:
    """Rewrite the log in ``engine``: change records' ``received_at`` with
    ``retime`` and/or drop every record from ``keep`` on; rechain, recompute
    every node, re-sign every checkpoint. Returns the new size."""
    import base64  # noqa: PLC0415

    with engine.begin() as conn:
        rows = conn.execute(select(records.c.seq, records.c.record_bytes).order_by(records.c.seq))
        old = [Record.from_bytes(bytes(r.record_bytes), expected_seq=int(r.seq)) for r in rows]
        sizes = [int(s) for s in conn.execute(select(checkpoints.c.size)).scalars()]
        size = len(old) if keep is None else keep
        conn.execute(delete(payloads).where(payloads.c.seq >= size))
        conn.execute(delete(records).where(records.c.seq >= size))
        conn.execute(delete(merkle_nodes))
        conn.execute(delete(checkpoints).where(checkpoints.c.size > 0))
        tree = merkle.MerkleAccumulator()
        prev = "0" * 64
        head = bytes(32)
        wanted = {s for s in sizes if 0 < s <= size} | {size}
        for record in old[:size]:
            received = retime(record.seq, record) if retime else record.received_at
            data = build_record_bytes(
                record.seq,
                prev,
                received,
                base64.b64encode(record.signature).decode("ascii"),
                record.statement_bytes,
            )
            head = record_hash(data)
            prev = head.hex()
            conn.execute(
                update(records)
                .where(records.c.seq == record.seq)
                .values(record_hash=head, received_at=received, record_bytes=data)
            )
            nodes = tree.append(merkle.hash_leaf(data))
            conn.execute(
                insert(merkle_nodes),
                [{"level": lv, "idx": ix, "hash": h} for (lv, ix), h in nodes],
            )
            if tree.size in wanted:
                note = Checkpoint(
                    origin=origin,
                    size=tree.size,
                    root_hash=tree.root(),
                    extensions=(head_extension(head),),
                ).sign([log_signer])
                conn.execute(insert(checkpoints).values(size=tree.size, note=note))
        conn.execute(
            update(log_head)
            .where(log_head.c.id == 1)
            .values(size=size, head_hash=head, root_hash=tree.root())
        )
    return size


def backdate_one(target: int) -> Retime:
    """Give record ``target`` the ``received_at`` of the record before it."""
    previous: dict[int, str] = {}

    def retime(seq: int, record: Record) -> str:
        previous[seq] = record.received_at
        if seq == target:
            return previous[seq - 1]
        return record.received_at

    return retime
