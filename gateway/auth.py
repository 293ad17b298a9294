"""API keys: configured in the environment or a file, kept only as sha256 hashes, with scopes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from fastapi import Request

from gateway.problems import Problem
from gateway.settings import GatewaySettings

API_KEY_HEADER = "X-API-Key"


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[Scope]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_entry(name: str, scopes: list[str]) -> tuple[str, str]:
    """A fresh key and the NAME:sha256:<hex>:SCOPES entry that stores it hashed."""
    key = "fs_" + secrets.token_urlsafe(32)
    parsed = "+".join(Scope(s).value for s in scopes)
    return key, f"{name}:sha256:{hash_key(key)}:{parsed}"


def parse_entries(text: str) -> dict[str, ApiKey]:
    """NAME:KEY:SCOPES entries (commas or lines) -> {sha256 of key: ApiKey}."""
    keys: dict[str, ApiKey] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) == 4 and parts[1] == "sha256":
            name, digest, scopes = parts[0], parts[2].lower(), parts[3]
        elif len(parts) == 3:
            name, digest, scopes = parts[0], hash_key(parts[1]), parts[2]
        else:
            raise ValueError(f"API key entry {parts[0]!r} is not NAME:KEY:SCOPES")
        try:
            scope_set = frozenset(Scope(s) for s in scopes.split("+") if s)
        except ValueError as error:
            raise ValueError(f"API key {name!r}: {error}; scopes are read, write, admin") from None
        if len(digest) != 64 or not scope_set:
            raise ValueError(f"API key {name!r} needs a key (or sha256:<64 hex>) and scopes")
        keys[digest] = ApiKey(name, scope_set)
    return keys


def load_keys(settings: GatewaySettings) -> dict[str, ApiKey]:
    text = settings.api_keys.get_secret_value() if settings.api_keys else ""
    if settings.api_keys_file is not None:
        text += "\n" + settings.api_keys_file.read_text()
    return parse_entries(text)


class Authenticator:
    def __init__(self, keys: dict[str, ApiKey]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, request: Request, scope: Scope) -> ApiKey | None:
        if not self._keys:
            return None
        key = request.headers.get(API_KEY_HEADER)
        if not key:
            raise Problem(
                401,
                "missing_api_key",
                f"send an API key in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        found = self._keys.get(hash_key(key))
        if found is None:
            raise Problem(
                401,
                "invalid_api_key",
                "the API key is not known",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        if scope not in found.scopes:
            raise Problem(
                403,
                "insufficient_scope",
                f"the API key lacks the {scope} scope",
                {"scope": str(scope)},
            )
        return found
