"""Config loading (YAML + overrides, unknown keys) and Gemma chat formatting."""

import pytest

from posttrain import config as cfg
from posttrain import data, distill, models
from posttrain.errors import UserError


def test_yaml_plus_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("k: 64\nstudent_layers: [0, 1]\nlearning_rate: 1e-4\n")
    c = cfg.load(distill.Config, path, ["k=128", "bf16=false", "lora.target_modules=q_proj,v_proj",
                                        "student_layers=0,2,3"])
    assert c.k == 128 and c.student_layers == [0, 2, 3] and c.bf16 is False
    assert c.learning_rate == 1e-4 and c.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("text,message", [
    ("lerning_rate: 0.1\n", "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
    ("k: many\n", "'k' must be an integer"),
    ("bf16: 3\n", "'bf16' must be true or false"),
    ("- a\n", "must be a mapping"),
    ("k: [\n", "not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        cfg.load(distill.Config, path)


def test_gemma_format_bos_once_and_loss_only_on_model_turns():
    tok = models.load_tokenizer("tiny")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                {"role": "assistant", "content": "A2"}]
    ids, mask = data.tokenize_chat(tok, messages, 1024)
    assert tok.decode(ids) == ("<bos><start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
                               "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\nA2<end_of_turn>\n")
    assert ids.count(tok.bos_token_id) == 1
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "A1<end_of_turn>A2<end_of_turn>"
    short_ids, short_mask = data.tokenize_chat(tok, messages, 10)
    assert short_ids == ids[:10] and short_mask == mask[:10]
    prompt = data.prompt_ids(tok, messages[:2])
    assert tok.decode(prompt).endswith("<start_of_turn>model\n")


def test_rows_without_a_reply_in_budget_are_errors_not_drops(tmp_path):
    tok = models.load_tokenizer("tiny")
    rows = [{"messages": [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y"}],
             "_where": "f.jsonl:7"}]
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
