"""Prompt edits reach clients as `prompts` messages; a configuration reload applies what
it can and keeps running on a bad file."""
import asyncio
import logging
import shutil

import websockets

from daemon.config import load_config
from daemon.service import Service
from tests.servicekit import REPO, receive, service_config, url

NEW = """label = "Calm – tense"
[negative]
label = "Tense"
en = ["I am tense."]
[positive]
label = "Calm"
en = ["I am calm."]
"""


def test_prompt_files_edited_while_running(tmp_path, tiny_bundle):
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.prompts = str(prompts)

    async def main():
        svc = Service(cfg, ("serve",))
        await svc.start()
        try:
            async with websockets.connect(url(svc, "/ws")) as ws:
                await receive(ws, "hello", 1)
                (prompts / "calm.toml").write_text(NEW)
                added = await receive(ws, "prompts", 1, timeout=20)
                (prompts / "calm.toml").write_text("label = \n")  # broken: last good stays
                await asyncio.sleep(1.5)
                kept = svc.parts.bank.emotions
                (prompts / "calm.toml").unlink()
                removed = await receive(ws, "prompts", 1, timeout=20)
                while any(e["name"] == "calm" for e in removed[0]["emotions"]):
                    removed = await receive(ws, "prompts", 1, timeout=20)  # skip stale ones
            return added, kept, removed
        finally:
            await svc.stop()

    added, kept, removed = asyncio.run(main())
    calm = [e for e in added[0]["emotions"] if e["name"] == "calm"]
    assert calm == [{"name": "calm", "label": "Calm – tense", "negative": "Tense",
                     "positive": "Calm", "roles": None}]
    assert "calm" in kept
    assert "calm" not in {e["name"] for e in removed[0]["emotions"]}


def test_config_reload_applies_or_keeps(tmp_path, tiny_bundle, caplog):
    path = tmp_path / "config.toml"
    path.write_text(f'bundle = "{tiny_bundle}"\nprompts = "{REPO / "prompts"}"\n'
                    f'cache = "c.sqlite3"\n[server]\nport = 0\n[rolling]\ninterval_s = 2.0\n')
    cfg = load_config(path)

    async def main():
        svc = Service(cfg, ("serve",), config_path=str(path))
        await svc.start()
        try:
            path.write_text(path.read_text().replace("interval_s = 2.0", "interval_s = 0.5"))
            await svc.reload("test")
            applied = svc.cfg.rolling.interval_s
            path.write_text(path.read_text() + "bogus = 1\n")
            with caplog.at_level(logging.ERROR):
                await svc.reload("test")
            return applied, svc.cfg.rolling.interval_s
        finally:
            await svc.stop()

    applied, after_bad = asyncio.run(main())
    assert applied == 0.5 and after_bad == 0.5
    assert "bogus: unknown key" in caplog.text and "keeping the running configuration" in caplog.text
