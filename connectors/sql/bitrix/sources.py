"""The bitrix preset's sources: what they share (`_Source`, the append and snapshot kinds)
and the users, subscriptions, tickets and tasks sources (the sale ones are in sale.py)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Mapping

import sqlalchemy as sa

from herald.connectors.sql.bitrix.dialect import EMPTY, PHONE_AUTH_TABLE, _Catalog, _user_columns
from herald.connectors.sql.bitrix.preset import _Preset
from herald.connectors.sql.bitrix.values import _changes, _ident, _members, _person, _put, _text, _when, _yes
from herald.connectors.sql.core import (
    APPEND, DELETE, SNAPSHOT, decode_cursor, encode_cursor, event_digest, event_label,
)

log = logging.getLogger("herald.connectors.bitrix")

class _Source(ABC):
    """What every Bitrix source shares: the Source protocol of herald.connectors.sql."""

    name = ""
    mode = APPEND
    table = ""
    start = None                  # the connector's `start`

    def __init__(self, preset: _Preset):
        self.preset = preset
        self._warned = False

    @property
    def charset(self) -> str:
        return self.preset.charset

    @property
    def catalog(self) -> _Catalog:
        return self.preset.catalog

    def prepare(self, connection: sa.Connection) -> None:
        self.catalog.load(connection)
        if not self.catalog.has(self.table):
            if not self._warned:
                log.warning("bitrix preset: there is no table %s in this database (its module is not installed?): "
                            "the %s source reads nothing; leave it out of bitrix: sources", self.table, self.name)
                self._warned = True
        else:
            self._warned = False

    def query(self, cursor: str | None, limit: int) -> sa.Executable:
        if not self.catalog.has(self.table):
            return EMPTY
        return self._query(cursor, limit)

    @abstractmethod
    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        """The source's SELECT after `cursor`."""

    def key_of(self, row: Mapping[str, Any]) -> str:
        return str(_ident(row["id"]))

    def site(self, row: Mapping[str, Any], column: str = "lid") -> tuple[bool, dict]:
        """(keep the row, {"site": id} or {} for the default site)."""
        keep, site = self.preset.site_of(row.get(column)) if column in row else (True, self.preset.fixed_site())
        return keep, ({"site": site} if site else {})


class _AppendSource(_Source):
    """Rows after the last ID seen."""

    mode = APPEND
    id_column = "ID"

    def _after(self, alias: str, cursor: str | None, limit: int, sql: str) -> sa.Executable:
        """`sql` holds {where} where the cursor condition goes; ordered and limited here."""
        where = f"{alias}.{self.id_column} > :after" if cursor is not None else "1 = 1"
        statement = sa.text(sql.replace("{where}", where) + f" ORDER BY {alias}.{self.id_column} LIMIT :limit")
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            params.append(sa.bindparam("after", int(decode_cursor(cursor)), type_=sa.BigInteger))
        return statement.bindparams(*params)

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        return encode_cursor(int(row["id"]))


class _SnapshotSource(_Source):
    """Rows changed since the last (timestamp, ID) seen; each compared with its last
    stored state: first sight `<entity>.created`, a change `<entity>.updated` with
    `previous` holding only the changed fields' old values."""

    mode = SNAPSHOT
    entity = ""
    time_column = "DATE_UPDATE"

    def _after(self, alias: str, cursor: str | None, limit: int, sql: str) -> sa.Executable:
        t, i = f"{alias}.{self.time_column}", f"{alias}.ID"
        where = f"{t} IS NOT NULL"
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            at, after = decode_cursor(cursor)
            where += f" AND ({t} > :at OR ({t} = :at AND {i} > :after))"
            params += [sa.bindparam("at", at), sa.bindparam("after", int(after), type_=sa.BigInteger)]
        statement = sa.text(sql.replace("{where}", where) + f" ORDER BY {t}, {i} LIMIT :limit")
        return statement.bindparams(*params)

    def cursor_of(self, row: Mapping[str, Any]) -> str:
        return encode_cursor([row["changed_at"], int(row["id"])])

    @abstractmethod
    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        """(the part compared between polls — {entity: {...}}, the rest of the data)."""

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        state, rest = self.state(row)
        key, label = self.key_of(row), event_label(self.cursor_of(row))
        if not keep:
            return [], state
        if snapshot is None:
            data = {**state, **rest}
            return [{"type": f"{self.entity}.created", "id": f"{key}:c:{label}", "data": data, **site}], state
        previous, reshaped = _changes(snapshot, state)
        if not previous:
            return [], (state if reshaped or dict(snapshot) != state else None)
        data = {**state, **rest}
        self.annotate(data, previous)
        event_id = f"{key}:u:{event_digest(label, previous, state)}"
        return [{"type": f"{self.entity}.updated", "id": event_id, "data": data, "previous": previous,
                 **site}], state

    def annotate(self, data: dict, previous: dict) -> None:
        """Add what an update says about itself (ticket.changed)."""


