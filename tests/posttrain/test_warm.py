"""`posttrain rm` (WARM) on tiny models: the CLI end to end, member failure and resume, the shared-init and
architecture checks, label noise, preference data (formats, determinism, disjoint from the eval files)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from posttrain import artifacts, cluster, merging, warm
from posttrain.errors import UserError
from posttrain.models import Lora
from tests.conftest import ROOT
from tests.posttrain.faults import FailTask

TINY = ROOT / "configs" / "tiny" / "rm.yaml"


def _tiny_config(tmp_path, **kw) -> warm.Config:
    from posttrain import config as cfg

    base = cfg.load(warm.Config, TINY, [f"output_dir={tmp_path / 'rm'}"])
    return dataclasses.replace(base, **kw)


def test_cli_tiny_config_trains_two_members_and_averages_them(tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    proc = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "rm", "--config", str(TINY), f"output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARM average" in proc.stdout and "ensemble" in proc.stdout  # the printed table
    assert (out / "DONE").is_file()
    for k in (0, 1):
        assert artifacts.is_done(out / "members" / str(k))
        record = json.loads((out / "members" / str(k) / "posttrain.json").read_text())
        assert record["inputs"]["init_sha256"] == artifacts.dir_sha256(out / "init")
    # the averaged RM is an HF sequence-classification dir with a scalar head
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.score.weight.shape[0] == 1
    # ... whose weights are exactly the members' average, and differ from each member
    avg = load_file(str(out / "model.safetensors"))
    members = [load_file(str(out / "members" / str(k) / "model.safetensors")) for k in (0, 1)]
    expected = merging.average(members)
    assert all(torch.equal(avg[key], expected[key]) for key in expected) and set(avg) == set(expected)
    assert not torch.equal(avg["score.weight"], members[0]["score.weight"])
    # members differ by design: learning rate and dropout from the lists, seed per member
    lrs = [json.loads((out / "members" / str(k) / "config.json").read_text())["attention_dropout"] for k in (0, 1)]
    assert lrs == [0.0, 0.1]
    report = json.loads((out / "report.json").read_text())
    (variant,) = report["variants"]
    assert [m["learning_rate"] for m in variant["members"]] == [0.002, 0.003]
    assert {"average_accuracy", "ensemble_accuracy", "members_mean_accuracy"} <= set(variant)
    # the averaged RM ranks chosen above rejected on the held-out pairs of a learnable set
    assert variant["average_accuracy"] >= 0.9, report
    assert variant["average_loss"] < report["init_loss"] - 0.3, report  # the init's head is ~log 2 everywhere
    assert all(m["accuracy"] >= 0.8 for m in variant["members"])
    assert (out / "metrics.jsonl").read_text() and list((out / "tensorboard").glob("events.*"))
    assert (out / "members" / "0" / "metrics.jsonl").read_text().count('"loss"') >= 3


def test_a_failing_member_fails_the_stage_and_resume_skips_finished_members(tmp_path, local_ray):
    config = _tiny_config(tmp_path, max_steps=3, epochs=1)
    out = tmp_path / "rm"
    with pytest.raises(RuntimeError, match="injected failure in member 1") as info:
        warm.run(config, hooks=FailTask("member 1"))
    assert "members/1" in "".join(getattr(info.value, "__notes__", []))
    assert artifacts.is_done(out / "members" / "0") and not artifacts.is_done(out / "members" / "1")
    assert not (out / "DONE").exists() and not (out / "model.safetensors").exists()  # no average published
    with pytest.raises(UserError, match="unfinished run"):  # neither --resume nor --overwrite
        warm.run(config)

    member0 = out / "members" / "0" / "model.safetensors"
    before = (member0.stat().st_mtime_ns, member0.read_bytes())
    warm.run(dataclasses.replace(config, resume=True))
    assert (member0.stat().st_mtime_ns, member0.read_bytes()) == before  # not retrained, not rewritten
    report = json.loads((out / "report.json").read_text())
    assert [m["resumed"] for m in report["variants"][0]["members"]] == [True, False]
    assert artifacts.is_done(out) and artifacts.is_done(out / "members" / "1")


def test_label_noise_variant_flips_that_fraction_and_is_reported(tmp_path, local_ray):
    config = _tiny_config(tmp_path, max_steps=2, compare_label_noise=[0.25], num_members=1)
    out = warm.run(config)
    report = json.loads((out / "report.json").read_text())
    clean, noisy = report["variants"]
    assert clean["label_noise"] == 0 and noisy["label_noise"] == 0.25
    assert clean["flipped_pairs"] == 0 and noisy["flipped_pairs"] == round(0.25 * report["train_pairs"])
    assert noisy["drop_vs_least_noisy"] is not None
    assert artifacts.is_done(out / "variants" / "noise-0.25")
    assert (out / "variants" / "noise-0.25" / "model.safetensors").is_file()
    # M = 1: the "average" is the member, bit for bit
    avg = load_file(str(out / "model.safetensors"))
    member = load_file(str(out / "members" / "0" / "model.safetensors"))
    assert set(avg) == set(member) and all(torch.equal(avg[k], member[k]) for k in member)


def test_flip_labels_is_exact_and_deterministic():
    pairs = [{"chosen_ids": [i], "rejected_ids": [-i]} for i in range(40)]
    noisy, flipped = warm.flip_labels(pairs, 0.25, seed=3)
    assert len(flipped) == 10 and flipped == warm.flip_labels(pairs, 0.25, seed=3)[1]
    assert flipped != warm.flip_labels(pairs, 0.25, seed=4)[1]
    for i, (a, b) in enumerate(zip(pairs, noisy)):
        assert (b == {"chosen_ids": a["rejected_ids"], "rejected_ids": a["chosen_ids"]}) == (i in flipped)
    assert warm.flip_labels(pairs, 0.0, seed=3)[0] == pairs


def _fake_member(init_dir, dest, init_sha=None):
    """A finished member dir: the init's weights with a manifest as the stage writes it."""
    shutil.copytree(init_dir, dest)
    (dest / artifacts.DONE).unlink()
    artifacts.write_manifest(
        dest, stage="rm-member", config={}, inputs={"init_sha256": init_sha or artifacts.dir_sha256(init_dir)}
    )
    artifacts.mark_done(dest)
    return dest


