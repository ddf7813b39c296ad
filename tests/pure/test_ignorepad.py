"""Which ciphers need asyncssh's ignore packet before each packet (RFC 4251 §9.3.1)."""

import pytest

from relay.ssh.ignorepad import padding_needed


@pytest.mark.parametrize(
    "name", ["aes128-cbc", b"3des-cbc", "rijndael-cbc@lysator.liu.se", "", b""]
)
def test_cbc_and_not_yet_negotiated_keep_it(name: str | bytes) -> None:
    assert padding_needed(name)


@pytest.mark.parametrize(
    "name", ["aes128-gcm@openssh.com", b"chacha20-poly1305@openssh.com", "aes256-ctr"]
)
def test_ciphers_without_chained_ivs_drop_it(name: str | bytes) -> None:
    assert not padding_needed(name)
