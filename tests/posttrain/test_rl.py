"""`posttrain rl` (J-BOND) on tiny models: learning, artifacts, exact resume, failing rewards, Ray
generation, LoRA, bad input."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain import rl
from posttrain.models import Lora
from posttrain.scoring import Rewards
from tests.conftest import ROOT
from tests.posttrain.test_sft_cli import posttrain

TINY = str(ROOT / "configs" / "tiny" / "rl-bond.yaml")
REWARDS = str(ROOT / "tests" / "posttrain" / "rl_rewards.py")
# a learnable reward on a random tiny model: share of the characters in a-m (~5% at init)
LEARN = dict(
    algorithm="bond",
    policy="tiny",
    data=[str(ROOT / "data" / "tiny" / "sft.jsonl")],
    rewards=Rewards(names=[f"{REWARDS}:letter_share"]),
    prompts_per_step=8,
    generation_batch=4,
    max_new_tokens=8,
    learning_rate=1e-2,
    eta=0.1,
    freeze_embeddings=False,
    torch_threads=1,
    bf16=False,
    save_steps=100,
)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_on_a_learnable_reward(tmp_path):
    out = rl.run(rl.Config(**LEARN, steps=40, output_dir=str(tmp_path / "rl")))
    m = metrics(out)
    assert [x["step"] for x in m] == list(range(1, 41))
    first = sum(x["reward"] for x in m[:5]) / 5
    last = sum(x["reward"] for x in m[-5:]) / 5
    # seeded: measured 0.076 -> 0.378; the anchor follows the policy (EMA), so its samples improve too
    assert last > first + 0.15, (first, last)
    assert sum(x["reward_anchor"] for x in m[-5:]) / 5 > first + 0.08
    assert m[0]["kl_anchor"] == pytest.approx(0.0, abs=1e-4)  # step 1: anchor == policy == init
    assert m[-1]["kl_init"] > 0.5


def test_contrast_forward_term_also_learns(tmp_path):
    out = rl.run(rl.Config(**LEARN, forward="contrast", steps=40, output_dir=str(tmp_path / "rl")))
    m = metrics(out)
    first = sum(x["reward"] for x in m[:5]) / 5
    last = sum(x["reward"] for x in m[-5:]) / 5
    assert last > first + 0.15, (first, last)


def test_cli_tiny_config_writes_every_artifact(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "rl"
    posttrain("rl", "--algorithm", "bond", "--config", TINY, f"output_dir={out}")
    assert (out / "DONE").is_file() and (out / "reward_kl.png").stat().st_size > 1000
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "gemma3_text"
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3, 4]
    for key in (
        "reward",
        "reward/math",
        "reward/format",
        "reward_anchor",
        "bond_reward",
        "quantile",
        "kl_anchor",
        "kl_init",
        "entropy",
        "length",
        "loss",
        "forward",
        "backward",
        "time/generate",
        "time/reward_wait",
        "time/train",
        "reward_wait_share",
    ):
        assert key in m[0], key
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # a checkpoint is an HF dir too
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "checkpoint-2")
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 4 * 4 and set(rollouts[0]["scores"]) == {"math", "format"}
    record = json.loads((out / "posttrain.json").read_text())
    assert record["stage"] == "rl" and record["summary"]["steps"] == 4


def test_resume_after_sigkill_continues_exactly(tmp_path):
    args = ("rl", "--config", TINY, "steps=6", "save_steps=2", "generation_batch=4")
    posttrain(*args, f"output_dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    proc = posttrain(*args, f"output_dir={killed}", faults=["--kill-at", "3"], check=False)
    assert proc.returncode == -9 and not (killed / "DONE").exists()
    assert [x["step"] for x in metrics(killed)] == [1, 2, 3]
    refused = posttrain(*args, f"output_dir={killed}", check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    posttrain(*args, f"output_dir={killed}", "--resume")

    straight = tmp_path / "straight"
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("anchor.safetensors", "policy.safetensors"):
        x = load_file(straight / "checkpoints" / "checkpoint-6" / name)
        y = load_file(killed / "checkpoints" / "checkpoint-6" / name)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert [x["step"] for x in metrics(killed)] == list(range(1, 7))  # step 3 is not logged twice
    for run in (straight, killed):  # save_total_limit=2 (default): checkpoint-2 was removed after -6
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    drop = ("time/", "reward_wait_share")
    strip = lambda ms: [{k: v for k, v in x.items() if not k.startswith(drop)} for x in ms]  # noqa: E731
    assert strip(metrics(killed)) == strip(metrics(straight))


def test_a_reward_that_hangs_or_crashes_never_stalls_a_step(tmp_path):
    out = rl.run(
        rl.Config(
            **{**LEARN, "rewards": Rewards(names=[f"{REWARDS}:hang_or_crash"], timeout=2.0)},
            steps=2,
            output_dir=str(tmp_path / "rl"),
        )
    )
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2] and all(x["loss"] == x["loss"] for x in m)  # finite, not NaN
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    by_id = {}
    for r in rollouts:
        by_id.setdefault(r["id"][-1], []).append(r)
    for r in by_id.get("1", []) + by_id.get("2", []):
        assert r["scores"]["hang_or_crash"] is None and r["reasons"]["hang_or_crash"]
        assert r["bond_reward"] is None  # no backward term for that sample
    assert any(r["scores"]["hang_or_crash"] is not None for r in rollouts)
    reasons = " ".join(r["reasons"].get("hang_or_crash", "") for r in rollouts)
    assert "timeout" in reasons and ("died" in reasons or "exit" in reasons), reasons
    assert sum(x["reward_failed"] for x in m) >= 3 * len(by_id.get("1", []) + by_id.get("2", []))


def test_generation_on_ray_actors_matches_in_process(tmp_path, local_ray):
    base = {**LEARN, "steps": 2}
    a = rl.run(rl.Config(**base, output_dir=str(tmp_path / "local")))
    b = rl.run(rl.Config(**base, generation_workers=2, output_dir=str(tmp_path / "ray")))
    ra = [r["completion"] for r in map(json.loads, (a / "rollouts.jsonl").read_text().splitlines())]
    rb = [r["completion"] for r in map(json.loads, (b / "rollouts.jsonl").read_text().splitlines())]
    assert ra == rb and len(ra) == 16
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_lora_trains_only_adapters_with_the_init_as_anchor(tmp_path):
    from transformers import AutoModelForCausalLM

    out = rl.run(
        rl.Config(
            **{**LEARN, "freeze_embeddings": True, "save_steps": 2, "eta": 0.0},
            lora=Lora(r=4),
            steps=2,
            output_dir=str(tmp_path / "rl"),
        )
    )
    anchor = load_file(out / "checkpoints" / "checkpoint-2" / "anchor.safetensors")
    policy = load_file(out / "checkpoints" / "checkpoint-2" / "policy.safetensors")
    assert anchor and all("lora_" in k for k in anchor) and anchor.keys() == policy.keys()
    b_keys = [k for k in anchor if "lora_B" in k]
    # B starts at 0: after 2 steps the policy's B moved, and the anchor is still the init (B = 0)
    assert any(policy[k].abs().sum() > 0 for k in b_keys)
    assert all(anchor[k].abs().sum() == 0 for k in b_keys)
    assert (out / "checkpoints" / "checkpoint-2" / "adapter_config.json").is_file()  # peft adapter checkpoint
    merged = AutoModelForCausalLM.from_pretrained(out)  # merged: a plain model, no adapter files
    assert not any("lora" in k for k in merged.state_dict()) and not (out / "adapter_config.json").exists()


def test_lora_init_depends_on_the_seed_only():
    # WARP trains its runs in reused Ray workers, whose global generator is wherever the last run left it
    config = rl.Config(**{**LEARN, "eta": 0.0}, lora=Lora(r=4))
    first = rl.trainable(rl.load_policy("tiny", config)[0])
    torch.rand(1000)
    again = rl.trainable(rl.load_policy("tiny", config)[0])
    other = rl.trainable(rl.load_policy("tiny", dataclasses.replace(config, seed=1))[0])
    a_keys = [k for k in first if "lora_A" in k]
    assert a_keys and all(torch.equal(first[k], again[k]) for k in a_keys)
    assert not all(torch.equal(first[k], other[k]) for k in a_keys)


def test_a_moving_lora_anchor_is_refused(tmp_path):
    """An EMA of the factors A and B is not an EMA of the policy W + B·A: (1−η)·B0A0 + η·B1A1 ≠ B̄·Ā."""
    torch.manual_seed(0)
    a0, b0, a1, b1 = (torch.randn(4, 4) for _ in range(4))
    eta = 0.5
    ema_of_factors = ((1 - eta) * b0 + eta * b1) @ ((1 - eta) * a0 + eta * a1)
    assert not torch.allclose(ema_of_factors, (1 - eta) * b0 @ a0 + eta * b1 @ a1)
    with pytest.raises(rl.UserError, match=r"lora.r=4 with eta=0.1: .*not an EMA of the policy"):
        rl.run(rl.Config(**LEARN, lora=Lora(r=4), output_dir=str(tmp_path / "rl")))
    assert not (tmp_path / "rl").exists()


def test_step_prompts_cover_each_epoch_once():
    config = rl.Config(prompts_per_step=3, seed=5)
    seen = [i for s in range(1, 5) for i in rl.step_prompts(config, s, 6)]
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:12]) == list(range(6))
    assert seen[:6] != seen[6:12]  # a fresh permutation per epoch


def test_swapped_restores_the_trainable_tensors(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer
    params = rl.trainable(model)
    before = rl.snapshot(params)
    zeros = {k: torch.zeros_like(v) for k, v in before.items()}
    with rl.swapped(params, zeros):
        assert all(p.abs().sum() == 0 for p in params.values())
    assert all(torch.equal(params[k], before[k]) for k in params)


@pytest.mark.parametrize(
    "override, message",
    [
        ("algorithm=ppo", "unknown algorithm 'ppo'"),
        ("ties=coin", "ties must be one of"),
        ("forward=worst", "forward must be one of"),
        ("rewards.names=nope", "unknown reward 'nope'"),
        ("data=missing.jsonl", "missing.jsonl"),
        ("policy=runs/does-not-exist", "does-not-exist"),
        ("n=1", "need n >= 2"),
        ("save_total_limit=0", "save_total_limit must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, override, message):
    out = tmp_path / "rl"
    proc = posttrain("rl", "--config", TINY, f"output_dir={out}", override, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (out / "DONE").exists()


def test_config_dataclass_defaults_are_valid():
    rl.check(dataclasses.replace(rl.Config()))


def test_reinforce_with_the_anchor_kl_also_learns(tmp_path):
    """WARP's inner loop: REINFORCE on r − β·log(π/π_anchor), no anchor samples."""
    out = rl.run(rl.Config(**{**LEARN, "algorithm": "reinforce"}, steps=25, output_dir=str(tmp_path / "rl")))
    m = metrics(out)
    first = sum(x["reward"] for x in m[:5]) / 5
    last = sum(x["reward"] for x in m[-5:]) / 5
    assert last > first + 0.3, (first, last)  # measured 0.095 -> 0.897 over 40 steps
    assert m[0]["reward_anchor"] is None and m[0]["forward"] == 0.0
