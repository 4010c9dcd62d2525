"""The domain's read side backed by the database, and the projector of effects."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from ledger.domain.state import Actor, ActorRegistered, Effect, KeyGrant
from ledger.store.schema import actor_keys, actors


class DbState:
    """:class:`ledger.domain.state.State` over one open transaction."""

    def __init__(self, connection: Connection, size: int) -> None:
        self._conn = connection
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def actor(self, actor_id: str) -> Actor | None:
        row = self._conn.execute(select(actors).where(actors.c.actor_id == actor_id)).first()
        if row is None:
            return None
        keys = self._conn.execute(
            select(actor_keys)
            .where(actor_keys.c.actor_id == actor_id)
            .order_by(actor_keys.c.valid_from)
        ).all()
        return Actor(
            actor_id=row.actor_id,
            role=row.role,
            keys=tuple(
                KeyGrant(
                    vkey=k.vkey,
                    valid_from=k.valid_from,
                    valid_until=k.valid_until,
                    revoked_at=k.revoked_at,
                )
                for k in keys
            ),
            display_name=row.display_name,
            licence=row.licence,
            registered_seq=row.registered_seq,
        )


def project(connection: Connection, effects: list[Effect]) -> None:
    """Write the effects of a batch to the projection tables, in order."""
    for effect in effects:
        if isinstance(effect, ActorRegistered):
            actor = effect.actor
            connection.execute(
                insert(actors).values(
                    actor_id=actor.actor_id,
                    role=actor.role,
                    display_name=actor.display_name,
                    licence=actor.licence,
                    registered_seq=actor.registered_seq,
                )
            )
            connection.execute(
                insert(actor_keys),
                [
                    {
                        "actor_id": actor.actor_id,
                        "vkey": k.vkey,
                        "valid_from": k.valid_from,
                        "valid_until": k.valid_until,
                        "revoked_at": k.revoked_at,
                    }
                    for k in actor.keys
                ],
            )
