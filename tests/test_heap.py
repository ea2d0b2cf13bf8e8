"""The server freezes what it allocated at start-up out of the collector's way, and gives it
back when it stops."""

from __future__ import annotations

import gc
from pathlib import Path

import httpx

from conftest import gateway_config, start_gateway
from fakes.server import ServerThread
from switchboard.heap import YOUNG_THRESHOLD


def test_the_startup_heap_is_frozen_while_serving_and_thawed_after(
    tmp_path: Path, fake_openai: ServerThread, fake_ollama: ServerThread
) -> None:
    defaults = gc.get_threshold()
    config = gateway_config(fake_openai.url, fake_ollama.url)
    server, _app = start_gateway(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}", config)
    with server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000  # modules, config, metadata: all of it
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == defaults
