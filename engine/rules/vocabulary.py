"""The canonical event vocabulary (shared/spec/EVENTS.md), for static checks.

`herald check` warns when a rule reads a field, or a template a macro, that no
canonical event of the rule's trigger type carries. Connectors may add fields, so
these are warnings, never errors; mail events carry whatever the mail had.
"""

from __future__ import annotations

from functools import lru_cache

USER = ("id", "login", "name", "email", "phone", "department")
OBJECTS: dict[str, tuple[str, ...]] = {
    "order": ("id", "number", "status", "status_name", "paid", "canceled", "cancel_reason",
              "delivery_allowed", "price", "currency", "date", "items", "tracking_number", "url",
              "site", "user_id"),
    "shipment": ("id", "number", "order_id", "status", "status_name", "tracking_number",
                 "delivery_name", "shipped", "delivery_allowed", "canceled"),
    "customer": USER,
    "user": USER,
    "subscription": ("id", "list", "phone", "email", "confirm_code", "confirmed", "date"),
    "ticket": ("id", "title", "status", "criticality", "category", "date", "changed", "owner", "responsible"),
    "task": ("id", "title", "status", "priority", "deadline", "responsible", "creator", "members"),
    "sms": ("from", "to", "text", "time"),
    "message": ("id", "status", "channel", "to", "rule", "event", "reference", "price", "currency", "reason"),
    "provider": ("name", "url", "status", "error", "since", "active", "balance", "currency", "threshold", "low"),
    "schedule": ("time", "rule"),
    "connector": ("name", "type", "status", "error", "since"),
}
NESTED_USERS = {("ticket", "owner"), ("ticket", "responsible"), ("task", "responsible"), ("task", "creator"),
                ("task", "members")}

# event type → the objects its data carries
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "order.created": ("order", "customer"),
    "order.updated": ("order", "customer"),
    "order.deleted": ("order",),
    "shipment.created": ("shipment", "order", "customer"),
    "shipment.updated": ("shipment", "order", "customer"),
    "user.created": ("user",),
    "user.updated": ("user",),
    "subscription.created": ("subscription",),
    "subscription.confirmed": ("subscription",),
    "subscription.cancelled": ("subscription",),
    "ticket.created": ("ticket", "customer"),
    "ticket.updated": ("ticket", "customer"),
    "task.created": ("task",),
    "task.updated": ("task",),
    "task.deleted": ("task",),
    "sms.received": ("sms",),
    "message.delivered": ("message",),
    "message.failed": ("message",),
    "provider.down": ("provider",),
    "provider.up": ("provider",),
    "provider.balance": ("provider",),
    "schedule": ("schedule",),
    "connector.down": ("connector",),
    "connector.up": ("connector",),
}

# Flat upper-case fields that Bitrix-aware sources add to sale events (EVENTS.md, BITRIX.md).
BITRIX_FLAT = ("ORDER_ID", "ORDER_REAL_ID", "ORDER_DATE", "ORDER_USER", "PRICE", "EMAIL", "BCC",
               "ORDER_LIST", "SALE_EMAIL", "DELIVERY_PRICE", "ORDER_PUBLIC_URL", "ORDER_STATUS",
               "ORDER_DESCRIPTION", "ORDER_CANCEL_DESCRIPTION", "SHIPMENT_ID", "SHIPMENT_DATE",
               "SHIPMENT_STATUS", "ORDER_TRACKING_NUMBER", "STATUS_NAME", "TRACKING_NUMBER",
               "DELIVERY_NAME", "ORDER_NO", "SHIPMENT_NO")
SITE_MACROS = ("SITE_NAME", "SERVER_NAME", "DEFAULT_EMAIL_FROM", "DEFAULT_PHONE_FROM")
MESSAGE_MACROS = ("PHONE_TO",)
EVENT_FIELDS = ("type", "site", "id", "time")
SITE_FIELDS = ("id", "name", "server_name", "email_from", "phone_from", "timezone", "channel", "language")


def event_types_for(pattern: str) -> tuple[str, ...]:
    """The canonical types an event-type pattern (`order.*`) or entity (`order`) covers."""
    if pattern == "*":
        return tuple(EVENT_TYPES)
    if "." not in pattern:                                    # an entity name
        return tuple(t for t in EVENT_TYPES if t.split(".")[0] == pattern)
    want = pattern.split(".")
    return tuple(t for t in EVENT_TYPES
                 if len(t.split(".")) == len(want) and all(w in ("*", g) for w, g in zip(want, t.split("."))))


def is_known_pattern(pattern: str) -> bool:
    """Mail events and unknown families are open-ended; only canonical families are checked."""
    family = pattern.split(".")[0]
    if family in ("*", "mail") or pattern.startswith("*."):
        return True
    if not any(t.split(".")[0] == family for t in EVENT_TYPES):
        return True                      # a connector's own family: nothing to check against
    return bool(event_types_for(pattern))


@lru_cache(maxsize=256)
def fields_of(event_type: str) -> frozenset[tuple[str, ...]]:
    """Every field path the canonical event of this type carries (objects and their fields)."""
    paths: set[tuple[str, ...]] = set()
    for obj in EVENT_TYPES.get(event_type, ()):
        paths.add((obj,))
        for name in OBJECTS[obj]:
            paths.add((obj, name))
            if (obj, name) in NESTED_USERS:
                paths.update((obj, name, f) for f in USER)
    if event_type.split(".")[0] in ("order", "shipment"):
        paths.update((f,) for f in BITRIX_FLAT)
    return frozenset(paths)


@lru_cache(maxsize=256)
def macros_of(event_type: str) -> frozenset[str]:
    """Every `#MACRO#` a template can use on this event type."""
    names = {"_".join(p).upper() for p in fields_of(event_type)}
    return frozenset(names | set(SITE_MACROS) | set(MESSAGE_MACROS))


def carries(event_type: str, path: tuple[str, ...]) -> bool:
    """Whether the canonical event carries this path (or something under it)."""
    root = path[0]
    if root == "event":
        return len(path) == 2 and path[1] in EVENT_FIELDS
    if root == "site":
        return len(path) == 2 and path[1] in SITE_FIELDS
    if root == "previous":
        return len(path) == 1 or carries(event_type, path[1:])
    fields = fields_of(event_type)
    if path in fields:
        return True
    # nested data below a known object field (e.g. order.items.0) is not ours to judge
    return any(path[: len(f)] == f and len(f) >= 2 for f in fields)
