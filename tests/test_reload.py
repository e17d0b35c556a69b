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
            path.write_text(path.read_text().replace("interval_s = 2.0", "interval_s = 0.5\nhalf_life_s = 7.0"))
            await svc.reload("test")
            applied = svc.cfg.rolling.interval_s
            # Every part runs on the new values, taken whole: none reads a half-edited object.
            seen = (svc.parts.serve.cfg is svc.cfg, svc.parts.server.cfg is svc.cfg,
                    svc.parts.serve.scoring.scorer.half_life_s)
            path.write_text(path.read_text() + "bogus = 1\n")
            with caplog.at_level(logging.ERROR):
                await svc.reload("test")
            return applied, seen, svc.cfg.rolling.interval_s
        finally:
            await svc.stop()

    applied, seen, after_bad = asyncio.run(main())
    assert applied == 0.5 and after_bad == 0.5
    assert seen == (True, True, 7.0)
    assert cfg.rolling.interval_s == 2.0 and cfg.rolling.half_life_s != 7.0  # replaced, never edited
    assert "bogus: unknown key" in caplog.text and "keeping the running configuration" in caplog.text


def test_hundreds_of_prompt_files_at_once_reach_clients_as_a_few_messages(tmp_path, tiny_bundle):
    """300 files dropped in together: clients get a few `prompts` messages of the latest
    set (not one growing copy per file, which closed them as too slow), the last one
    with the 256 files the folder may hold: the emotions in use before keep their places
    (files named before theirs do not push them out); removing them all is as quick."""
    import time

    from emoclap.prompts import MAX_FILES

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts, ignore=shutil.ignore_patterns("alternatives"))
    existing = len(list(prompts.glob("*.toml")))
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.prompts = str(prompts)

    async def until_set(ws, size, errors):
        # The set may reach its size a moment before the last refused file is named.
        count = 0
        while True:
            msg = (await receive(ws, "prompts", 1, timeout=60))[0]
            count += 1
            if len(msg["emotions"]) == size and len(msg["errors"]) == errors:
                return count, msg

    async def main():
        svc = Service(cfg, ("serve",))
        await svc.start()
        try:
            async with websockets.connect(url(svc, "/ws"), max_size=None) as ws:
                await receive(ws, "hello", 1)
                started = time.monotonic()
                for i in range(300):
                    (prompts / f"bulk_{i:03d}.toml").write_text(NEW.replace("Calm", f"Calm {i}")
                                                                .replace("calm.", f"calm {i}."))
                added = await until_set(ws, MAX_FILES, 300 + existing - MAX_FILES)
                add_s = time.monotonic() - started
                started = time.monotonic()
                for path in prompts.glob("bulk_*.toml"):
                    path.unlink()
                removed = await until_set(ws, existing, 0)
                return added, add_s, removed, time.monotonic() - started, svc.parts.server.health()
        finally:
            await svc.stop()

    (n_added, added), add_s, (n_removed, removed), remove_s, health = asyncio.run(main())
    print(f"\n300 files: 256 in use after {add_s:.1f} s ({n_added} messages), all gone after "
          f"{remove_s:.1f} s ({n_removed} messages)")
    assert all("more than 256 prompt files" in e["message"] for e in added["errors"])
    names = {e["name"] for e in added["emotions"]}
    assert {p.stem for p in (REPO / "prompts").glob("*.toml")} <= names  # purchase_intention stays
    assert n_added <= 2 * add_s / 0.5 + 2 and n_removed <= 2 * remove_s / 0.5 + 2
    assert remove_s < 10
    assert removed["errors"] == [] and not [p for p in health["problems"] if "prompt file" in p]
