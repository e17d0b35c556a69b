import pytest

from tests.tiny_bundle import build_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny real bundle, built once per test session; tests must not modify it."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")
