"""A small Bitrix-shaped database for tests, from shared/spec/BITRIX.md.

Only the tables and columns the spec names (plus the few the preset reads that it does
not: b_subscription, b_ticket, b_tasks and b_tasks_member columns), written the way Bitrix's install
SQL writes them — unquoted identifiers, so PostgreSQL folds them to lower case — in
MariaDB, PostgreSQL or SQLite. Use it on a fresh database from tests/sqlservers.py
(`mariadb_url`, `postgres_url`, `sqlite_url`: created and dropped per test):

    shop = BitrixShop(mariadb_url, charset="windows-1251")   # all tables in cp1251
    shop.create()
    shop.user(1, "ivan", "Иван", "Петров", personal_phone="8 (912) 345-67-89")
    shop.order(101, user_id=1, price="2500", phone="8 900 765-43-21")
    shop.mail("SALE_NEW_ORDER", {"ORDER_ID": "101", "ORDER_REAL_ID": "101", ...})

`mail()` writes C_FIELDS as PHP serialize() output in the shop's charset — as bytes on
MariaDB, so a windows-1251 shop really holds windows-1251 bytes. Every write moves a
clock one second on, so DATE_UPDATE / TIMESTAMP_X / CHANGED_DATE grow like on a real
shop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import phpserialize
import sqlalchemy as sa

T0 = datetime(2024, 5, 19, 14, 3, 11)

# (table, [(column, type)]) — types: id (integer primary key), int, str:N, char, text, datetime, money
TABLES: list[tuple[str, list[tuple[str, str]]]] = [
    ("b_event", [("ID", "id"), ("EVENT_NAME", "str:255"), ("MESSAGE_ID", "int"), ("LID", "str:255"),
                 ("C_FIELDS", "text"), ("DATE_INSERT", "datetime"), ("DATE_EXEC", "datetime"),
                 ("SUCCESS_EXEC", "char"), ("DUPLICATE", "char"), ("LANGUAGE_ID", "str:2")]),
    ("b_sale_status", [("ID", "key:2"), ("TYPE", "char"), ("NOTIFY", "char"), ("SORT", "int")]),
    ("b_sale_status_lang", [("STATUS_ID", "str:2"), ("LID", "str:2"), ("NAME", "str:255"),
                            ("DESCRIPTION", "text")]),
    ("b_sale_order", [("ID", "id"), ("LID", "str:2"), ("STATUS_ID", "str:2"), ("DATE_STATUS", "datetime"),
                      ("PAYED", "char"), ("DATE_PAYED", "datetime"), ("CANCELED", "char"),
                      ("REASON_CANCELED", "str:255"), ("ALLOW_DELIVERY", "char"), ("DEDUCTED", "char"),
                      ("PRICE", "money"), ("CURRENCY", "str:3"), ("USER_ID", "int"), ("DATE_INSERT", "datetime"),
                      ("DATE_UPDATE", "datetime"), ("ACCOUNT_NUMBER", "str:100"), ("TRACKING_NUMBER", "str:255")]),
    ("b_sale_order_delivery", [("ID", "id"), ("ORDER_ID", "int"), ("ACCOUNT_NUMBER", "str:100"),
                               ("STATUS_ID", "str:2"), ("ALLOW_DELIVERY", "char"), ("DEDUCTED", "char"),
                               ("DELIVERY_NAME", "str:128"), ("TRACKING_NUMBER", "str:255"), ("CANCELED", "char"),
                               ("DATE_UPDATE", "datetime"), ("SYSTEM", "char")]),
    ("b_sale_order_props", [("ID", "id"), ("CODE", "str:50"), ("IS_PHONE", "char")]),
    ("b_sale_order_props_value", [("ID", "id"), ("ORDER_ID", "int"), ("ORDER_PROPS_ID", "int"), ("CODE", "str:50"),
                                  ("VALUE", "str:500"), ("ENTITY_TYPE", "str:25")]),
    ("b_user", [("ID", "id"), ("LOGIN", "str:50"), ("EMAIL", "str:255"), ("NAME", "str:50"),
                ("LAST_NAME", "str:50"), ("ACTIVE", "char"), ("DATE_REGISTER", "datetime"),
                ("PERSONAL_PHONE", "str:255"), ("PERSONAL_MOBILE", "str:255"), ("WORK_PHONE", "str:255")]),
    ("b_user_phone_auth", [("USER_ID", "id"), ("PHONE_NUMBER", "str:25")]),
    ("b_subscription", [("ID", "id"), ("USER_ID", "int"), ("EMAIL", "str:255"), ("CONFIRM_CODE", "str:8"),
                        ("CONFIRMED", "char"), ("ACTIVE", "char"), ("DATE_INSERT", "datetime")]),
    ("b_ticket", [("ID", "id"), ("SITE_ID", "str:2"), ("TITLE", "str:255"), ("STATUS_ID", "int"),
                  ("CRITICALITY_ID", "int"), ("CATEGORY_ID", "int"), ("OWNER_USER_ID", "int"),
                  ("RESPONSIBLE_USER_ID", "int"), ("DATE_CREATE", "datetime"), ("DATE_CLOSE", "datetime"),
                  ("TIMESTAMP_X", "datetime")]),
    ("b_tasks", [("ID", "id"), ("TITLE", "str:255"), ("STATUS", "str:1"), ("PRIORITY", "str:1"),
                 ("DEADLINE", "datetime"), ("RESPONSIBLE_ID", "int"), ("CREATED_BY", "int"),
                 ("CHANGED_DATE", "datetime"), ("ZOMBIE", "char")]),
    # TYPE: O creator, R responsible, A accomplice, U auditor (Bitrix's primary key is all three)
    ("b_tasks_member", [("TASK_ID", "int"), ("USER_ID", "int"), ("TYPE", "char")]),
]
INDEXES = [("b_sale_order", "DATE_UPDATE"), ("b_sale_order_delivery", "DATE_UPDATE"),
           ("b_sale_order_props_value", "ORDER_ID")]

ORDER_STATUSES = [("N", "O"), ("P", "O"), ("F", "O"), ("DN", "D"), ("DA", "D"), ("DG", "D"), ("DT", "D"),
                  ("DS", "D"), ("DF", "D")]
PHONE_PROP, NAME_PROP = 3, 1                 # b_sale_order_props ids: PHONE (IS_PHONE='Y'), FIO


def _type(kind: str, dialect: str) -> str:
    name, _, size = kind.partition(":")
    mysql, pg = dialect == "mysql", dialect == "postgresql"
    if name == "id":
        return "INT NOT NULL PRIMARY KEY" if not pg else "integer NOT NULL PRIMARY KEY"
    if name == "key":
        return f"VARCHAR({size}) NOT NULL PRIMARY KEY"
    if name == "int":
        return "INT" if not pg else "integer"
    if name == "str":
        return f"VARCHAR({size})"
    if name == "char":
        return "CHAR(1)"
    if name == "text":
        return "LONGTEXT" if mysql else "TEXT"
    if name == "datetime":
        return "DATETIME" if mysql else ("timestamp" if pg else "DATETIME")
    if name == "money":
        return "DECIMAL(18,4)" if not pg else "numeric(18,4)"
    raise ValueError(kind)


def php_serialize(fields: Any, charset: str = "utf-8") -> bytes:
    """PHP serialize() output: string lengths are bytes in `charset`."""
    return phpserialize.dumps(fields, charset=charset)


class BitrixShop:
    """A writer on a Bitrix-shaped test database (see the module docstring)."""

    def __init__(self, url: str, charset: str = "utf-8"):
        self.url = url
        self.engine = sa.create_engine(url)
        self.dialect = {"mysql": "mysql", "mariadb": "mysql"}.get(self.engine.dialect.name, self.engine.dialect.name)
        self.charset = charset
        self.clock = T0
        self._ids: dict[str, int] = {}

    # -- plumbing --
    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def _value(self, value: Any) -> Any:
        if isinstance(value, datetime) and self.dialect == "sqlite":
            return value.isoformat(" ")
        return value

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), {k: self._value(v) for k, v in params.items()})

    def insert(self, table: str, **values: Any) -> Any:
        """A row; without an ID, the next one (like AUTO_INCREMENT)."""
        if "ID" not in values:
            values["ID"] = self._ids.get(table, 0) + 1
        if isinstance(values["ID"], int):
            self._ids[table] = max(self._ids.get(table, 0), values["ID"])
        columns = ", ".join(values)
        self.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in values)})", **values)
        return values["ID"]

    def update(self, table: str, row_id: int, **values: Any) -> None:
        sets = ", ".join(f"{c} = :{c}" for c in values)
        self.execute(f"UPDATE {table} SET {sets} WHERE ID = :row_id", row_id=row_id, **values)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema --
    def create(self, *, statuses: bool = True, skip: tuple[str, ...] = ()) -> "BitrixShop":
        """The tables (all but `skip`), Bitrix's default statuses with their Russian names
        and the order properties PHONE (IS_PHONE='Y') and FIO."""
        tail = ""
        if self.dialect == "mysql":
            tail = " DEFAULT CHARSET=cp1251" if self.charset in ("windows-1251", "cp1251") else \
                " DEFAULT CHARSET=utf8mb4"
        with self.engine.begin() as conn:
            for table, columns in TABLES:
                if table in skip:
                    continue
                body = ", ".join(f"{name} {_type(kind, self.dialect)}" for name, kind in columns)
                conn.execute(sa.text(f"CREATE TABLE {table} ({body}){tail}"))
            for table, column in INDEXES:
                if table not in skip:
                    conn.execute(sa.text(f"CREATE INDEX ix_{table}_{column.lower()} ON {table} ({column})"))
            if "b_sale_order" not in skip:
                conn.execute(sa.text("CREATE UNIQUE INDEX ixs_account_number ON b_sale_order (ACCOUNT_NUMBER)"))
        if statuses and "b_sale_status" not in skip:
            from herald.connectors.sql.bitrix.codec import DEFAULT_ORDER_STATUSES, DEFAULT_SHIPMENT_STATUSES
            names = {**DEFAULT_ORDER_STATUSES, **DEFAULT_SHIPMENT_STATUSES}
            for i, (code, kind) in enumerate(ORDER_STATUSES):
                self.insert("b_sale_status", ID=code, TYPE=kind, NOTIFY="Y", SORT=(i + 1) * 10)
                self.execute("INSERT INTO b_sale_status_lang (STATUS_ID, LID, NAME) VALUES (:s, 'ru', :n)",
                             s=code, n=names[code])
        if "b_sale_order_props" not in skip:
            self.insert("b_sale_order_props", ID=NAME_PROP, CODE="FIO", IS_PHONE="N")
            self.insert("b_sale_order_props", ID=PHONE_PROP, CODE="PHONE", IS_PHONE="Y")
        return self

    # -- rows --
    def mail(self, event_name: str, fields: Any, *, lid: str = "s1", raw: bytes | None = None,
             row_id: int | None = None) -> int:
        """A b_event row as Bitrix's CEvent::Send writes it (SUCCESS_EXEC='N'); `raw`
        gives C_FIELDS bytes as they are (e.g. malformed)."""
        data = raw if raw is not None else php_serialize(fields, self.charset)
        if self.dialect != "mysql":                       # text columns: PostgreSQL and SQLite hold UTF-8
            data = data.decode(self.charset)
        values = dict(EVENT_NAME=event_name, MESSAGE_ID=None, LID=lid, C_FIELDS=data, DATE_INSERT=self.tick(),
                      SUCCESS_EXEC="N", DUPLICATE="Y", LANGUAGE_ID=None)
        if row_id is not None:
            values["ID"] = row_id
        return self.insert("b_event", **values)

    def mail_sent(self, row_id: int, result: str = "Y") -> None:
        """What Bitrix does seconds later: marks the row sent (never a reason to skip it)."""
        self.update("b_event", row_id, SUCCESS_EXEC=result, DATE_EXEC=self.tick())

    def user(self, user_id: int, login: str, name: str = "", last_name: str = "", *, email: str | None = None,
             personal_phone: str | None = None, personal_mobile: str | None = None,
             work_phone: str | None = None, active: str = "Y") -> int:
        return self.insert("b_user", ID=user_id, LOGIN=login, EMAIL=email or f"{login}@example.com", NAME=name,
                           LAST_NAME=last_name, ACTIVE=active, DATE_REGISTER=self.tick(),
                           PERSONAL_PHONE=personal_phone, PERSONAL_MOBILE=personal_mobile, WORK_PHONE=work_phone)

    def order(self, order_id: int, *, user_id: int | None = None, number: str | None = None, price: Any = "0",
              currency: str = "RUB", status: str = "N", payed: str = "N", canceled: str = "N",
              reason: str | None = None, allow_delivery: str = "N", lid: str = "s1", phone: str | None = None,
              fio: str | None = None, tracking_number: str | None = None) -> int:
        """An order with its FIO and PHONE property values (if given)."""
        now = self.tick()
        self.insert("b_sale_order", ID=order_id, LID=lid, STATUS_ID=status, DATE_STATUS=now, PAYED=payed,
                    DATE_PAYED=now if payed == "Y" else None, CANCELED=canceled, REASON_CANCELED=reason,
                    ALLOW_DELIVERY=allow_delivery, DEDUCTED="N", PRICE=price, CURRENCY=currency, USER_ID=user_id,
                    DATE_INSERT=now, DATE_UPDATE=now, ACCOUNT_NUMBER=number or str(order_id),
                    TRACKING_NUMBER=tracking_number)
        if fio is not None:
            self.prop(order_id, NAME_PROP, "FIO", fio)
        if phone is not None:
            self.prop(order_id, PHONE_PROP, "PHONE", phone)
        return order_id

    def prop(self, order_id: int, prop_id: int, code: str, value: str) -> int:
        return self.insert("b_sale_order_props_value", ORDER_ID=order_id, ORDER_PROPS_ID=prop_id, CODE=code,
                           VALUE=value, ENTITY_TYPE="ORDER")

    def update_order(self, order_id: int, **values: Any) -> None:
        """Change b_sale_order columns; DATE_UPDATE moves on like Bitrix's does."""
        self.update("b_sale_order", order_id, **values, DATE_UPDATE=self.tick())

    def shipment(self, shipment_id: int, order_id: int, *, status: str = "DN", system: str = "N",
                 number: str | None = None, tracking_number: str | None = None, delivery_name: str = "Курьер",
                 allow_delivery: str = "N", deducted: str = "N") -> int:
        return self.insert("b_sale_order_delivery", ID=shipment_id, ORDER_ID=order_id,
                           ACCOUNT_NUMBER=number or f"{order_id}/{shipment_id}", STATUS_ID=status,
                           ALLOW_DELIVERY=allow_delivery, DEDUCTED=deducted, DELIVERY_NAME=delivery_name,
                           TRACKING_NUMBER=tracking_number, CANCELED="N", DATE_UPDATE=self.tick(), SYSTEM=system)

    def update_shipment(self, shipment_id: int, **values: Any) -> None:
        self.update("b_sale_order_delivery", shipment_id, **values, DATE_UPDATE=self.tick())

    def status_name(self, code: str, name: str, lid: str = "ru", *, kind: str | None = None) -> None:
        """Rename a status (or add a shop's own, with `kind` O or D)."""
        if kind is not None:
            self.insert("b_sale_status", ID=code, TYPE=kind, NOTIFY="Y", SORT=500)
        self.execute("DELETE FROM b_sale_status_lang WHERE STATUS_ID = :s AND LID = :l", s=code, l=lid)
        self.execute("INSERT INTO b_sale_status_lang (STATUS_ID, LID, NAME) VALUES (:s, :l, :n)", s=code, l=lid,
                     n=name)

    def phone_auth(self, user_id: int, phone: str) -> None:
        """Phone registration: the user's confirmed number (E.164)."""
        self.execute("INSERT INTO b_user_phone_auth (USER_ID, PHONE_NUMBER) VALUES (:u, :p)", u=user_id, p=phone)

    def subscription(self, sub_id: int, email: str, *, user_id: int | None = None, confirmed: str = "N",
                     code: str = "abcd1234") -> int:
        return self.insert("b_subscription", ID=sub_id, USER_ID=user_id, EMAIL=email, CONFIRM_CODE=code,
                           CONFIRMED=confirmed, ACTIVE="Y", DATE_INSERT=self.tick())

    def ticket(self, ticket_id: int, title: str, *, owner: int | None = None, responsible: int | None = None,
               status: int = 1, criticality: int = 2, site: str = "s1") -> int:
        now = self.tick()
        return self.insert("b_ticket", ID=ticket_id, SITE_ID=site, TITLE=title, STATUS_ID=status,
                           CRITICALITY_ID=criticality, CATEGORY_ID=None, OWNER_USER_ID=owner,
                           RESPONSIBLE_USER_ID=responsible, DATE_CREATE=now, DATE_CLOSE=None, TIMESTAMP_X=now)

    def update_ticket(self, ticket_id: int, **values: Any) -> None:
        self.update("b_ticket", ticket_id, **values, TIMESTAMP_X=self.tick())

    def task(self, task_id: int, title: str, *, responsible: int | None = None, creator: int | None = None,
             status: str = "2", priority: str = "1") -> int:
        return self.insert("b_tasks", ID=task_id, TITLE=title, STATUS=status, PRIORITY=priority, DEADLINE=None,
                           RESPONSIBLE_ID=responsible, CREATED_BY=creator, CHANGED_DATE=self.tick(), ZOMBIE="N")

    def update_task(self, task_id: int, **values: Any) -> None:
        self.update("b_tasks", task_id, **values, CHANGED_DATE=self.tick())

    def task_member(self, task_id: int, user_id: int, kind: str = "A") -> None:
        """A task member: A accomplice, U auditor (O creator and R responsible are
        written too by Bitrix; the preset reads them from b_tasks)."""
        self.execute("INSERT INTO b_tasks_member (TASK_ID, USER_ID, TYPE) VALUES (:t, :u, :k)",
                     t=task_id, u=user_id, k=kind)
