"""What ``roomcast up`` prints about the Admin UI: how to open it against the local cluster."""

from __future__ import annotations

from roomcast.cli.main import admin_ui_hint
from roomcast.config import Settings

HASH = "$2b$04$" + "a" * 53


def test_up_says_how_to_open_the_admin_ui() -> None:
    """With the UI on: the origins that may open it, every node's URL, the username, and the
    namespace when it is not the UI's default."""
    settings = Settings().replace(
        **{
            "admin_ui.enabled": True,
            "admin_ui.password_hash": HASH,
            "admin_ui.namespace": "/ops",
            "up.base_port": 4000,
        }
    )
    text = "\n".join(admin_ui_hint(settings, 2))
    assert "https://admin.socket.io" in text
    assert "http://127.0.0.1:4000, http://127.0.0.1:4001" in text
    assert "username: admin" in text
    assert "admin namespace /ops" in text


def test_up_says_how_to_turn_the_admin_ui_on() -> None:
    """With the UI off (the default), one line says which keys turn it on."""
    [line] = admin_ui_hint(Settings(), 2)
    assert "enabled = true" in line and "password_hash" in line
