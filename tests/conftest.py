"""Shared fixtures: synthetic corpora are spoken, and the tiny bundle built, once per test run."""
from __future__ import annotations

import shutil

import pytest

from tests.tiny_bundle import tiny_bundle  # noqa: F401 (a fixture for every test module)
from trainer.synth.corpus import CorpusOptions, build_corpus


def _need_speech_tools():
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run ./bootstrap test, which installs them")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """3 sessions x 1 dialogue x 12 turns (36 utterances), seed 0."""
    _need_speech_tools()
    out = tmp_path_factory.mktemp("small-corpus")
    build_corpus(out, CorpusOptions.small())
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The default corpus: 6 sessions x 4 dialogues x 20 turns (480 utterances), seed 0."""
    _need_speech_tools()
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, CorpusOptions())
    return out
