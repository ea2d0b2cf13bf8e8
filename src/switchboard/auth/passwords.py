"""Password hashing with argon2id (argon2-cffi's defaults: RFC 9106's low-memory profile).

Hashing and checking cost tens of milliseconds of CPU on purpose, so both run in a worker
thread and never stall the event loop. `verify` takes the same time whether or not there is a
stored hash: for an unknown user it checks against a throwaway hash, so timing does not tell
an attacker which e-mail addresses exist.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from switchboard.errors import InvalidRequest

MIN_LENGTH = 8
MAX_LENGTH = 1024
_HASHER = PasswordHasher()  # parameters only; holds no state


def check_password(password: object, param: str = "password") -> str:
    if not isinstance(password, str) or not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidRequest(
            f"'{param}' must be a string of {MIN_LENGTH} to {MAX_LENGTH} characters", param=param
        )
    return password


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, check_password(password))


@cache
def _decoy() -> str:
    return _HASHER.hash(secrets.token_urlsafe(16))


def _verify(stored: str | None, password: str) -> bool:
    try:
        ok = _HASHER.verify(stored or _decoy(), password[:MAX_LENGTH])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and stored is not None


async def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; always False (in the same time) for None."""
    return await asyncio.to_thread(_verify, stored, password)
