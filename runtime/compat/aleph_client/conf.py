"""`aleph_client.conf.settings`: the legacy settings, read from ALEPH_* variables.

Inside a program VM the init sets ALEPH_API_HOST, ALEPH_API_UNIX_SOCKET,
ALEPH_REMOTE_CRYPTO_HOST, ALEPH_REMOTE_CRYPTO_UNIX_SOCKET and ALEPH_ADDRESS_TO_USE (the
VM's item hash), so the defaults reach the network and the node's signer through the
guest API socket, as aleph-client did on the official runtime.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    PRIVATE_KEY_FILE: Path = Field(
        default=Path("device.key"), description="Path to the private key used to sign messages"
    )
    PRIVATE_KEY_STRING: str | None = None
    API_HOST: str = "https://api2.aleph.im"
    API_UNIX_SOCKET: str | None = None
    REMOTE_CRYPTO_HOST: str | None = None
    REMOTE_CRYPTO_UNIX_SOCKET: str | None = None
    ADDRESS_TO_USE: str | None = None

    DEFAULT_CHANNEL: str = "TEST"
    DEFAULT_RUNTIME_ID: str = "bd79839bf96e595a06da5ac0b6ba51dea6f7e2591bb913deccded04d831d29f4"
    DEFAULT_VM_MEMORY: int = 128
    DEFAULT_VM_VCPUS: int = 1
    DEFAULT_VM_TIMEOUT: float = 30.0

    VM_URL_PATH: str = "https://aleph.sh/vm/{hash}"
    VM_URL_HOST: str = "https://{hash_base32}.aleph.sh"

    model_config = SettingsConfigDict(
        env_prefix="ALEPH_", case_sensitive=False, env_file=".env", extra="ignore"
    )


settings = Settings()
