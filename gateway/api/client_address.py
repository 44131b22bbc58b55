"""The client's address and scheme, seen through the reverse proxies the operator trusts.

Without ``trusted_proxies`` (``gateway.settings``) the client is the TCP peer and
``X-Forwarded-For`` is ignored: anyone can write that header. When the peer is a trusted proxy,
the header is read from the right (each proxy appends the address it got the request from), past
every trusted proxy; the first address that is not one is the client. Whatever lies further left
was written by the client itself and proves nothing.

The scheme (``https`` or ``http``) is the connection's own, unless the peer is a trusted proxy
that says otherwise in ``X-Forwarded-Proto``: its last value, the one the proxy nearest the
gateway wrote (the TLS-terminating proxy sets it to the scheme its client used).
``X-Forwarded-Host`` is not read: the gateway builds no absolute URL from the request (the
OpenAPI ``servers`` entry is relative; receipts use ``public_base_url``) and sets no cookies.

Hand-written rather than taken from aiohttp-remotes: its middleware rewrites ``remote`` on every
request, while this runs only when an address is needed (a failed authentication, a throttled
caller).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def client_address(request: web.Request, trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The address of the client that sent ``request``, or None when the peer has none (a Unix
    socket)."""
    address = parse_address(request.remote)
    if address is None or not is_trusted(address, trusted):
        return address
    hops = [h for value in request.headers.getall("X-Forwarded-For", ()) for h in value.split(",")]
    for hop in reversed(hops):
        forwarded = parse_address(hop.strip())
        if forwarded is None:
            # no trusted proxy writes that, so the nearest proxy is all that is known
            break
        address = forwarded
        if not is_trusted(address, trusted):
            break
    return address


def request_scheme(request: web.Request, trusted: Sequence[IPNetwork]) -> str:
    """``"https"`` or ``"http"``: how the client reached the gateway, through trusted proxies."""
    if request.secure:
        return "https"
    address = parse_address(request.remote)
    if address is None or not is_trusted(address, trusted):
        return "http"
    values = [
        v for value in request.headers.getall("X-Forwarded-Proto", ()) for v in value.split(",")
    ]
    claimed = values[-1].strip().lower() if values else ""
    # anything but the two schemes is not what a proxy writes: the connection's own then
    return claimed if claimed in ("http", "https") else "http"


def is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    """True when ``address`` lies in one of the ``trusted`` networks."""
    return any(address in network for network in trusted)


# Remembered: the access log reads the client of every request, and ipaddress parsing cost
# more than the rest of its line; the same peers (proxies, devices' NATs) recur. Addresses are
# immutable, so sharing one object is safe. Bounded, least recently used out first.
@functools.lru_cache(maxsize=4096)
def parse_address(text: str | None) -> IPAddress | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as its IPv4 one), else None."""
    if not text:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def address_text(address: IPAddress) -> str:
    """``str(address)``, remembered as ``parse_address`` is: ``ipaddress`` builds the text in
    Python on every call (0.7 µs for IPv4, 3.5 for IPv6), and the access log writes the
    client of every request."""
    return str(address)
