"""Fixtures of the runtime tests: the kernel library is compiled once per session."""
import pytest

from tests.runtime.kernels import build_kernels


@pytest.fixture(scope="session")
def kernels_so(tmp_path_factory):
    return build_kernels(tmp_path_factory.mktemp("kernels") / "kernels.so")
