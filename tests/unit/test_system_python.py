"""The provider client under the system Python, the interpreter PL/Python runs: Debian 12 ships
urllib3 1.26 and requests 2.28 there (python3-urllib3, python3-requests), older than the
virtual environment's. ``embed_query`` in the database imports this same module."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pgingest.testing.fake_provider import FakeEmbeddingServer

SRC = Path(__file__).resolve().parents[2] / "src"
SYSTEM_PYTHON = "/usr/bin/python3"

_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import urllib3
from pgingest import providers
p = providers.OpenAICompatibleProvider(sys.argv[2], "fake-384", 384, max_retries=0)
print(urllib3.__version__, p.embed(["one", "two"]).shape)
"""


def test_the_client_embeds_under_the_system_python(fake: FakeEmbeddingServer) -> None:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", _SCRIPT, str(SRC), fake.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["(2,", "384)"]
