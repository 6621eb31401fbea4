"""``mmembed serve``'s rules that need no process (multimodal_embed/serving/cli.py); the process itself is in
test_serve_process.py."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("host,loopback", [("localhost", True), ("127.0.0.1", True), ("127.9.9.9", True),
                                           ("::1", True), ("", False), ("0.0.0.0", False), ("::", False),
                                           ("192.168.1.10", False), ("example.com", False), ("localhost.", False),
                                           (" 127.0.0.1", False)])
def test_one_loopback_rule_for_the_server_and_the_demo(host, loopback):
    from multimodal_embed import demo
    from multimodal_embed.serving.cli import is_loopback

    assert demo.is_loopback is is_loopback  # one home: the demo calls the server's rule
    assert is_loopback(host) is loopback
