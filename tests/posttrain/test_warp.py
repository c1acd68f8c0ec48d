"""`posttrain warp` (posttrain/warp.py) through the CLI on configs/tiny/warp.yaml (I = 2, M = 2):
every artifact, the Pareto front's endpoints, a killed Ray worker retried from its checkpoint, a run that fails
twice failing the stage with one error line, and --resume finishing exactly as an uninterrupted run.

Failures are injected deterministically by hooks (tests/posttrain/faults.py): --kill-at 2 SIGKILLs the Ray worker
of every run's first attempt after step 2 (checkpoint-2 is saved first, so the retry resumes past step 2 and
finishes); --fail iter-2/run-2 raises in that run's task on every attempt."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.posttrain.test_sft_cli import posttrain

TINY = str(ROOT / "configs" / "tiny" / "warp.yaml")
RUNS = [f"iter-{i}/run-{m}" for i in (1, 2) for m in (1, 2)]


def weights(path):
    return load_file(str(path / "model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def warp(tmp_path_factory):
    """One uninterrupted tiny WARP, shared by the tests below."""
    out = tmp_path_factory.mktemp("warp") / "rl"
    proc = posttrain("warp", "--config", TINY, f"output_dir={out}")
    return out, proc


def test_tiny_warp_writes_every_artifact(warp):
    from transformers import AutoModelForCausalLM

    out, proc = warp
    assert (out / "DONE").is_file()
    record = json.loads((out / "posttrain.json").read_text())
    assert record["stage"] == "warp" and record["config"]["inner"]["algorithm"] == "bond"
    for i in (1, 2):
        for name in ("run-1", "run-2", "slerp", "init"):
            model = AutoModelForCausalLM.from_pretrained(out / f"iter-{i}" / name)
            assert model.config.model_type == "gemma3_text", (i, name)
    for run in RUNS:
        assert (out / run / "DONE").is_file() and (out / run / "reward_kl.png").is_file()
        assert steps(out / run) == [1, 2, 3]
        assert not (out / run / "checkpoints").exists()  # a finished run is never resumed: no dead GBs
    manifests = {run: json.loads((out / run / "posttrain.json").read_text()) for run in RUNS}
    assert len({m["config"]["seed"] for m in manifests.values()}) == 4  # every run has its own seed
    assert {m["config"]["algorithm"] for m in manifests.values()} == {"bond"}
    # iteration 2 starts from iteration 1's LITI step, iteration 1 from the SFT policy
    assert manifests["iter-2/run-1"]["inputs"]["policy"] == str(out / "iter-1" / "init")
    assert manifests["iter-1/run-1"]["inputs"]["policy"] == record["inputs"]["sft_weights"]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "gemma3_text"  # the final policy

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2]
    assert all(0 < h["task_vector_angle_deg"] < 180 and len(h["runs"]) == 2 for h in history)

    rows = json.loads((out / "pareto.json").read_text())
    assert [r["eta"] for r in rows] == [0.0, 0.5, 1.0]
    for r in rows:
        assert (out / "pareto" / f"eta-{r['eta']:g}" / "eval" / "DONE").is_file()
        assert isinstance(r["kl"], float) and r["reward"] is not None
        assert set(r["per_reward"]) == {"math", "format"} and "greedy_accuracy" in r["overall"]
    assert rows[0]["kl"] == 0.0  # θ_0 is θ_sft: both log-probs come from one code path
    assert rows[2]["kl"] != 0.0
    assert (out / "pareto.png").stat().st_size > 1000
    assert "Pareto front" in proc.stdout and "WARP iterations" in proc.stdout


def test_pareto_endpoints_are_the_sft_and_the_final_weights(warp):
    out, _ = warp
    sft = weights(out / json.loads((out / "posttrain.json").read_text())["inputs"]["sft_weights"])
    final = weights(out)
    assert same(final, weights(out / "iter-2" / "slerp"))
    assert not same(final, sft)
    assert same(weights(out / "pareto" / "eta-0"), sft)
    assert same(weights(out / "pareto" / "eta-1"), final)


def test_failed_runs_retry_once_then_fail_the_stage_and_resume_finishes_exactly(warp, tmp_path):
    out = tmp_path / "rl"
    faults = ["--kill-at", "2", "--fail", "iter-2/run-2"]
    proc = posttrain("warp", "--config", TINY, f"output_dir={out}", faults=faults, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "iter-2/run-2 failed 2 times" in errors[0] and "injected failure" in errors[0]
    assert "Traceback" not in proc.stderr.split(errors[0])[-1]
    # every run's first attempt lost its worker at step 2 and its retry resumed from checkpoint-2
    for run in ("iter-1/run-1", "iter-1/run-2", "iter-2/run-1"):
        assert f"{run} failed (WorkerCrashedError" in proc.stdout
        assert (out / run / "DONE").is_file() and steps(out / run) == [1, 2, 3]  # steps logged once
    assert "iter-2/run-2 failed (RuntimeError: injected failure" in proc.stdout
    assert not (out / "iter-2" / "run-2" / "DONE").exists() and (out / "iter-2" / "run-2" / "error.log").is_file()
    assert not (out / "DONE").exists() and not (out / "iter-2" / "slerp").exists()

    finished = {run: (out / run / "model.safetensors").stat().st_mtime_ns for run in RUNS[:3]}
    resumed = posttrain("warp", "--config", TINY, f"output_dir={out}", "--resume")
    assert "WARP iteration 1: finished earlier" in resumed.stdout and "1 of 2 bond runs" in resumed.stdout
    assert {run: (out / run / "model.safetensors").stat().st_mtime_ns for run in RUNS[:3]} == finished
    assert (out / "DONE").is_file() and not (out / "iter-2" / "run-2" / "error.log").exists()
    # retried and resumed runs reproduce the uninterrupted WARP bit for bit (CPU, seeded)
    straight, _ = warp
    for sub in (*RUNS, "iter-2/init", "pareto/eta-0.5"):
        assert same(weights(out / sub), weights(straight / sub)), sub
    assert same(weights(out), weights(straight))
    kl = [r["kl"] for r in json.loads((out / "pareto.json").read_text())]
    assert kl == [r["kl"] for r in json.loads((straight / "pareto.json").read_text())]


def test_bad_warp_fields_are_one_error_line(tmp_path):
    proc = posttrain("warp", "--config", TINY, f"output_dir={tmp_path / 'rl'}", "pareto_etas=[0,1.5]", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: pareto_etas must be in [0, 1], got [1.5]"


def _flaky(job):
    """Fails on its first `fails` calls (counted in a file, since each attempt is a fresh Ray task)."""
    from posttrain.errors import UserError

    count = job["count"]
    calls = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(calls))
    if job.get("user_error"):
        raise UserError("bad input")
    if calls <= job["fails"]:
        raise RuntimeError(f"attempt {calls} failed")
    return calls


def test_run_tasks_retries_a_failed_task_but_not_a_user_error(local_ray, tmp_path):
    from posttrain import cluster
    from posttrain.errors import UserError

    jobs = [{"count": tmp_path / "a", "fails": 0}, {"count": tmp_path / "b", "fails": 1}]
    assert cluster.run_tasks(_flaky, jobs, num_cpus=0.5, retries=1) == [1, 2]
    with pytest.raises(RuntimeError, match="attempt 2 failed") as info:
        cluster.run_tasks(_flaky, [{"count": tmp_path / "c", "fails": 2}], num_cpus=0.5, names=["c"], retries=1)
    assert "Ray task c after 2 attempts" in "".join(info.value.__notes__)
    with pytest.raises(UserError, match="^u: bad input$"):
        cluster.run_tasks(
            _flaky, [{"count": tmp_path / "u", "user_error": True}], num_cpus=0.5, names=["u"], retries=1
        )
    assert (tmp_path / "u").read_text() == "1"  # a UserError is not retried
    with pytest.raises(RuntimeError, match="attempt 1 failed"):  # retries=0 (the default): one attempt
        cluster.run_tasks(_flaky, [{"count": tmp_path / "d", "fails": 1}], num_cpus=0.5)
