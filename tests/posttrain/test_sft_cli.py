"""`posttrain sft` through the CLI on tiny models: artifacts, loss, resume after SIGKILL, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain import distill
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "tiny" / "sft.yaml")
FAULTS = str(ROOT / "tests" / "posttrain" / "faults.py")


def posttrain(*args, env=None, check=True, faults=()):
    """`posttrain ARGS` in a subprocess; with `faults` (e.g. ["--kill-at", "5"]), through
    tests/posttrain/faults.py:
    the same CLI with fault-injecting hooks."""
    entry = [FAULTS, *faults] if faults else ["-m", "posttrain.cli"]
    proc = subprocess.run(
        [sys.executable, *entry, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_sft_end_to_end_writes_a_loadable_hf_dir_and_lowers_the_loss(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sft"
    posttrain("sft", "--config", TINY, f"output_dir={out}", "--max_steps", "12")
    assert (out / "DONE").is_file() and (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "gemma3_text" and tok.convert_tokens_to_ids("<end_of_turn>") > 0
    record = json.loads((out / "posttrain.json").read_text())
    assert record["stage"] == "sft" and record["config"]["max_steps"] == 12  # the --max_steps flag took effect
    assert record["versions"]["torch"] and record["inputs"]["data_sha256"]
    assert len(record["inputs"]["targets_key"]["teacher_sha256"]) == 64 and record["inputs"]["student_init_sha256"]
    summary = record["summary"]
    assert summary["steps"] == 12
    assert summary["eval_kd_loss_after"] < summary["eval_kd_loss_before"] - 0.05, summary
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "loss" in m] == list(range(1, 13))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_help_documents_every_config_field():
    from posttrain import config as cfg

    text = posttrain("sft", "--help").stdout
    for field in cfg.field_paths(distill.Config):
        assert f"  {field} (" in text, field
    assert "--ray-address" in text and "--resume" in text and "--overwrite" in text


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    args = ("sft", "--config", TINY, "max_steps=10", "save_steps=3")
    posttrain(*args, f"output_dir={tmp_path / 'straight'}")

    killed = tmp_path / "killed"
    proc = posttrain(*args, f"output_dir={killed}", faults=["--kill-at", "5"], check=False)
    assert proc.returncode == -9
    assert not (killed / "DONE").exists()
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3"]

    refused = posttrain(*args, f"output_dir={killed}", check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    posttrain(*args, f"output_dir={killed}", "--resume")
    logged = [
        json.loads(line)["step"]
        for line in (killed / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert logged == list(range(1, 11))  # steps 4-5 of the killed run are not logged twice
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and training did move the weights
    student_init = json.loads((killed / "posttrain.json").read_text())["inputs"]["student_init"]
    init = load_file(os.path.join(student_init, "model.safetensors"))
    assert any(not torch.equal(a[k], init[k]) for k in a)


def _write(path, text):
    path.write_text(text)
    return path


GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


@pytest.mark.parametrize(
    "case",
    [
        "bad_json",
        "no_messages",
        "unknown_role",
        "empty",
        "unknown_key",
        "missing_model",
        "finished_output",
        "missing_data",
    ],
)
def test_bad_input_gets_one_clear_error_and_no_finished_output(tmp_path, case):
    out = tmp_path / "out"
    data = _write(tmp_path / "d.jsonl", GOOD * 8)
    extra, expect = [], None
    if case == "bad_json":
        data = _write(tmp_path / "d.jsonl", GOOD * 2 + '{"messages": [\n' + GOOD)
        expect = f"{data}:3: not valid JSON"
    elif case == "no_messages":
        data = _write(tmp_path / "d.jsonl", GOOD + '{"text": "hello"}\n')
        expect = f"{data}:2: row has no 'messages'"
    elif case == "unknown_role":
        data = _write(tmp_path / "d.jsonl", GOOD + GOOD.replace('"user"', '"robot"'))
        expect = f"{data}:2: messages[0] has unknown role 'robot'"
    elif case == "empty":
        data = _write(tmp_path / "d.jsonl", "\n")
        expect = "the dataset is empty"
    elif case == "unknown_key":
        extra = ["learning_rat=0.1"]
        expect = "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"
    elif case == "missing_model":
        extra = [f"teacher={tmp_path / 'nope'}"]
        expect = "model not found"
    elif case == "missing_data":
        data = tmp_path / "absent.jsonl"
        expect = f"dataset not found: {data}"
    elif case == "finished_output":
        out.mkdir()
        (out / "DONE").write_text("")
        (out / "config.json").write_text("{}")
        expect = "already holds a finished run; pass --overwrite"
    proc = posttrain("sft", "--config", TINY, f"data={data}", f"output_dir={out}", *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], proc.stderr
    if case != "finished_output":
        assert not (out / "DONE").exists()


def test_deepspeed_zero3_config_passes_through(tmp_path):
    from transformers import AutoModelForCausalLM

    ds = tmp_path / "zero3.json"
    ds.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
            }
        )
    )
    out = tmp_path / "sft"
    # one process of a one-process "distributed" job, as a launcher (deepspeed/torchrun) would set it up
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}
    posttrain("sft", "--config", TINY, f"output_dir={out}", "max_steps=2", f"deepspeed={ds}", env=env)
    record = json.loads((out / "posttrain.json").read_text())
    assert record["config"]["deepspeed"] == str(ds) and record["summary"]["steps"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)  # the gathered full weights, not ZeRO-3 shards
    assert model.model.embed_tokens.weight.shape == (model.config.vocab_size, model.config.hidden_size)


def test_lora_run_saves_merged_full_weights(tmp_path):
    out = tmp_path / "lora"
    posttrain("sft", "--config", TINY, f"output_dir={out}", "max_steps=3", "lora.r=4", "lora.alpha=8")
    trained = load_file(str(out / "model.safetensors"))
    assert not any("lora_" in k for k in trained)  # adapters merged into plain HF weights
    student_init = json.loads((out / "posttrain.json").read_text())["inputs"]["student_init"]
    init = load_file(os.path.join(student_init, "model.safetensors"))
    assert trained.keys() == init.keys()
    changed = [k for k in trained if not torch.equal(trained[k], init[k])]
    assert changed and all(any(m in k for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)


def torchrun(*args, env=None, check=True, faults=()):
    """`torchrun --nproc_per_node 2 -m posttrain.cli ...`: two ranks, DDP over gloo on CPU (with `faults`,
    every rank runs tests/posttrain/faults.py)."""
    entry = [FAULTS, *faults] if faults else ["-m", "posttrain.cli"]
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        *entry,
        *args,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_two_rank_launch_prepares_once_publishes_whole_checkpoints_and_resumes_exactly(tmp_path):
    """Only rank 0 prepares the output dir and builds the teacher targets (a cold cache, on Ray; rank 1 waits
    and reads them); every rank's part of a checkpoint lands in the one published checkpoint-N; only rank 0
    logs and writes DONE; a SIGKILLed two-rank run resumed with --resume equals the uninterrupted one."""
    env = {"POSTTRAIN_CACHE": str(tmp_path / "cache")}
    args = ("sft", "--config", TINY, "max_steps=8", "save_steps=3", "batch_size=2")
    straight = tmp_path / "straight"
    proc = torchrun(*args, f"output_dir={straight}", env=env)
    assert proc.stdout.count("Ray actors") == 1 and proc.stdout.count("teacher targets: cache hit") == 1
    assert (straight / "DONE").is_file()
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    for ckpt in (straight / "checkpoints").iterdir():
        assert {"model.safetensors", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= {
            p.name for p in ckpt.iterdir()
        }, ckpt
        assert json.loads((ckpt / "trainer_state.json").read_text())["train_batch_size"] == 2
    assert not [p for p in straight.iterdir() if p.name.startswith(".")]  # no staging dir left behind
    logged = [
        json.loads(line)["step"]
        for line in (straight / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert logged == list(range(1, 9))  # one rank logs
    assert len(list((straight / "tensorboard").iterdir())) >= 1

    killed = tmp_path / "killed"
    proc = torchrun(*args, f"output_dir={killed}", env=env, faults=["--kill-at", "5"], check=False)
    assert proc.returncode != 0 and not (killed / "DONE").exists()
    assert sorted(p.name for p in (killed / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3"]
    torchrun(*args, f"output_dir={killed}", "--resume", env=env)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
