"""`posttrain filter` end to end: accounting, outputs, overrides, bad input, datasets vs Ray Data."""

import json
import shutil
from pathlib import Path

import pytest

from posttrain import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny" / "filter.yaml"


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _run(capsys, *argv):
    code = cli.main(["filter", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("filter") / "out"
    assert (
        cli.main(
            [
                "filter",
                "--config",
                str(TINY),
                "--output",
                str(out),
                f"decontam={{eval_files: [{ROOT / 'data/tiny/eval.jsonl'}]}}",
                f"input={ROOT / 'data/tiny/raw.jsonl'}",
            ]
        )
        == 0
    )
    return out


def test_every_input_row_is_accounted_for(tiny_run):
    lines = [line for line in (ROOT / "data/tiny/raw.jsonl").read_text().splitlines() if line.strip()]
    clean, rejects = _jsonl(tiny_run / "clean.jsonl"), _jsonl(tiny_run / "rejects.jsonl")
    dropped = [r for r in rejects if r["action"] == "dropped"]
    redacted = [r for r in rejects if r["action"] == "redacted"]
    # every line is either kept (clean.jsonl) or dropped (rejects.jsonl), never both, never neither
    assert len(clean) + len(dropped) == len(lines)
    assert sorted(r["row"] for r in dropped) == sorted(set(r["row"] for r in dropped))
    clean_ids = [r["id"] for r in clean]
    assert not set(clean_ids) & {r.get("id") for r in dropped}
    # redacted rows are kept and also recorded, with the span and the original row
    assert redacted and {r["id"] for r in redacted} <= set(clean_ids)
    for r in redacted:
        for reason in r["reasons"]:
            turn = r["data"]["messages"][reason["turn"]]["content"]
            assert turn[slice(*reason["span"])] == reason["text"]
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["rows_in"] == len(lines)
    assert report["rows_kept"] == len(clean) and report["rows_dropped"] == len(dropped)
    assert (tiny_run / "DONE").exists() and (tiny_run / "posttrain.json").exists()


def test_planted_problems_are_caught(tiny_run):
    clean_ids = {r["id"] for r in _jsonl(tiny_run / "clean.jsonl")}
    rejects = {r.get("id") or r["source"]: r for r in _jsonl(tiny_run / "rejects.jsonl")}
    by_filter = {}
    for r in rejects.values():
        by_filter.setdefault(r["filter"], set()).add(r.get("id"))
    assert not any(i.startswith(("unsafe-", "identity-", "contam-")) for i in clean_ids)
    assert any(i.startswith("unsafe-") for i in by_filter["safety"])
    assert any(i.startswith("identity-") for i in by_filter["identity"])
    assert any(i.startswith("contam-") for i in by_filter["decontam"])
    assert by_filter["dedup"] and by_filter["input"]
    for row in _jsonl(tiny_run / "clean.jsonl"):
        if row["id"].startswith("pii-"):
            text = row["messages"][0]["content"]
            assert "@" not in text and "<" in text, text
    reasons = [r["reasons"][0]["reason"] for r in rejects.values() if r["filter"] == "input"]
    assert any(x.startswith("invalid JSON") for x in reasons)
    assert "missing 'messages'" in reasons
    assert any("content must be a string" in x for x in reasons)
    # the row's other columns survive the round trip
    raw = {}
    for line in (ROOT / "data/tiny/raw.jsonl").read_text().splitlines():
        if line.startswith('{"id": "math-'):
            row = json.loads(line)
            raw[row["id"]] = row
    for row in _jsonl(tiny_run / "clean.jsonl"):
        if row["id"] in raw:
            assert row == raw[row["id"]]


def test_report_has_counts_examples_throughput(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    for name in ("safety", "identity", "decontam", "pii", "dedup", "input"):
        assert report["per_filter"][name]["examples"], name
    assert report["per_filter"]["pii"]["redacted_rows"] > 0
    assert report["mb_per_s"] > 0 and report["rows_per_s"] > 0
    assert "| pii |" in (tiny_run / "report.md").read_text()


def test_refuses_to_clobber_and_overwrites_on_request(tiny_run, capsys, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(tiny_run, out)
    args = [
        "--config",
        str(TINY),
        "--output",
        str(out),
        "--input",
        str(ROOT / "data/tiny/raw.jsonl"),
        f"decontam={{eval_files: [{ROOT / 'data/tiny/eval.jsonl'}]}}",
    ]
    code, _, err = _run(capsys, *args)
    assert code == 2 and "already holds a finished run" in err and "Traceback" not in err
    code, _, _ = _run(capsys, *args, "--overwrite")
    assert code == 0 and (out / "DONE").exists()
    assert _jsonl(out / "clean.jsonl") == _jsonl(tiny_run / "clean.jsonl")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_errors(capsys, tmp_path):
    good = json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}]})
    raw = _write(tmp_path / "raw.jsonl", [good, "{broken", good])
    base = ["--input", str(raw), "--output", str(tmp_path / "out"), "filters=[pii]"]
    code, _, err = _run(capsys, *base, "on_bad_row=error")
    assert code == 2 and f"{raw}:2: invalid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "DONE").exists()
    code, _, err = _run(capsys, *base[:-1], "filters=[pii, dedupe]")
    assert code == 2 and "unknown filter 'dedupe' (did you mean 'dedup'?)" in err
    code, _, err = _run(capsys, *base[:-1], f"decontam={{eval_files: [{tmp_path / 'missing.jsonl'}]}}")
    assert code == 2 and "eval file not found" in err and "missing.jsonl" in err
    code, _, err = _run(
        capsys, "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o2"), "filters=[pii]"
    )
    assert code == 2 and "input not found" in err
    code, _, err = _run(capsys, *base, "pii={actoin: drop}")
    assert code == 2 and "did you mean 'action'" in err