def test_members_of_different_inits_or_architectures_are_refused(tmp_path):
    init_a = warm.build_init("tiny:num_hidden_layers=2,seed=3", tmp_path / "init_a", seed=0)
    init_b = warm.build_init("tiny:num_hidden_layers=2,seed=4", tmp_path / "init_b", seed=0)
    init_c = warm.build_init("tiny:num_hidden_layers=1,seed=3", tmp_path / "init_c", seed=0)
    a = _fake_member(init_a, tmp_path / "a")
    b = _fake_member(init_b, tmp_path / "b")
    with pytest.raises(UserError, match="different inits"):
        warm.average_members([a, b], tmp_path / "out1")
    # same recorded init but another architecture: refused before any tensor is read
    c = _fake_member(init_c, tmp_path / "c", init_sha=artifacts.dir_sha256(init_a))
    with pytest.raises(UserError, match="different architectures.*num_hidden_layers"):
        warm.average_members([a, c], tmp_path / "out2")
    # a dir that no `posttrain rm` member wrote is refused too
    plain = tmp_path / "plain"
    shutil.copytree(init_a, plain)
    (plain / artifacts.MANIFEST).unlink()
    with pytest.raises(UserError, match="not a `posttrain rm` member"):
        warm.average_members([a, plain], tmp_path / "out3")
    assert not (tmp_path / "out1" / "model.safetensors").exists()


def test_init_is_a_scalar_head_on_the_sft_weights(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from posttrain import models

    spec = "tiny:num_hidden_layers=2,seed=3"
    init = warm.build_init(spec, tmp_path / "init", seed=0)
    rm = AutoModelForSequenceClassification.from_pretrained(init)
    lm = AutoModelForCausalLM.from_pretrained(models.resolve(spec))
    assert type(rm).__name__ == "Gemma3TextForSequenceClassification" and rm.config.num_labels == 1
    lm_state = lm.model.state_dict()
    assert all(torch.equal(v, lm_state[k]) for k, v in rm.model.state_dict().items())  # backbone = SFT weights
    again = warm.build_init(spec, tmp_path / "init2", seed=0)
    assert torch.equal(
        load_file(str(init / "model.safetensors"))["score.weight"],
        load_file(str(again / "model.safetensors"))["score.weight"],
    )  # deterministic head


def test_bad_preference_rows_and_settings_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a"}) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:1: .*missing 'rejected'"):
        warm.read_pairs(bad)
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": 3}) + "\n")
    with pytest.raises(UserError, match="'rejected' must be a string or a list of messages"):
        warm.read_pairs(bad)
    with pytest.raises(UserError, match="num_members"):
        warm.run(_tiny_config(tmp_path, num_members=0))
    with pytest.raises(UserError, match="dropouts"):
        warm.run(_tiny_config(tmp_path, dropouts=[1.5]))
    with pytest.raises(UserError, match="model not found"):
        warm.run(_tiny_config(tmp_path, init=str(tmp_path / "no-such-sft")))


