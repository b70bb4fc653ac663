"""release_freed_memory: glibc's malloc_trim where there is one; generation calls it after compiles."""
import sys

import pytest

from poetry_gpt.memory import release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_works_on_glibc():
    assert release_freed_memory() is True
