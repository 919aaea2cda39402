"""Who is calling: the client address that per-address limits count (docs/subscriptions.md).

The address is the connection's peer. `X-Forwarded-For` is believed only when that peer
is one of `http.trusted_proxies`, and then only as far as the chain of trusted proxies
goes: reading right to left, the first address that is not itself a trusted proxy is
the client. Anything left of it was written by the client and proves nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"        # no peer at all (an in-process ASGI call without a client)
IPV6_PREFIX = 64           # one IPv6 visitor commonly holds a whole /64: count it as one


def parse_proxy(text: str) -> IPNetwork:
    """`10.0.0.1` or `10.0.0.0/8` (host bits allowed) → a network; ValueError otherwise."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{max(network.prefixlen - 96, 0)}", strict=False)
    return network


def parse_proxies(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(parse_proxy(item) for item in items)


def _address(text: str) -> IPAddress | None:
    """One hop of X-Forwarded-For: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[IPNetwork]) -> str:
    """The client's address as text (`unknown` without a peer)."""
    address = _address(peer) if peer else None
    if address is None:
        return peer or UNKNOWN
    if not forwarded_for or not _trusted(address, proxies):
        return str(address)
    for hop in reversed(forwarded_for.split(",")):
        parsed = _address(hop)
        if parsed is None:
            break          # a broken hop: nothing further left can be trusted; count the proxy
        address = parsed
        if not _trusted(address, proxies):
            return str(address)
    return str(address)     # every hop a trusted proxy (or a broken one): the left-most good one


def of_request(request, proxies: Sequence[IPNetwork]) -> str:
    """A Starlette request's client address; repeated X-Forwarded-For headers read as one list."""
    peer = request.client.host if request.client else None
    forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
    return client_address(peer, forwarded, proxies)


def limit_key(address: str) -> str:
    """What a per-address limit counts: the address, or its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_PREFIX}", strict=False))
    return str(parsed)