# ----------------------------------------------------------------------------------------------------
# The preference data


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_preference_data_is_deterministic_and_in_trl_format(tmp_path):
    shutil.copytree(ROOT / "data", tmp_path / "data")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_preference_data.py"), "--out", str(tmp_path / "data")],
        check=True,
        timeout=60,
    )
    for name in ("demo/prefs.jsonl", "tiny/prefs.jsonl"):
        assert (tmp_path / "data" / name).read_bytes() == (ROOT / "data" / name).read_bytes(), name
    demo, tiny = _rows(ROOT / "data" / "demo" / "prefs.jsonl"), _rows(ROOT / "data" / "tiny" / "prefs.jsonl")
    assert all(isinstance(r["prompt"], list) and r["chosen"][0]["role"] == "assistant" for r in demo)
    assert all(isinstance(r[k], str) for r in tiny for k in ("prompt", "chosen", "rejected"))
    assert {r["kind"] for r in demo} == {"math_wrong", "code_buggy", "refusal", "facts_wrong"}
    assert all(r["chosen"] != r["rejected"] for r in demo + tiny)
    assert len({json.dumps(r["prompt"]) for r in demo}) == len(demo)  # unique prompts


def test_preference_prompts_are_disjoint_from_the_eval_files():
    evals = set()
    for name in ("demo/eval_math.jsonl", "demo/eval_code.jsonl", "tiny/eval.jsonl"):
        for row in _rows(ROOT / "data" / name):
            evals.update(m["content"].strip() for m in row.get("messages", []) if m["role"] == "user")
            evals.update(row[k].strip() for k in ("question", "prompt") if isinstance(row.get(k), str))
    assert len(evals) > 90
    for name in ("demo/prefs.jsonl", "tiny/prefs.jsonl"):
        for row in _rows(ROOT / "data" / name):
            prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][0]["content"]
            assert prompt.strip() not in evals, (name, prompt)


def test_string_and_message_forms_encode_identically():
    from posttrain import models

    tok = models.load_tokenizer("tiny")
    as_text = warm.encode_pairs(tok, [{"prompt": "2+2?", "chosen": "4", "rejected": "no"}], 64)
    as_msgs = warm.encode_pairs(
        tok,
        [
            {
                "prompt": [{"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            }
        ],
        64,
    )
    assert as_text == as_msgs
    ids = as_text[0]["chosen_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids("<end_of_turn>")
    long = warm.encode_pairs(tok, [{"prompt": "x" * 500, "chosen": "4", "rejected": "no"}], 64)[0]["chosen_ids"]
    assert len(long) == 64 and long[0] == tok.bos_token_id and long[-8:] == ids[-8:]  # the reply end is kept


# ----------------------------------------------------------------------------------------------------
# cluster.run_tasks


def test_run_tasks_returns_in_order_and_raises_the_failing_tasks_error(local_ray):
    def square(x):
        if x == 3:
            raise ValueError("three is bad")
        if x == 4:
            raise UserError("four is a user mistake")
        return x * x

    assert cluster.run_tasks(square, [0, 1, 2], num_cpus=0.5) == [0, 1, 4]
    with pytest.raises(ValueError, match="three is bad") as info:
        cluster.run_tasks(square, [1, 3, 4], num_cpus=0.5, names=["a", "b", "c"])
    assert "Ray task b; 2 of 3 tasks failed" in "".join(info.value.__notes__)
    with pytest.raises(UserError, match="^c: four is a user mistake$"):
        cluster.run_tasks(square, [1, 4], num_cpus=0.5, names=["x", "c"])


def test_lora_member_is_saved_merged_and_averages_like_any_member(tmp_path):
    from transformers import AutoTokenizer

    from posttrain import config as cfg

    init = warm.build_init("tiny:num_hidden_layers=2,seed=3", tmp_path / "init", seed=0)
    config = dataclasses.replace(cfg.load(warm.Config, TINY), max_steps=3, lora=Lora(r=4, alpha=8))
    tok = AutoTokenizer.from_pretrained(init)
    pairs = warm.encode_pairs(tok, warm.read_pairs(ROOT / "data" / "tiny" / "prefs.jsonl")[16:], 128)
    members = []
    for k in (0, 1):  # the member trainer itself, in-process (the stage runs it as a Ray task)
        job = {
            "member": k,
            "label_noise": 0.0,
            "out": str(tmp_path / f"m{k}"),
            "init": str(init),
            "init_sha256": artifacts.dir_sha256(init),
            "train": pairs,
            "eval": pairs[:2],
            "train_sha256": "x",
            "seed": k,
            "learning_rate": 0.003,
            "dropout": 0.0,
            "config": cfg.to_dict(config),
            "threads": 1,
            "progress": False,
        }
        warm.train_member(job)
        members.append(tmp_path / f"m{k}")
    base = load_file(str(init / "model.safetensors"))
    merged = load_file(str(members[0] / "model.safetensors"))
    assert set(merged) == set(base)  # no lora_A/lora_B keys: adapters were merged into the weights
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter's update is in the merged weight
    assert not torch.equal(merged["score.weight"], base["score.weight"])  # the head was trained too
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    out = warm.average_members(members, tmp_path / "avg")
    avg = load_file(str(out / "model.safetensors"))
    assert torch.equal(avg[q], merging.average(members)[q])
