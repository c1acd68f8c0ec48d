"""`posttrain demo` chains the stages: filter -> sft (on the clean output) -> rm (from the sft output)."""

import json

from tests.posttrain.test_sft_cli import posttrain


def test_demo_pipeline_on_tiny_configs(tmp_path):
    proc = posttrain("demo", "configs=configs/tiny", f"output_root={tmp_path}")
    sft = json.loads((tmp_path / "sft" / "posttrain.json").read_text())
    assert (tmp_path / "filter" / "DONE").is_file() and (tmp_path / "sft" / "DONE").is_file()
    assert sft["inputs"]["data"] == str(tmp_path / "filter" / "clean.jsonl")
    assert "student KD loss on held-out rows: before" in proc.stdout
    rm = json.loads((tmp_path / "rm" / "posttrain.json").read_text())
    assert (tmp_path / "rm" / "DONE").is_file() and rm["config"]["init"] == str(tmp_path / "sft")
    # a second run reuses every finished stage
    again = posttrain("demo", "configs=configs/tiny", f"output_root={tmp_path}")
    assert again.stdout.count("reusing finished") == 3  # filter, sft, rm