# ---------------------------------------------------------------------- b_user

class UsersSource(_AppendSource):
    """`b_user` by ID: `user.created` (Bitrix sends NEW_USER mails past b_event)."""

    name = "users"
    table = "b_user"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = (f"SELECT u.ID AS id, {users}, u.ACTIVE AS active, u.DATE_REGISTER AS date_register "
               f"FROM b_user u{user_join} WHERE {{where}}")
        return self._after("u", cursor, limit, sql)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        user = _person(row, "user", row.get("id"), self.charset)
        user["active"] = _yes(row.get("active"))
        _put(user, "date_register", _when(row.get("date_register")))
        return [{"type": "user.created", "id": self.key_of(row), "data": {"user": user}, **site}], None


# ---------------------------------------------------------------------- b_subscription

class SubscriptionsSource(_AppendSource):
    """`b_subscription` by ID: `subscription.created`, the phone from the subscriber's
    user account when there is one."""

    name = "subscriptions"
    table = "b_subscription"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT s.ID AS id, s.USER_ID AS user_id, s.EMAIL AS email, s.CONFIRM_CODE AS confirm_code, "
               "s.CONFIRMED AS confirmed, s.ACTIVE AS active, s.DATE_INSERT AS date_insert, "
               f"{users} FROM b_subscription s LEFT JOIN b_user u ON u.ID = s.USER_ID{user_join} WHERE {{where}}")
        return self._after("s", cursor, limit, sql)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.site(row)
        cs = self.charset
        subscription: dict[str, Any] = {}
        _put(subscription, "id", _ident(row.get("id")))
        _put(subscription, "email", _text(row.get("email"), cs))
        _put(subscription, "confirm_code", _text(row.get("confirm_code"), cs))
        subscription["confirmed"] = _yes(row.get("confirmed"))
        subscription["active"] = _yes(row.get("active"))
        _put(subscription, "date", _when(row.get("date_insert")))
        data: dict[str, Any] = {"subscription": subscription}
        if row.get("user_id") is not None:
            user = _person(row, "user", row.get("user_id"), cs)
            _put(subscription, "user_id", user.get("id"))
            _put(subscription, "phone", user.get("phone"))
            data["user"] = user
        return [{"type": "subscription.created", "id": self.key_of(row), "data": data, **site}], None


# ---------------------------------------------------------------------- b_ticket

