"""`posttrain demo` chains the stages: filter -> sft (on the clean output) -> rm (from the sft output)."""

import dataclasses
import json

from tests.posttrain.test_sft_cli import posttrain


def test_demo_pipeline_on_tiny_configs(tmp_path):
    proc = posttrain("demo", "configs=configs/tiny", "rl=warp.yaml", f"output_root={tmp_path}")
    sft = json.loads((tmp_path / "sft" / "posttrain.json").read_text())
    assert (tmp_path / "filter" / "DONE").is_file() and (tmp_path / "sft" / "DONE").is_file()
    assert sft["inputs"]["data"] == str(tmp_path / "filter" / "clean.jsonl")
    assert "student KD loss on held-out rows: before" in proc.stdout
    rm = json.loads((tmp_path / "rm" / "posttrain.json").read_text())
    assert (tmp_path / "rm" / "DONE").is_file() and rm["config"]["init"] == str(tmp_path / "sft")
    # a second run reuses every finished stage
    rl = json.loads((tmp_path / "rl" / "posttrain.json").read_text())
    assert rl["config"]["policy"] == str(tmp_path / "sft")
    assert rl["config"]["inner"]["rewards"]["reward_model"] == str(tmp_path / "rm")
    for name in ("eval-base", "eval-sft", "eval-rl"):
        assert (tmp_path / name / "DONE").is_file()
    demo = json.loads((tmp_path / "demo.json").read_text())
    from posttrain import demo as demo_stage
    from tests.conftest import ROOT

    base = demo_stage.base_model(ROOT / "configs" / "tiny" / "sft.yaml")  # the cached layer cut of the student
    assert demo["models"] == {"base": base, "sft": str(tmp_path / "sft"), "rl": str(tmp_path / "rl")}
    for reward in ("math", "overall"):
        for metric in ("greedy_accuracy", "pass@1"):
            assert set(demo["table"][reward][metric]) == {"base", "sft", "rl"}, (reward, metric)
    base_report = json.loads((tmp_path / "eval-base" / "report.json").read_text())
    assert demo["table"]["math"]["pass@1"]["base"] == base_report["per_reward"]["math"]["pass@1"]
    assert set(demo["bond"]["math"]) == {"rl_pass@1", "sft_pass@2"}
    curve = demo["training_reward"]
    assert len(curve["reward"]) == 6 and curve["first_fifth"] is not None  # WARP: 2 iterations x 3 steps
    assert (tmp_path / "demo.png").stat().st_size > 0 and "base -> SFT -> RL" in proc.stdout
    for key in ("models", "table"):  # each model is something `posttrain eval --model` takes
        assert key in demo
    from posttrain import config as cfg
    from posttrain import evaluate

    for spec in demo["models"].values():
        cfg.load(evaluate.Config, None, [f"model={spec}"])
    assert json.loads((tmp_path / "eval-rl" / "posttrain.json").read_text())["config"]["model"] == str(
        tmp_path / "rl"
    )
    assert "WARP iteration 2, mean of its runs" in proc.stdout
    again = posttrain("demo", "configs=configs/tiny", "rl=warp.yaml", f"output_root={tmp_path}")
    assert again.stdout.count("reusing finished") == 7  # filter, sft, rm, eval-base, eval-sft, rl, eval-rl


def test_a_finished_stage_is_reused_only_with_the_same_config(tmp_path):
    from posttrain import artifacts, demo, evaluate

    out = tmp_path / "eval"
    out.mkdir()
    made = evaluate.Config(model="runs/a", output_dir=str(out))
    artifacts.write_manifest(out, stage="eval", config=dataclasses.asdict(made), inputs={})
    artifacts.mark_done(out)
    assert demo._same_config(out, dataclasses.replace(made, overwrite=True))
    assert not demo._same_config(out, dataclasses.replace(made, model="runs/b"))  # another model: rerun


def test_a_finished_stage_is_rerun_after_a_stage_it_reads(tmp_path):
    """The same config is not enough: eval-rl of runs/rl is stale once rl has been rerun into runs/rl."""
    import os

    from posttrain import artifacts, demo

    policy, report = tmp_path / "rl", tmp_path / "eval-rl"
    for d, when in ((policy, 1_000), (report, 2_000)):
        d.mkdir()
        artifacts.mark_done(d)
        os.utime(d / artifacts.DONE, ns=(when, when))
    assert demo._newer(report, (policy,))
    os.utime(policy / artifacts.DONE, ns=(3_000, 3_000))  # rl finished again, after its eval
    assert not demo._newer(report, (policy,))
    assert demo._newer(report, ())


