"""The bitrix preset's sale sources: `mail` (b_event, the mail queue), `orders`
(b_sale_order) and `shipments` (b_sale_order_delivery)."""

from __future__ import annotations

from typing import Any, Mapping

import sqlalchemy as sa

from herald.connectors.sql.bitrix.codec import mail_event_to_events, with_phone
from herald.connectors.sql.bitrix.dialect import (
    PHONE_AUTH_TABLE, PHONE_TABLES, SALE_TABLES, _Catalog, _order_phone, _user_columns,
)
from herald.connectors.sql.bitrix.php import decode_c_fields
from herald.connectors.sql.bitrix.sources import _AppendSource, _SnapshotSource, log
from herald.connectors.sql.bitrix.values import _fill, _ident, _money, _person, _put, _site_date, _text, _when, _yes
from herald.connectors.sql.core import decode_cursor
from herald.engine.errors import BitrixDecodeError

# ---------------------------------------------------------------------- b_event

class MailSource(_AppendSource):
    """`b_event`, the mail queue: every row → `mail.<EVENT_NAME>`, sale mails also the
    canonical event, with the buyer, the order's price and the shipment's tracking
    number joined in from the shop's tables. Never filtered on SUCCESS_EXEC (Bitrix
    rewrites it within seconds): the cursor is our own, on ID."""

    name = "mail"
    table = "b_event"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        d = self.preset.dialect
        inner = ("SELECT ev.ID AS id, ev.EVENT_NAME AS event_name, ev.LID AS lid, "
                 f"{d.raw('ev.C_FIELDS')} AS c_fields")
        sale = self.catalog.has(*SALE_TABLES)
        if sale:
            is_sale = "substr(ev.EVENT_NAME, 1, 5) = 'SALE_'"
            real = d.php_field("ev.C_FIELDS", "ORDER_REAL_ID")
            number = f"COALESCE({d.php_field('ev.C_FIELDS', 'ORDER_ID')}, {d.php_field('ev.C_FIELDS', 'ORDER_NO')})"
            shipment = d.php_field("ev.C_FIELDS", "SHIPMENT_ID")
            inner += (f", CASE WHEN {is_sale} THEN {real} END AS h_real"
                      f", CASE WHEN {is_sale} THEN {number} END AS h_number"
                      f", CASE WHEN {is_sale} THEN {shipment} END AS h_shipment")
        inner += " FROM b_event ev WHERE {where} ORDER BY ev.ID LIMIT :limit"
        if not sale:
            sql = ("SELECT e.id, e.event_name, e.lid, e.c_fields FROM (" + inner + ") e ORDER BY e.id")
        else:
            users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
            has_shipments = self.catalog.has("b_sale_order_delivery")
            shipment_columns = ("d.ID AS shipment_id, d.ACCOUNT_NUMBER AS shipment_number, "
                                "d.TRACKING_NUMBER AS shipment_tracking_number, "
                                "d.DELIVERY_NAME AS shipment_delivery_name") if has_shipments else (
                "NULL AS shipment_id, NULL AS shipment_number, NULL AS shipment_tracking_number, "
                "NULL AS shipment_delivery_name")
            shipment_join = (f" LEFT JOIN b_sale_order_delivery d ON d.ID = {d.to_int('e.h_shipment')}"
                             " AND d.ORDER_ID = o.ID") if has_shipments else ""
            sql = ("SELECT e.id, e.event_name, e.lid, e.c_fields, "
                   "o.ID AS order_id, o.ACCOUNT_NUMBER AS order_number, o.PRICE AS order_price, "
                   "o.CURRENCY AS order_currency, o.PAYED AS order_payed, o.CANCELED AS order_canceled, "
                   "o.ALLOW_DELIVERY AS order_allow_delivery, o.USER_ID AS user_id, "
                   f"{users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone, "
                   f"{shipment_columns} "
                   f"FROM ({inner}) e "
                   f"LEFT JOIN b_sale_order o1 ON o1.ID = {d.to_int('e.h_real')} "
                   f"LEFT JOIN b_sale_order o2 ON o1.ID IS NULL AND {d.same_text('o2.ACCOUNT_NUMBER', 'e.h_number')} "
                   "LEFT JOIN b_sale_order o ON o.ID = COALESCE(o1.ID, o2.ID) "
                   f"LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join}{shipment_join} "
                   "ORDER BY e.id")
        # the cursor and LIMIT belong to the inner SELECT of b_event
        where = "ev.ID > :after" if cursor is not None else "1 = 1"
        statement = sa.text(sql.replace("{where}", where))
        params = [sa.bindparam("limit", limit, type_=sa.Integer)]
        if cursor is not None:
            params.append(sa.bindparam("after", int(decode_cursor(cursor)), type_=sa.BigInteger))
        return statement.bindparams(*params)

    def events(self, row: Mapping[str, Any], snapshot: Mapping[str, Any] | None
               ) -> tuple[list[dict], Mapping[str, Any] | None]:
        keep, site = self.preset.site_of(row.get("lid"))
        if not keep:
            return [], None
        row_id = int(row["id"])
        name = _text(row.get("event_name"), self.charset) or ""
        try:
            fields = decode_c_fields(row.get("c_fields"), self.charset)
            made = mail_event_to_events(name, fields, row_id=row_id, site=site or "", time=None,
                                        status_names=self.catalog.status_names,
                                        shipment_status_codes=self.catalog.shipment_codes)
        except BitrixDecodeError as exc:
            return [self._malformed(row_id, name, site, exc)], None
        out = []
        for event in made:
            if not site:
                event.pop("site", None)
            if not event["type"].startswith("mail."):
                self._enrich(event, row)
            out.append(event)
        return out, None

    def _malformed(self, row_id: int, name: str, site: str | None, exc: BitrixDecodeError) -> dict:
        """A row whose C_FIELDS cannot be read: logged, and recorded in the journal as one
        `connector.error` event (rules may alert on it); no mail.* event, since its
        fields are unknown. The cursor moves past it, so polling goes on."""
        log.warning("bitrix preset: b_event row %s (%s) skipped: %s", row_id, name or "no EVENT_NAME", exc)
        about = {"type": "sql", "source": self.name, "status": "error",
                 "error": f"b_event row {row_id} ({name or '?'}): {exc}"}
        if self.preset.connector:
            about["name"] = self.preset.connector
        event = {"type": "connector.error", "id": f"bitrix:b_event:{row_id}:error",
                 "data": {"connector": about, "row": {"table": "b_event", "ID": row_id, "EVENT_NAME": name}}}
        if site:
            event["site"] = site
        return event

    def _enrich(self, event: dict, row: Mapping[str, Any]) -> None:
        """Fill what the mail does not say from the joined rows; the mail's own fields win."""
        data = event["data"]
        cs = self.charset
        order_id = _ident(row.get("order_id"))
        order = data.get("order")
        if order_id is not None and isinstance(order, dict):
            _fill(order, "id", order_id)
            _fill(order, "number", _text(row.get("order_number"), cs))
            _fill(order, "price", _money(row.get("order_price")))
            _fill(order, "currency", _text(row.get("order_currency"), cs))
            if event["type"] == "order.updated":
                # the current flags, for conditions such as `if order.paid != true`; the
                # event's `previous` is what the mail says changed, so these cannot fire a
                # state trigger on their own
                _fill(order, "paid", _yes(row.get("order_payed")))
                _fill(order, "canceled", _yes(row.get("order_canceled")))
                _fill(order, "delivery_allowed", _yes(row.get("order_allow_delivery")))
        shipment = data.get("shipment")
        if isinstance(shipment, dict) and row.get("shipment_id") is not None:
            _fill(shipment, "id", _ident(row.get("shipment_id")))
            _fill(shipment, "number", _text(row.get("shipment_number"), cs))
            _fill(shipment, "order_id", order_id)
            _fill(shipment, "tracking_number", _text(row.get("shipment_tracking_number"), cs))
            _fill(shipment, "delivery_name", _text(row.get("shipment_delivery_name"), cs))
        if order_id is None:
            return
        customer = data.setdefault("customer", {})
        person = _person(row, "user", row.get("user_id"), cs, _text(row.get("order_phone"), cs))
        for key in ("id", "login", "name", "email"):
            _fill(customer, key, person.get(key))
        if not customer.get("phone") and person.get("phone"):
            data["customer"] = with_phone(event, person["phone"])["data"]["customer"]