class TicketsSource(_SnapshotSource):
    """`b_ticket` (support module) by TIMESTAMP_X: `ticket.created` / `ticket.updated`.
    Status, criticality and category are the dictionary ids as stored; `closed` is
    whether DATE_CLOSE is set; `changed` lists the fields an update changed."""

    name = "tickets"
    table = "b_ticket"
    entity = "ticket"
    time_column = "TIMESTAMP_X"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        auth = self.catalog.has(PHONE_AUTH_TABLE)
        owner, owner_join = _user_columns("ou", "owner", auth)
        resp, resp_join = _user_columns("ru", "resp", auth)
        sql = ("SELECT t.ID AS id, t.SITE_ID AS lid, t.TITLE AS title, t.STATUS_ID AS status_id, "
               "t.CRITICALITY_ID AS criticality_id, t.CATEGORY_ID AS category_id, t.DATE_CREATE AS date_create, "
               "t.DATE_CLOSE AS date_close, t.TIMESTAMP_X AS changed_at, t.OWNER_USER_ID AS owner_id, "
               f"t.RESPONSIBLE_USER_ID AS resp_id, {owner}, {resp} FROM b_ticket t "
               f"LEFT JOIN b_user ou ON ou.ID = t.OWNER_USER_ID{owner_join} "
               f"LEFT JOIN b_user ru ON ru.ID = t.RESPONSIBLE_USER_ID{resp_join} WHERE {{where}}")
        return self._after("t", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        owner = _person(row, "owner", row.get("owner_id"), cs) if row.get("owner_id") is not None else {}
        responsible = _person(row, "resp", row.get("resp_id"), cs) if row.get("resp_id") is not None else {}
        ticket = {
            "id": _ident(row.get("id")),
            "title": _text(row.get("title"), cs),
            "status": _ident(row.get("status_id")),
            "criticality": _ident(row.get("criticality_id")),
            "category": _ident(row.get("category_id")),
            "date": _when(row.get("date_create")),
            "closed": row.get("date_close") is not None,
            "owner": owner,
            "responsible": responsible,
        }
        return {"ticket": ticket}, {"customer": dict(owner)}

    def annotate(self, data: dict, previous: dict) -> None:
        data["ticket"] = {**data["ticket"], "changed": sorted(previous.get("ticket", {}))}

    def events(self, row, snapshot):
        made, state = super().events(row, snapshot)
        for event in made:
            if event["type"] == "ticket.created":
                event["data"]["ticket"] = {**event["data"]["ticket"], "changed": []}
        return made, state


# ---------------------------------------------------------------------- b_tasks

class TasksSource(_SnapshotSource):
    """`b_tasks` (portal tasks) by CHANGED_DATE: `task.created` / `task.updated`, and
    `task.deleted` when a task Herald knew turns ZOMBIE='Y' (Bitrix's recycle bin)."""

    name = "tasks"
    table = "b_tasks"
    entity = "task"
    time_column = "CHANGED_DATE"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        auth = self.catalog.has(PHONE_AUTH_TABLE)
        resp, resp_join = _user_columns("ru", "resp", auth)
        creator, creator_join = _user_columns("cu", "creator", auth)
        members = (self.preset.dialect.member_list("k.ID", auth) if self.catalog.has("b_tasks_member")
                   else "NULL")
        sql = ("SELECT k.ID AS id, k.TITLE AS title, k.STATUS AS status, k.PRIORITY AS priority, "
               "k.DEADLINE AS deadline, k.ZOMBIE AS zombie, k.CHANGED_DATE AS changed_at, "
               f"k.RESPONSIBLE_ID AS resp_id, k.CREATED_BY AS creator_id, {resp}, {creator}, "
               f"{members} AS members FROM b_tasks k "
               f"LEFT JOIN b_user ru ON ru.ID = k.RESPONSIBLE_ID{resp_join} "
               f"LEFT JOIN b_user cu ON cu.ID = k.CREATED_BY{creator_join} WHERE {{where}}")
        return self._after("k", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        task = {
            "id": _ident(row.get("id")),
            "title": _text(row.get("title"), cs),
            "status": _ident(row.get("status")),
            "priority": _ident(row.get("priority")),
            "deadline": _when(row.get("deadline")),
            "responsible": _person(row, "resp", row.get("resp_id"), cs) if row.get("resp_id") is not None else {},
            "creator": _person(row, "creator", row.get("creator_id"), cs) if row.get("creator_id") is not None
            else {},
            "members": _members(row.get("members"), cs),
        }
        return {"task": task}, {}

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        if not _yes(row.get("zombie")):
            return super().events(row, snapshot)
        if snapshot is None:                      # deleted before Herald ever saw it: nothing to say
            return [], None
        keep, site = self.site(row)
        state, _ = self.state(row)
        label = event_label(self.cursor_of(row))
        event = {"type": "task.deleted", "id": f"{self.key_of(row)}:d:{label}", "data": state, **site}
        return ([event] if keep else []), DELETE
