import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def labelled():
    rows = [json.loads(line) for line in (FIXTURES / "labelled.jsonl").read_text().splitlines()]
    assert len(rows) >= 200
    return rows