def test_parquet_and_hf_dir_inputs_match_jsonl(capsys, tmp_path):
    import datasets

    rows = [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": f"row {i}: mail me at u{i}@x.org"},
                {"role": "assistant", "content": "ok"},
            ],
            "task": "demo",
        }
        for i in range(6)
    ]
    rows.append(dict(rows[0], id="copy"))
    jsonl = _write(tmp_path / "in.jsonl", [json.dumps(r) for r in rows])
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "in.parquet"))
    ds.save_to_disk(str(tmp_path / "in_dir"))
    outs = []
    for src in (jsonl, tmp_path / "in.parquet", tmp_path / "in_dir"):
        out = tmp_path / f"out_{Path(src).name}"
        code, _, err = _run(capsys, "--input", str(src), "--output", str(out), "filters=[pii, dedup]")
        assert code == 0, err
        outs.append(_jsonl(out / "clean.jsonl"))
    assert outs[0] == outs[1] == outs[2]
    assert len(outs[0]) == 6 and outs[0][0]["messages"][0]["content"] == "row 0: mail me at <EMAIL>"


def test_datasets_and_ray_data_give_the_same_output(tmp_path):
    """The same filter functions under datasets.map(num_proc=2) and Ray Data map_batches (local Ray)."""
    from posttrain import cluster
    from posttrain import filter as stage

    raw = ROOT / "data/demo/raw.jsonl"
    common = dict(input=str(raw), batch_size=64, overwrite=True)
    local = stage.run(stage.Config(output=str(tmp_path / "local"), num_proc=2, **common))
    try:
        on_ray = stage.run(stage.Config(output=str(tmp_path / "ray"), use_ray=True, **common))
    finally:
        cluster.shutdown()
    a, b = Path(local), Path(on_ray)
    assert (a / "clean.jsonl").read_text() == (b / "clean.jsonl").read_text()
    assert (a / "rejects.jsonl").read_text() == (b / "rejects.jsonl").read_text()
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["engine"] == "datasets" and rb["engine"] == "ray"
    assert ra["per_filter"] == rb["per_filter"] and ra["rows_kept"] == rb["rows_kept"] > 300


def test_other_columns_and_message_keys_round_trip(capsys, tmp_path):
    row = {
        "meta": {"source": "forum", "tags": ["a", "b"]},
        "id": "x1",
        "score": 0.5,
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "sys"},
            {"role": "user", "content": "Mail me: ann@corp.io"},
            {"role": "assistant", "content": "Done.", "weight": 0},
        ],
    }
    other = {"id": "x2", "messages": [{"role": "user", "content": "plain"}], "score": None}
    src = _write(tmp_path / "in.jsonl", [json.dumps(row), json.dumps(other)])
    code, _, err = _run(capsys, "--input", str(src), "--output", str(tmp_path / "o"), "filters=[pii]")
    assert code == 0, err
    clean = _jsonl(tmp_path / "o" / "clean.jsonl")
    expected = json.loads(json.dumps(row))
    expected["messages"][1]["content"] = "Mail me: <EMAIL>"
    assert clean == [expected, other]
    assert list(clean[0]) == list(row)  # key order kept
