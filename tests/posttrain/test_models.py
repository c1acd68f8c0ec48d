"""Model specs: tiny builds, derived students, LoRA, and (slow) the real Gemma 3 270M GGUF conversion."""

import copy
import json

import pytest
import torch

from posttrain import models
from posttrain.errors import UserError


def test_tiny_model_is_deterministic_gemma3_with_chat_tokens():
    a = models.tiny_model_dir(seed=5)
    assert models.tiny_model_dir(seed=5) == a
    config = json.loads((a / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    tok = models.load_tokenizer("tiny:seed=5")
    assert tok.convert_tokens_to_ids("<start_of_turn>") != tok.unk_token_id
    assert tok.convert_tokens_to_ids("<end_of_turn>") != tok.unk_token_id


def test_derived_student_keeps_the_chosen_layers_exactly():
    parent_dir = models.tiny_model_dir(num_hidden_layers=12, seed=3)
    layers = [0, 1, 2, 3, 4, 5]
    student, _ = models.load_causal_lm(str(parent_dir), layers=layers)
    parent, _ = models.load_causal_lm(str(parent_dir))
    assert student.config.num_hidden_layers == 6
    assert student.config.layer_types == [parent.config.layer_types[i] for i in layers]
    ps, ss = parent.state_dict(), student.state_dict()
    for new, old in enumerate(layers):
        for key, value in ss.items():
            if f".layers.{new}." in key:
                assert torch.equal(value, ps[key.replace(f".layers.{new}.", f".layers.{old}.")])
    assert torch.equal(ss["model.embed_tokens.weight"], ps["model.embed_tokens.weight"])
    with pytest.raises(UserError, match="student_layers"):
        models.derive_student(parent_dir, [0, 12])


def test_lora_wraps_only_the_targets():
    model, _ = models.load_causal_lm("tiny")
    wrapped = models.apply_lora(model, models.Lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert models.apply_lora(model, models.Lora(r=0, alpha=8, target_modules=["q_proj"])) is model


@pytest.mark.parametrize("lora", [False, True])
def test_cast_copy_equals_deepcopy_to_without_a_full_precision_copy(lora, monkeypatch):
    model, _ = models.load_causal_lm("tiny")
    if lora:
        model = models.apply_lora(model, models.Lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), seed=0)
    reference = copy.deepcopy(model).to(torch.bfloat16)
    copied_bytes = []

    def counting(original):
        def deepcopy(self, memo):
            copied_bytes.append(self.numel() * self.element_size())
            return original(self, memo)

        return deepcopy

    for cls in (torch.Tensor, torch.nn.Parameter):
        monkeypatch.setattr(cls, "__deepcopy__", counting(cls.__deepcopy__))
    cast = models.cast_copy(model, torch.bfloat16)
    monkeypatch.undo()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert sum(copied_bytes) < 0.01 * weights  # no weight went through a full-precision deep copy
    assert cast.state_dict().keys() == reference.state_dict().keys()
    for key, value in cast.state_dict().items():
        assert value.dtype == reference.state_dict()[key].dtype
        assert torch.equal(value, reference.state_dict()[key]), key
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original is untouched
    originals = {p.data_ptr() for p in model.parameters()}
    assert not originals & {p.data_ptr() for p in cast.parameters()}
    assert [p.requires_grad for p in cast.parameters()] == [p.requires_grad for p in model.parameters()]
    base = cast.get_base_model() if lora else cast
    assert base.lm_head.weight is base.model.embed_tokens.weight  # still tied
    ids = torch.tensor([[2, 10, 20, 30]])
    with torch.no_grad():
        assert torch.equal(cast(ids).logits, reference(ids).logits)


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        models.resolve(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an HF model dir"):
        models.resolve(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="GGUF file not found"):
        models.resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="unknown tiny model setting"):
        models.resolve("tiny:hidden=3")


CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Only a system prompt."}],
    [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A first"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! "},
        {"role": "user", "content": " 2+2?"},
        {"role": "model", "content": "4\n"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "later system"},
        {"role": "user", "content": "b"},
    ],
]


def chat_template_matches_posttrains_formatting(tok):
    from posttrain.data import prompt_ids, tokenize_chat

    for messages in CHATS:
        for generation_prompt in (False, True):
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)[
                "input_ids"
            ]
            ours = prompt_ids(tok, messages) if generation_prompt else tokenize_chat(tok, messages, 1 << 30)[0]
            assert ids == ours, (messages, generation_prompt)


def test_chat_template_gives_posttrains_token_ids():
    chat_template_matches_posttrains_formatting(models.load_tokenizer("tiny"))


def test_every_tokenizer_posttrain_writes_carries_the_chat_template(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from posttrain.data import CHAT_TEMPLATE

    parent = models.tiny_model_dir(num_hidden_layers=12, seed=4)
    student = models.derive_student(parent, [0, 6])
    for built in (models.tiny_model_dir(), parent, student):
        assert AutoTokenizer.from_pretrained(built).chat_template == CHAT_TEMPLATE, built
    # what the stages save: a tokenizer from load_causal_lm / load_tokenizer
    _, tok = models.load_causal_lm("tiny")
    tok.save_pretrained(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").chat_template == CHAT_TEMPLATE
    # a cached dir built before the template existed gets it when next resolved
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    old = models.tiny_model_dir(seed=9)
    (old / "chat_template.jinja").unlink()
    assert AutoTokenizer.from_pretrained(old).chat_template is None
    assert models.resolve("tiny:seed=9") == old
    assert AutoTokenizer.from_pretrained(old).chat_template == CHAT_TEMPLATE


@pytest.mark.slow
def test_real_gemma3_270m_gguf_converts_once_and_derives_a_5_to_1_student(tmp_path, monkeypatch):
    import gguf
    from transformers import AutoModelForCausalLM

    from posttrain.data import prompt_ids

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path))  # a cold cache: the conversion runs here
    built = []
    original = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: built.append(a) or original(*a, **k))
    hf_dir = models.resolve(models.EMBEDDED)
    # tokenizer, config and weights share one parse of the file (~17 s each; 3 parses before)
    assert len(built) == 1
    assert models.resolve(models.EMBEDDED) == hf_dir and len(built) == 1  # cached: converts nothing
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 18 and config["vocab_size"] == 262144
    assert "quantization_config" not in config
    student_dir = models.derive_student(hf_dir, [0, 1, 2, 3, 4, 5])
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    assert student.config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    tok = models.load_tokenizer(str(student_dir))
    chat_template_matches_posttrains_formatting(tok)  # with Gemma's own tokenizer too
    ids = prompt_ids(tok, [{"role": "user", "content": "What is 2 + 3?"}])
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_tokens_to_ids("<start_of_turn>") in ids
    teacher = AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        logits = teacher(torch.tensor([ids])).logits[0, -1]
    assert torch.isfinite(logits).all()
    # the pretrained base has learnt language: its next token after "2 + 3 =" is far from uniform
    with torch.no_grad():
        text = tok("2 + 3 =", add_special_tokens=True, return_tensors="pt")
        p = torch.softmax(teacher(**text).logits[0, -1].float(), -1)
    assert p.max() > 0.05


def test_bf16_only_where_the_hardware_runs_it_natively(monkeypatch, capsys):
    import torch

    from posttrain import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert models.use_bf16(True) and not models.use_bf16(False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(models, "_BF16_NOTED", set())
    assert not models.use_bf16(True) and not models.use_bf16(True)
    assert capsys.readouterr().out.count("no native bf16") == 1  # said once