# ---------------------------------------------------------------------- b_sale_order

def _order_object(row: Mapping[str, Any], prefix: str, catalog: _Catalog, charset: str) -> dict:
    """The canonical `order` from b_sale_order columns labelled `<prefix>…` (every field
    present, None when empty: it is also the snapshot compared between polls)."""
    p = prefix
    status = _text(row.get(f"{p}status_id"), charset)
    return {
        "id": _ident(row.get(f"{p}id")),
        "number": _text(row.get(f"{p}account_number"), charset),
        "status": status,
        "status_name": catalog.status_name(status),
        "paid": _yes(row.get(f"{p}payed")),
        "canceled": _yes(row.get(f"{p}canceled")),
        "cancel_reason": _text(row.get(f"{p}reason_canceled"), charset),
        "delivery_allowed": _yes(row.get(f"{p}allow_delivery")),
        "price": _money(row.get(f"{p}price")),
        "currency": _text(row.get(f"{p}currency"), charset),
        "tracking_number": _text(row.get(f"{p}tracking_number"), charset),
        "date": _when(row.get(f"{p}date_insert")),
        "user_id": _ident(row.get("user_id")),
    }


def _order_flat(order: Mapping[str, Any], customer: Mapping[str, Any], date_value: Any) -> dict:
    """The flat fields Bitrix's own sale mails carry, so Bitrix-style templates render."""
    flat: dict[str, Any] = {}
    _put(flat, "ORDER_ID", order.get("number"))
    _put(flat, "ORDER_REAL_ID", order.get("id"))
    _put(flat, "ORDER_DATE", _site_date(date_value))
    _put(flat, "ORDER_USER", customer.get("name"))
    _put(flat, "PRICE", order.get("price"))
    _put(flat, "EMAIL", customer.get("email"))
    return flat


