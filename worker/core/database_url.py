"""The database URL: the forms it is given in, the one the engine is made
from, and the hosts it names.

PostgreSQL takes a list of hosts for a failover: libpq's form
`postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write` and
SQLAlchemy's `postgresql://u@/db?host=h1:5432&host=h2:5432&...`. Both become
SQLAlchemy's form with one `host=name:port` per host (every port spelled
out, as SQLAlchemy's asyncpg dialect requires for more than one host);
asyncpg tries the hosts in turn and, with `target_session_attrs`, keeps the
first that matches (e.g. `read-write`: the primary, not a standby).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

VARIABLES = "PERSISTER_DATABASE_URL (or DATABASE_URL)"
# The names the database URL is read from, in the order `Settings` tries them.
DATABASE_VARIABLES = ("PERSISTER_DATABASE_URL", "DATABASE_URL")
DEFAULT_PORT = 5432
# What asyncpg 0.30-0.32 accepts (asyncpg.connect_utils.SessionAttribute).
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# scheme://authority/rest, the authority holding no '/', '?' or '#'.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>[^:]*))?$")


def variable_set(environ: Mapping[str, str]) -> str:
    """The variable the database URL was read from, as settings read it (the
    names in any case, the first set wins); both names when the environment
    has neither (the URL came from `.env`, a secret, or the default)."""
    names = {name.upper() for name in environ}
    found = [name for name in DATABASE_VARIABLES if name in names]
    return found[0] if found else VARIABLES


def normalize(value: str) -> str:
    """The URL the engine is made from, with the async driver; ValueError
    (one line, no password) for what is not a usable database URL."""
    url = _parsed(value)
    if url.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        url = _listed(lambda: _with_hosts(url.set(drivername="postgresql+asyncpg")))
    elif url.drivername in ("sqlite", "sqlite+aiosqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database {url.drivername!r}; use postgresql or sqlite")
    return url.render_as_string(hide_password=False)


def _listed(parse: Callable[[], URL]) -> URL:
    """`parse()`, whose errors are about the hosts and their options."""
    try:
        return parse()
    except ValueError as exc:
        # Settings report it under the plain name: say which variables.
        raise ValueError(f"{exc}; fix {VARIABLES}") from None


def hosts(url: str | URL) -> list[str]:
    """`host:port` of each host a (normalized) PostgreSQL URL names, in the
    order they are tried; [] for SQLite."""
    parsed = make_url(url) if isinstance(url, str) else url
    if not parsed.drivername.startswith("postgres"):
        return []
    listed = parsed.query.get("host")
    if listed is None:
        host = parsed.host or "localhost"
        return [f"{host}:{parsed.port or DEFAULT_PORT}"]
    return [listed] if isinstance(listed, str) else list(listed)


def tried(url: str | URL) -> list[str]:
    """The hosts of `url` when it names more than one (they are tried in
    turn, and the driver's error is only the last one's), else []."""
    try:
        listed = hosts(url)
    except ArgumentError:
        return []
    return listed if len(listed) > 1 else []


def shown(url: str) -> str:
    """`url` (password already hidden) as a person reads it: a list of hosts
    in libpq's form, `postgresql://u:***@h1:5432,h2:5432/db?...`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    listed = hosts(parsed)
    if len(listed) < 2:
        return url
    user = parsed.username or ""
    if parsed.password is not None:
        user = f"{user}:***"
    login = f"{user}@" if user else ""
    query = "&".join(
        f"{k}={v}"
        for k, values in parsed.query.items()
        if k != "host"
        for v in ([values] if isinstance(values, str) else values)
    )
    return f"postgresql://{login}{','.join(listed)}/{parsed.database or ''}" + (
        f"?{query}" if query else ""
    )


def _parsed(value: str) -> URL:
    found = _URL.match(value.strip())
    # A comma in a password is no list of hosts: only after the last '@'.
    if found is not None and "," in found.group("authority").rpartition("@")[2]:
        scheme, authority, rest = found.group("scheme", "authority", "rest")
        return _listed(lambda: _libpq_hosts(scheme, authority, rest))
    try:
        return make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError(
            "is not a database URL (postgresql://... or sqlite+aiosqlite://...)"
        ) from None


def _libpq_hosts(scheme: str, authority: str, rest: str) -> URL:
    """libpq's `scheme://user:password@h1:p1,h2:p2/db?query`."""
    login, _, hostlist = authority.rpartition("@")
    user, has_password, password = login.partition(":")
    path, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key in ("host", "hostaddr") for key, _ in pairs):
        raise ValueError("lists hosts both before the database name and in host=; use one")
    return URL.create(
        scheme,
        username=unquote(user) or None,
        password=unquote(password) if has_password else None,
        database=unquote(path.lstrip("/")) or None,
        query={"host": hostlist, **_grouped(pairs)},
    )


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, str | tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else tuple(v) for k, v in grouped.items()}


def _with_hosts(url: URL) -> URL:
    """Every host as `name:port` in a `host=` of its own (one host is left
    where it is), and `target_session_attrs` checked."""
    attrs = url.query.get("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs={attrs} is not one of {', '.join(SESSION_ATTRS)}")
    listed = url.query.get("host")
    if listed is None:
        return url
    specs = [listed] if isinstance(listed, str) else list(listed)
    specs = [spec for item in specs for spec in item.split(",")]
    ports = _ports(url.query.get("port"), len(specs))
    pairs = []
    for spec, port in zip(specs, ports, strict=True):
        pairs.append(_host_port(spec, port))
    if len(pairs) == 1 and url.host is None:
        # One host given as host=...: SQLAlchemy takes it as is.
        host, port = pairs[0].rsplit(":", 1)
        return url.difference_update_query(["host", "port"]).set(host=host, port=int(port))
    if url.host is not None or url.port is not None:
        raise ValueError("lists hosts both before the database name and in host=; use one")
    return url.difference_update_query(["port"]).update_query_dict({"host": pairs})


def _ports(given: str | tuple[str, ...] | None, count: int) -> list[str | None]:
    """libpq's `port=p1,p2` (one for all, or one per host)."""
    if given is None:
        return [None] * count
    items = [given] if isinstance(given, str) else list(given)
    ports: list[str | None] = [p for item in items for p in item.split(",")]
    if len(ports) == 1:
        return ports * count
    if len(ports) != count:
        raise ValueError(f"names {count} hosts but {len(ports)} ports")
    return list(ports)


def _host_port(spec: str, port: str | None) -> str:
    found = _HOST_PORT.match(spec.strip())
    if found is None:
        what = "an IPv6 address" if spec.startswith("[") else "not a host name"
        raise ValueError(
            f"host {spec!r} in the host list is {what}; list host names or IPv4 addresses"
        )
    inline = found.group("port")
    if inline is not None and port is not None:
        raise ValueError(f"host {spec!r} has a port, and port= gives another")
    number = inline if inline is not None else port
    if number is None or number == "":
        return f"{found.group('host')}:{DEFAULT_PORT}"
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"host {spec!r} has no valid port ({number!r} is not 1 to 65535)")
    return f"{found.group('host')}:{int(number)}"
