"""Generated API keys: format, display prefix, stored digest, nothing leaked by repr."""

from __future__ import annotations

from heliox.admin.keygen import KEY_ALPHABET, display_prefix, generate_api_key
from heliox.snapshot import hash_key


def test_format_prefix_and_hash() -> None:
    key = generate_api_key()
    assert key.plaintext.startswith("hx_live_") and len(key.plaintext) == 8 + 32
    assert set(key.plaintext[8:]) <= set(KEY_ALPHABET)
    assert key.key_prefix == key.plaintext[:12] == display_prefix(key.plaintext)
    assert key.key_hash == hash_key(key.plaintext)
    assert key.plaintext not in repr(key)


def test_alphabet_is_url_safe_and_unambiguous() -> None:
    assert not set("0O1lIo") & set(KEY_ALPHABET)
    assert KEY_ALPHABET.isalnum() and KEY_ALPHABET.isascii()
    assert len(set(KEY_ALPHABET)) == len(KEY_ALPHABET)


def test_keys_do_not_repeat() -> None:
    assert len({generate_api_key().plaintext for _ in range(1000)}) == 1000
