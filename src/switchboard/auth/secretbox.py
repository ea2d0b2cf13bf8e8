"""Encryption at rest for the secrets Switchboard must be able to read back.

Hashes protect what we only ever compare (API keys, the admin key). Some secrets have to be
sent on again: an OIDC client secret goes to the identity provider's token endpoint, an LDAP
service-account password to the directory. Those are stored encrypted with Fernet
(AES-128-CBC + HMAC-SHA256, from `cryptography`) under one platform key:

* ``SWITCHBOARD_SECRET_KEY`` when set (a Fernet key: 32 random bytes, url-safe base64), else
* the file ``secret.key`` in the data directory, generated at first use with mode 0600.

Lose the key and every stored secret is unreadable (the identity providers must be given
their secrets again); leak it together with a database backup and those secrets are exposed.
Back it up, separately from the database. Several keys may be given, comma-separated, newest
first: new secrets are encrypted with the first, old ones still decrypt (key rotation).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from switchboard.errors import ConfigError
from switchboard.settings import Settings

KEY_FILE = "secret.key"


class SecretBox:
    """Encrypts and decrypts short text secrets with the platform key(s)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("at least one secret key is needed")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except ValueError as exc:
            raise ConfigError(
                "SWITCHBOARD_SECRET_KEY must be Fernet keys (32 bytes, url-safe base64), "
                "comma-separated; make one with: python -c 'from cryptography.fernet import "
                "Fernet; print(Fernet.generate_key().decode())'"
            ) from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str, *, ttl: int | None = None) -> str:
        """The plaintext; `ConfigError` when no key opens it (wrong or lost key), or
        `ValueError` when ``ttl`` is given and the token is older than that many seconds."""
        try:
            return self._fernet.decrypt(token.encode(), ttl=ttl).decode()
        except InvalidToken as exc:
            if ttl is not None:
                raise ValueError("expired or forged token") from exc
            raise ConfigError(
                "a stored secret cannot be decrypted: SWITCHBOARD_SECRET_KEY (or the data "
                "directory's secret.key) is not the key it was encrypted with"
            ) from exc


def load_secret_box(settings: Settings) -> SecretBox:
    """The platform's box: from the setting, else from (or into) the data directory's file."""
    if settings.secret_key is not None:
        raw = settings.secret_key.get_secret_value()
        return SecretBox([k.strip().encode() for k in raw.split(",") if k.strip()])
    return SecretBox([_key_file(settings.data_dir / KEY_FILE)])


def _key_file(path: Path) -> bytes:
    """Read the key file, creating it (0600, never overwritten) when it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made earlier, or by another worker just now
        for _ in range(50):  # the other writer may not have finished its one write
            text = path.read_bytes().strip()
            if text:
                return text
            time.sleep(0.01)
        raise ConfigError(f"the secret key file {path} is empty") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key + b"\n")
    return key
