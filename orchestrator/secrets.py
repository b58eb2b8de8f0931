"""Sealing secret values on their way to a guest (a root password in first-boot
configuration): the api seals a value before anything is stored, only agents unseal it, to
write it to the guest. Redis, job records, events and logs see the sealed token or nothing.

Fernet (from `cryptography`: AES-128-CBC with an HMAC-SHA256, a timestamp, a random IV)
with the key `VMORCH_GUEST_SECRET_KEY` that the api and the agents share (`vmorch up`
makes one for its stack). Without a key, secret values are refused.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken

SEALED = "sealed:v1:"


class Unsealable(ValueError):
    """A sealed value that this key cannot open (another key, or not a token)."""


class Sealer:
    def __init__(self, key: str):
        self._fernet = Fernet(key.encode())
        self._mac_key = hashlib.sha256(b"vmorch-digest:" + key.encode()).digest()

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, value: str) -> str:
        return SEALED + self._fernet.encrypt(value.encode()).decode()

    def unseal(self, sealed: str) -> str:
        if not sealed.startswith(SEALED):
            raise Unsealable("not a sealed value")
        try:
            return self._fernet.decrypt(sealed[len(SEALED) :].encode()).decode()
        except (InvalidToken, UnicodeDecodeError) as e:
            raise Unsealable("this key cannot open the sealed value") from e

    def digest(self, value: str) -> str:
        """A keyed digest (HMAC-SHA256): what a request's fingerprint (idempotency) holds
        in place of a secret, the same for the same value, useless without the key."""
        return hmac.new(self._mac_key, value.encode(), hashlib.sha256).hexdigest()


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED)