class OrdersSource(_SnapshotSource):
    """`b_sale_order` by DATE_UPDATE: for shops whose sale mail events are off."""

    name = "orders"
    table = "b_sale_order"
    entity = "order"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT o.ID AS id, o.LID AS lid, o.ACCOUNT_NUMBER AS account_number, o.STATUS_ID AS status_id, "
               "o.PAYED AS payed, o.CANCELED AS canceled, o.REASON_CANCELED AS reason_canceled, "
               "o.ALLOW_DELIVERY AS allow_delivery, o.PRICE AS price, o.CURRENCY AS currency, "
               "o.TRACKING_NUMBER AS tracking_number, o.DATE_INSERT AS date_insert, o.DATE_UPDATE AS changed_at, "
               f"o.USER_ID AS user_id, {users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone "
               f"FROM b_sale_order o LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join} WHERE {{where}}")
        return self._after("o", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        order = _order_object(row, "", self.catalog, self.charset)
        customer = _person(row, "user", row.get("user_id"), self.charset, _text(row.get("order_phone"), self.charset))
        return {"order": order}, {"customer": customer, **_order_flat(order, customer, row.get("date_insert"))}


# ---------------------------------------------------------------------- b_sale_order_delivery

class ShipmentsSource(_SnapshotSource):
    """`b_sale_order_delivery` by DATE_UPDATE, never the technical SYSTEM='Y' shipment."""

    name = "shipments"
    table = "b_sale_order_delivery"
    entity = "shipment"

    def _query(self, cursor: str | None, limit: int) -> sa.Executable:
        users, user_join = _user_columns("u", "user", self.catalog.has(PHONE_AUTH_TABLE))
        sql = ("SELECT d.ID AS id, d.ORDER_ID AS shipment_order_id, d.ACCOUNT_NUMBER AS shipment_number, "
               "d.STATUS_ID AS shipment_status_id, d.ALLOW_DELIVERY AS shipment_allow_delivery, "
               "d.DEDUCTED AS shipment_deducted, d.DELIVERY_NAME AS shipment_delivery_name, "
               "d.TRACKING_NUMBER AS shipment_tracking_number, d.CANCELED AS shipment_canceled, "
               "d.DATE_UPDATE AS changed_at, "
               "o.ID AS order_id, o.LID AS lid, o.ACCOUNT_NUMBER AS order_account_number, "
               "o.STATUS_ID AS order_status_id, o.PAYED AS order_payed, o.CANCELED AS order_canceled, "
               "o.REASON_CANCELED AS order_reason_canceled, o.ALLOW_DELIVERY AS order_allow_delivery, "
               "o.PRICE AS order_price, o.CURRENCY AS order_currency, o.TRACKING_NUMBER AS order_tracking_number, "
               "o.DATE_INSERT AS order_date_insert, o.USER_ID AS user_id, "
               f"{users}, {_order_phone('o.ID', self.catalog.has(*PHONE_TABLES))} AS order_phone "
               "FROM b_sale_order_delivery d LEFT JOIN b_sale_order o ON o.ID = d.ORDER_ID "
               f"LEFT JOIN b_user u ON u.ID = o.USER_ID{user_join} "
               "WHERE (d.SYSTEM IS NULL OR d.SYSTEM <> 'Y') AND {where}")
        return self._after("d", cursor, limit, sql)

    def state(self, row: Mapping[str, Any]) -> tuple[dict, dict]:
        cs = self.charset
        status = _text(row.get("shipment_status_id"), cs)
        shipment = {
            "id": _ident(row.get("id")),
            "number": _text(row.get("shipment_number"), cs),
            "order_id": _ident(row.get("shipment_order_id")),
            "status": status,
            "status_name": self.catalog.status_name(status),
            "tracking_number": _text(row.get("shipment_tracking_number"), cs),
            "delivery_name": _text(row.get("shipment_delivery_name"), cs),
            "shipped": _yes(row.get("shipment_deducted")),
            "delivery_allowed": _yes(row.get("shipment_allow_delivery")),
            "canceled": _yes(row.get("shipment_canceled")),
        }
        order = _order_object(row, "order_", self.catalog, cs) if row.get("order_id") is not None else {}
        customer = _person(row, "user", row.get("user_id"), cs, _text(row.get("order_phone"), cs))
        flat = _order_flat(order, customer, row.get("order_date_insert"))
        _put(flat, "SHIPMENT_ID", shipment.get("id"))
        _put(flat, "TRACKING_NUMBER", shipment.get("tracking_number"))
        _put(flat, "DELIVERY_NAME", shipment.get("delivery_name"))
        return {"shipment": shipment}, {"order": order, "customer": customer, **flat}
