"""Settings as operators know them: by environment variable. Turns validation
errors into one line per problem naming the variable, in plain words, and
finds `PERSISTER_*` variables nothing reads (a misspelt name would otherwise
be ignored in silence). No I/O."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from worker.core.settings import ENV_PREFIX

# Variables read outside `Settings` (the secrets directory, the local stack).
OTHER_VARIABLES = frozenset(
    {"PERSISTER_SECRETS_DIR", "PERSISTER_STACK_CACHE_DIR", "PERSISTER_STACK_DIR"}
)
# Never echoed back in an error: a value could be (or hold) a secret.
SECRET_FIELDS = frozenset({"kafka_sasl_password", "database_url"})
# Fields whose usual variable has no prefix.
PLAIN_ALIASES = {
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "database_url": "DATABASE_URL",
}
# What the first of a field's alias choices is reported as.
ALIAS_FIELDS = {f"{ENV_PREFIX}{v}": k for k, v in PLAIN_ALIASES.items()}
SHOWN_VALUE_CHARS = 60


def variable(location: Iterable[int | str]) -> str:
    """The environment variable of a field: ("batch_size",) -> PERSISTER_BATCH_SIZE,
    ("services", "metrics_server", "enabled") -> PERSISTER_SERVICES__METRICS_SERVER__ENABLED."""
    parts = [ALIAS_FIELDS.get(str(p), str(p)) for p in location]
    if len(parts) == 1 and parts[0] in PLAIN_ALIASES:
        return PLAIN_ALIASES[parts[0]]
    if len(parts) == 1 and parts[0].isupper():
        return parts[0]  # already a variable (an alias)
    return ENV_PREFIX + "__".join(parts).upper()


def known_variables(model: type[BaseModel], prefix: str = ENV_PREFIX) -> set[str]:
    """Every variable `model` reads, nested models through `__`."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= known_variables(annotation, f"{prefix}{name}__")
    return names | set(PLAIN_ALIASES.values())


def unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One warning per `PERSISTER_*` variable nothing reads, with the closest
    known name when there is one."""
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"warning: {name} is not a setting and is ignored{hint}")
    return warnings


def _plain(error: ErrorDetails) -> str:
    """Pydantic's message for one error, in words about the value."""
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("above", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("below", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    plain = {
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "bool_parsing": "must be true or false",
        "dict_type": "must be a JSON object",
        "json_invalid": "is not valid JSON",
        "path_not_file": "is not a file that exists",
        "string_type": "must be text",
    }
    if kind in plain:
        return plain[kind]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    message = str(error["msg"])
    return re.sub(r"^(Value error|Assertion failed), ", "", message)


def describe_error(error: ErrorDetails) -> str:
    """One line for one validation error, naming the variable."""
    location = tuple(ALIAS_FIELDS.get(str(p), p) for p in error["loc"])
    if not location:
        return f"invalid settings: {_plain(error)}"
    name = variable(location)
    value = error.get("input")
    shown = ""
    if (
        str(location[0]) not in SECRET_FIELDS
        and isinstance(value, str | int | float)
        and len(str(value)) <= SHOWN_VALUE_CHARS
    ):
        shown = f"={value}"
    return f"invalid setting {name}{shown}: {_plain(error)}"


def describe_source_error(message: str) -> str:
    """One line for a value the settings source could not even parse (a
    complex setting that is not JSON)."""
    found = re.search(r'field "([^"]+)"', message)
    name = variable([found.group(1)]) if found else "a setting"
    return f"invalid setting {name}: is not valid JSON"


def describe_errors(errors: Iterable[ErrorDetails]) -> list[str]:
    return [describe_error(e) for e in errors]
