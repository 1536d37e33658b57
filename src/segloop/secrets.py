"""Secrets are named in files as ``${ENV_VAR}`` and resolved from the environment at run time.

Files never hold secrets, so config models only ever hold the reference; the value lives in a
``pydantic.SecretStr`` for as long as it is needed and is never written to run history,
reports or rejects tables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, SecretStr

from segloop.errors import SecretError

ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _check_env_ref(value: str) -> str:
    if not ENV_REF.match(value):
        raise ValueError(
            "secrets are not written in files; name an environment variable instead, "
            "e.g. ${SEGMENT_WRITE_KEY}"
        )
    return value


SecretRef = Annotated[str, AfterValidator(_check_env_ref)]
"""A config field holding ``${ENV_VAR}``: the name of a secret, never the secret itself."""


def env_name(ref: str) -> str:
    match = ENV_REF.match(ref)
    if not match:
        raise SecretError(f"`{ref}` is not an environment variable reference like ${{NAME}}")
    return match.group(1)


def missing_env(refs: Iterable[str | None]) -> list[str]:
    """Names of the variables among ``${NAME}`` references that are not set (or empty), in order.

    Values that are not references (e.g. an endpoint written as a plain URL) are skipped.
    """
    names: list[str] = []
    for ref in refs:
        match = ENV_REF.match(ref) if ref else None
        if match and not os.environ.get(match.group(1)) and match.group(1) not in names:
            names.append(match.group(1))
    return names


def resolve_secret(ref: str, where: str = "", also: Iterable[str | None] = ()) -> SecretStr:
    """Read the variable named by ``${NAME}``; a missing or empty variable is a clear error.

    ``also`` are the other references the same node or warehouse will need: when this one
    is missing, the error names every missing one at once, not one per run.
    """
    name = env_name(ref)
    value = os.environ.get(name)
    if not value:
        names = [name, *(other for other in missing_env(also) if other != name)]
        place = f" (used by {where})" if where else ""
        if len(names) == 1:
            raise SecretError(f"environment variable {name} is not set{place}; export {name}=... before running")
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        exports = " ".join(f"{n}=..." for n in names)
        raise SecretError(f"environment variables {listed} are not set{place}; export {exports} before running")
    return SecretStr(value)
