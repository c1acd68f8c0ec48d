"""data_filters must import (and build every filter) without pulling in torch or Ray."""

import subprocess
import sys


def test_import_without_torch_or_ray():
    code = (
        "import sys\n"
        "import data_filters\n"
        "from data_filters import pii, safety, identity, dedup, decontam, build_chain\n"
        "chain = build_chain(['pii', 'safety', 'identity', 'dedup'])\n"
        "out = data_filters.run_chain(chain, {'messages': [[{'role': 'user', 'content': 'mail a@b.com'}]]})\n"
        "assert out['messages'][0][0]['content'] == 'mail <EMAIL>', out\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout
