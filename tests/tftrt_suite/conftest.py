import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def build_cache_in_tmp(tmp_path_factory):
    """Engines built here keep their tactic choices in a build cache of this session, not in
    the user's ~/.cache/tftrt (unless TFTRT_CACHE_DIR says where)."""
    before = os.environ.get("TFTRT_CACHE_DIR")
    if before is None:
        os.environ["TFTRT_CACHE_DIR"] = str(tmp_path_factory.mktemp("build_cache"))
    yield
    if before is None:
        os.environ.pop("TFTRT_CACHE_DIR", None)
