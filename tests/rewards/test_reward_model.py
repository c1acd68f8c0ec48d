"""The built-in reward `reward_model`: TRL contract, scores from a trained tiny RM, batching and formats,
Ray-actor scoring, and no torch/Ray import when the module is imported."""

import dataclasses
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PREFS = ROOT / "data" / "tiny" / "prefs.jsonl"


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny RM trained for a few steps by the stage's own member trainer (in-process, no Ray)."""
    from transformers import AutoTokenizer

    from posttrain import artifacts, warm
    from posttrain import config as cfg

    root = tmp_path_factory.mktemp("rm")
    init = warm.build_init("tiny:num_hidden_layers=2,seed=3", root / "init", seed=0)
    config = dataclasses.replace(cfg.load(warm.Config, ROOT / "configs" / "tiny" / "rm.yaml"), max_steps=8)
    tok = AutoTokenizer.from_pretrained(init)
    pairs = warm.encode_pairs(tok, warm.read_pairs(PREFS)[16:], 128)
    job = {
        "member": 0,
        "label_noise": 0.0,
        "out": str(root / "member"),
        "init": str(init),
        "init_sha256": artifacts.dir_sha256(init),
        "train": pairs,
        "eval": pairs[:2],
        "train_sha256": "x",
        "seed": 0,
        "learning_rate": 0.003,
        "dropout": 0.0,
        "config": cfg.to_dict(config),
        "threads": 1,
        "progress": False,
    }
    warm.train_member(job)
    return root / "member"


def _heldout():
    rows = [json.loads(line) for line in PREFS.read_text().splitlines()][:16]
    return rows


def test_reward_model_follows_the_trl_contract_and_prefers_chosen(rm_dir):
    import rewards
    from rewards.reward_model import reward_model

    rows = _heldout()
    fn = rewards.load("rewards.reward_model:reward_model", model=str(rm_dir))
    prompts = [r["prompt"] for r in rows] * 2
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores = rewards.check_scores(fn(prompts, completions, answer=["x"] * 32), 32, "reward_model")
    assert all(isinstance(s, float) for s in scores)
    margins = [c - r for c, r in zip(scores[:16], scores[16:])]
    # held-out pairs ranked right, by a wide margin (the untrained init: margins in [-0.12, 0.26], 2 wrong)
    assert min(margins) > 0 and sum(margins) / 16 > 1.0, margins
    # None in, None out; the rest unchanged
    with_none = reward_model(prompts[:3], [completions[0], None, completions[2]], model=str(rm_dir))
    assert with_none[1] is None and with_none[0] == pytest.approx(scores[0], abs=1e-5)
    with pytest.raises(ValueError, match="needs the reward-model dir"):
        reward_model(prompts[:1], completions[:1])


def test_batching_and_message_lists_do_not_change_scores(rm_dir):
    from rewards.reward_model import RewardModelScorer

    rows = _heldout()
    prompts = [r["prompt"] for r in rows]
    completions = [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)]
    batched = RewardModelScorer(str(rm_dir), batch_size=16).score(prompts, completions)
    single = RewardModelScorer(str(rm_dir), batch_size=1).score(prompts, completions)
    assert batched == pytest.approx(single, abs=1e-4)  # right padding is ignored: the head reads <end_of_turn>
    as_messages = RewardModelScorer(str(rm_dir), batch_size=5).score(
        [[{"role": "user", "content": p}] for p in prompts],
        [[{"role": "assistant", "content": c}] for c in completions],
    )
    assert as_messages == pytest.approx(single, abs=1e-4)


def test_scoring_on_a_ray_actor_matches_in_process(rm_dir, local_ray):
    from posttrain import cluster
    from rewards.reward_model import RewardModelScorer

    rows = _heldout()
    batches = [
        {"prompts": [r["prompt"] for r in rows[i : i + 8]], "completions": [r["chosen"] for r in rows[i : i + 8]]}
        for i in (0, 8)
    ]
    remote = cluster.map_actors(RewardModelScorer, batches, num_actors=1, actor_args=(str(rm_dir),), num_cpus=0.5)
    local = RewardModelScorer(str(rm_dir))
    for batch, got in zip(batches, remote):
        assert got == pytest.approx(local.score(batch["prompts"], batch["completions"]), abs=1e-5)


def test_module_import_pulls_in_neither_torch_nor_ray():
    code = (
        "import sys, rewards.reward_model; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
