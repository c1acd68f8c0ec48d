"""Config loading (YAML + overrides, unknown keys) and Gemma chat formatting."""

import pytest

from posttrain import config as cfg
from posttrain import data, distill, models
from posttrain.errors import UserError


def test_yaml_plus_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("k: 64\nstudent_layers: [0, 1]\nlearning_rate: 1e-4\n")
    c = cfg.load(
        distill.Config, path, ["k=128", "bf16=false", "lora.target_modules=q_proj,v_proj", "student_layers=0,2,3"]
    )
    assert c.k == 128 and c.student_layers == [0, 2, 3] and c.bf16 is False
    assert c.learning_rate == 1e-4 and c.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("lerning_rate: 0.1\n", "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("k: many\n", "'k' must be an integer"),
        ("bf16: 3\n", "'bf16' must be true or false"),
        ("- a\n", "must be a mapping"),
        ("k: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        cfg.load(distill.Config, path)


def test_gemma_format_bos_once_and_loss_only_on_model_turns():
    tok = models.load_tokenizer("tiny")
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2"},
    ]
    ids, mask = data.tokenize_chat(tok, messages, 1024)
    assert tok.decode(ids) == (
        "<bos><start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>\n"
    )
    assert ids.count(tok.bos_token_id) == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "A1<end_of_turn>A2<end_of_turn>"
    short_ids, short_mask = data.tokenize_chat(tok, messages, 10)
    assert short_ids == ids[:10] and short_mask == mask[:10]
    prompt = data.prompt_ids(tok, messages[:2])
    assert tok.decode(prompt).endswith("<start_of_turn>model\n")


def test_rows_without_a_reply_in_budget_are_errors_not_drops(tmp_path):
    tok = models.load_tokenizer("tiny")
    rows = [
        {
            "messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}],
            "_where": "f.jsonl:7",
        }
    ]
    with pytest.raises(UserError, match="f.jsonl:7: no model-turn tokens"):
        data.tokenize_rows(tok, rows, 20)


def test_reads_parquet_and_datasets_dirs(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "answer": "1"}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "d"))
    for path in (tmp_path / "d.parquet", tmp_path / "d"):
        got = data.read_rows(path)
        assert got[0]["messages"] == rows[0]["messages"] and got[0]["answer"] == "1"
    with pytest.raises(UserError, match="messages\\[0\\].content must be a string"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"messages": [{"role": "user", "content": 5}]}\n')
        data.read_rows(bad)


WARP_TINY = "configs/tiny/warp.yaml"


def test_nested_sections_take_dotted_overrides():
    from posttrain import rl, warp
    from tests.conftest import ROOT

    c = cfg.load(
        warp.Config, ROOT / WARP_TINY, ["inner.steps=8", "inner.rewards.timeout=45", "inner.lora.r=4", "runs=3"]
    )
    assert c.inner.steps == 8 and c.inner.rewards.timeout == 45.0 and c.inner.lora.r == 4 and c.runs == 3
    assert (
        c.inner.rewards.names == ["math", "format"] and c.inner.rewards.workers == 1
    )  # the rest of the YAML stays
    assert c.inner.prompts_per_step == 4 and c.inner.lora.alpha == 16  # defaults fill what neither sets
    r = cfg.load(rl.Config, None, ["rewards.timeout=30", "lora={r: 8, alpha: 32}"])
    assert r.rewards.timeout == 30.0 and (r.lora.r, r.lora.alpha) == (8, 32)
    assert r.rewards.names == ["math", "code"]  # the section's other defaults stay


def test_a_single_value_is_a_one_element_list(tmp_path):
    from posttrain import rl, warp

    r = cfg.load(rl.Config, None, ["rewards.weights=1.0", "data=x.jsonl", "rewards.names=math"])
    assert r.rewards.weights == [1.0] and r.data == ["x.jsonl"] and r.rewards.names == ["math"]
    path = tmp_path / "w.yaml"
    path.write_text("pareto_etas: 0.5\ninner:\n  data: a.jsonl\n")
    w = cfg.load(warp.Config, path)
    assert w.pareto_etas == [0.5] and w.inner.data == ["a.jsonl"]
    # the shorthand: a plain value for `rewards` sets rewards.names (YAML and command line)
    assert cfg.load(rl.Config, None, ["rewards=math,code"]).rewards.names == ["math", "code"]
    path.write_text("rewards: [math, format]\n")
    assert cfg.load(rl.Config, path).rewards.names == ["math", "format"]


def test_an_error_names_where_the_bad_value_came_from(tmp_path):
    from posttrain import cli, warp

    path = tmp_path / "w.yaml"
    path.write_text("inner:\n  steps: many\n")
    with pytest.raises(UserError, match=f"^{path}: 'inner.steps' must be an integer, got 'many'$"):
        cfg.load(warp.Config, path)
    with pytest.raises(UserError, match=r"^command line 'inner.steps=lots': 'inner.steps' must be an integer"):
        cfg.load(warp.Config, None, ["inner.steps=lots"])
    with pytest.raises(UserError, match=r"^command line --inner.steps lots: 'inner.steps' must be an integer"):
        cli.load_stage_config("warp", ["--inner.steps", "lots"])
    with pytest.raises(UserError, match=r"unknown config key 'inner.stpes' \(did you mean 'inner.steps'\?\)"):
        cfg.load(warp.Config, None, ["inner.stpes=3"])
    with pytest.raises(
        UserError, match=r"^command line --inner.stpes: unknown config key 'inner.stpes' \(did you mean"
    ):
        cli.load_stage_config("warp", ["--inner.stpes", "3"])
    with pytest.raises(UserError, match=r"'inner.lora' is a section \(inner.lora.r, "):
        cfg.load(warp.Config, None, ["inner.lora=4"])
    path.write_text("inner:\n  rewards:\n    timeot: 3\n")
    with pytest.raises(
        UserError, match=rf"^{path}: unknown config key 'inner.rewards.timeot' .*'inner.rewards.timeout'"
    ):
        cfg.load(warp.Config, path)


def test_help_lists_nested_fields_with_the_stage_defaults():
    from posttrain import evaluate, rl, warp

    text = cfg.help_text(warp.Config)
    for key in cfg.field_paths(warp.Config):
        assert f"  {key} (" in text, key
    assert "  inner.rewards.timeout (float, default 120.0)" in text
    assert "  rewards.timeout (float, default 300.0)" in cfg.help_text(evaluate.Config)  # eval's own default
    assert "rewards=X sets rewards.names" in cfg.help_text(rl.Config)
