"""Settings shared by every kiln test."""
import os

import pytest
from hypothesis import settings

# Deterministic hypothesis runs: the same examples on every machine and every run.
settings.register_profile("kiln", derandomize=True, deadline=None, max_examples=30,
                          database=None, print_blob=True)
settings.load_profile("kiln")


class _RepoRootIsNotATestPackage:
    """The repo root holds `__init__.py` (it *is* the kiln package), so pytest would
    collect it as a Package and import that file as a test module, under a name made
    from the checkout's directory. For a checkout named e.g. `kiln-main` or `clone.x`
    that import fails ("attempted relative import with no known parent package") and
    every test errors. Collect the root as a plain directory instead."""

    def pytest_collect_directory(self, path, parent):
        if path == parent.config.rootpath and (path / "__init__.py").is_file():
            return pytest.Dir.from_parent(parent, path=path)
        return None


@pytest.fixture(scope="session", autouse=True)
def _session_kernel_cache(tmp_path_factory):
    """Compiles in tests share one kernel cache per session, never the user's
    ~/.cache/kiln/kernels (tests that test the cache pass their own folder)."""
    os.environ["KILN_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernel-cache"))


def pytest_configure(config):
    config.pluginmanager.register(_RepoRootIsNotATestPackage(), "kiln-repo-root-dir")