def test_quick_demo_configs_load_and_are_smaller_than_the_full_demo():
    """`posttrain demo --quick` reads configs/demo-quick: every stage's config is valid, writes under
    runs/demo-quick, and is smaller than its configs/demo counterpart where time goes."""
    from posttrain import config as cfg
    from posttrain import distill, evaluate, warm, warp
    from posttrain import filter as filter_stage
    from tests.conftest import ROOT

    def load(module, name, which):
        return cfg.load(module.Config, ROOT / "configs" / which / name, [])

    quick = {
        n: load(m, n, "demo-quick")
        for m, n in [
            (filter_stage, "filter.yaml"),
            (distill, "sft.yaml"),
            (warm, "rm.yaml"),
            (evaluate, "eval.yaml"),
            (warp, "recipe.yaml"),
        ]
    }
    full = {
        n: load(m, n, "demo")
        for m, n in [(distill, "sft.yaml"), (warm, "rm.yaml"), (evaluate, "eval.yaml"), (warp, "recipe.yaml")]
    }
    assert quick["filter.yaml"].output.startswith("runs/demo-quick/")
    for name in ("sft.yaml", "rm.yaml", "recipe.yaml"):
        assert quick[name].output_dir.startswith("runs/demo-quick/"), name
    assert quick["sft.yaml"].max_examples < full["sft.yaml"].max_examples
    assert (
        quick["rm.yaml"].num_members * quick["rm.yaml"].max_examples
        < full["rm.yaml"].num_members * full["rm.yaml"].max_examples
    )
    assert (
        quick["eval.yaml"].max_examples * quick["eval.yaml"].samples
        < full["eval.yaml"].max_examples * full["eval.yaml"].samples
    )
    q, f = quick["recipe.yaml"], full["recipe.yaml"]
    assert isinstance(q, warp.Config) and q.iterations == 2 and q.runs == 2  # still the whole recipe
    assert q.inner.steps * q.inner.prompts_per_step < f.inner.steps * f.inner.prompts_per_step
    assert q.policy == quick["sft.yaml"].output_dir and q.inner.rewards.reward_model == quick["rm.yaml"].output_dir


def test_quick_with_another_configs_dir_is_one_error():
    proc = posttrain("demo", "--quick", "configs=configs/tiny", check=False)
    assert proc.returncode == 2 and "error: demo: quick=true uses configs/demo-quick" in proc.stderr


def test_gpu_configs_load_and_validate_on_cpu(monkeypatch):
    """configs/gpu (a real instruction-tuned teacher from the Hub) parses and passes every stage's checks here;
    offline, its hf: models are one clear error naming the repo (nothing is downloaded in tests)."""
    import pytest

    from posttrain import config as cfg
    from posttrain import distill, evaluate, models, warm, warp
    from posttrain import filter as filter_stage
    from posttrain.errors import UserError
    from tests.conftest import ROOT

    gpu = ROOT / "configs" / "gpu"
    loaded = {
        name: cfg.load(module.Config, gpu / name, [])
        for module, name in [
            (filter_stage, "filter.yaml"),
            (distill, "sft.yaml"),
            (warm, "rm.yaml"),
            (evaluate, "eval.yaml"),
            (warp, "recipe.yaml"),
        ]
    }
    distill.check(loaded["sft.yaml"])
    evaluate._check(loaded["eval.yaml"])
    warp.check(loaded["recipe.yaml"])
    sft = loaded["sft.yaml"]
    assert sft.teacher == "hf:google/gemma-3-4b-it" and sft.student == "hf:google/gemma-3-1b-pt"
    assert loaded["recipe.yaml"].inner.temperature == 0.9 and loaded["recipe.yaml"].run_gpus == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(ROOT / ".no-hf-cache-here"))
    with pytest.raises(UserError, match="hf:google/gemma-3-4b-it: cannot get it from the Hugging Face Hub"):
        models.resolve(sft.teacher)
