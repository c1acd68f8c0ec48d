"""Teacher-target shards: computed by >= 2 Ray actors, deterministic, cached, invalidated on change."""

import dataclasses
import json

import pytest
import torch

from posttrain import data, distill, kd, models, teacher


@pytest.fixture(scope="module")
def examples():
    tok = models.load_tokenizer("tiny")
    rows = data.read_rows(data_path())
    exs = data.tokenize_rows(tok, rows, 128)
    for ex in exs:
        ex["positions"] = kd.target_positions(ex["loss_mask"])
    return exs


def data_path():
    from tests.conftest import ROOT  # noqa: PLC0415

    return ROOT / "data" / "tiny" / "sft.jsonl"


def _config(cache, **kw):
    base = distill.Config(teacher="tiny:seed=1", k=16, teacher_workers=2, target_shards=4, target_cache=str(cache))
    return dataclasses.replace(base, **kw)


def _bytes(target_dir):
    return {p.name: p.read_bytes() for p in sorted(target_dir.glob("shard-*.safetensors"))}


def test_targets_are_deterministic_cached_and_use_two_actors(examples, tmp_path, local_ray):
    first = teacher.build_targets(examples, teacher_spec="tiny:seed=1", config=_config(tmp_path / "a"))
    manifest = json.loads((first / "manifest.json").read_text())
    workers = {s["worker"] for s in manifest["shards"]}
    assert len(workers) >= 2, workers
    assert manifest["inputs"]["k"] == 16 and manifest["inputs"]["estimator"] == "unbiased"
    assert sum(s["tokens"] for s in manifest["shards"]) == sum(len(ex["positions"]) for ex in examples)

    # same seed, fresh cache -> byte-identical shards
    second = teacher.build_targets(examples, teacher_spec="tiny:seed=1", config=_config(tmp_path / "b"))
    assert first.name == second.name and _bytes(first) == _bytes(second)

    # cache hit: the same dir comes back untouched
    stamp = (first / "manifest.json").stat().st_mtime_ns
    again = teacher.build_targets(examples, teacher_spec="tiny:seed=1", config=_config(tmp_path / "a"))
    assert again == first and (first / "manifest.json").stat().st_mtime_ns == stamp

    # sharding does not change the bytes of any example's targets
    resharded = teacher.build_targets(
        examples, teacher_spec="tiny:seed=1", config=_config(tmp_path / "c", target_shards=3)
    )
    for (i1, w1), (i2, w2) in zip(teacher.load_targets(first), teacher.load_targets(resharded)):
        assert torch.equal(i1, i2) and torch.equal(w1, w2)

    # loaded targets line up with each example's target positions and the stored format
    loaded = teacher.load_targets(first)
    for ex, (ids, w) in zip(examples, loaded):
        assert ids.shape == (len(ex["positions"]), 16) and ids.dtype == torch.int32 and w.dtype == torch.float16


@pytest.mark.parametrize(
    "change",
    [
        {"k": 8},
        {"teacher_temperature": 0.5},
        {"seed": 1},
        {"estimator": "renormalized"},
        {"teacher_dtype": "bfloat16"},
        {"teacher": "tiny:seed=3"},
        {"data": "drop-one"},
    ],
)
def test_any_input_change_changes_the_cache_key(examples, tmp_path, change, monkeypatch):
    # as on hardware with native bf16 (elsewhere a bfloat16 teacher runs, and is keyed, as float32)
    monkeypatch.setattr(models, "bf16_native", lambda device=None: True)
    base = teacher.target_key(teacher.target_inputs(examples, models.resolve("tiny:seed=1"), _config(tmp_path)))
    change = dict(change)
    teacher_dir = models.resolve(change.pop("teacher", "tiny:seed=1"))
    exs = examples[1:] if change.pop("data", None) else examples
    other = teacher.target_key(teacher.target_inputs(exs, teacher_dir, _config(tmp_path, **change)))
    assert other != base


def test_a_changed_setting_recomputes_new_shards(examples, tmp_path, local_ray):
    base = teacher.build_targets(examples, teacher_spec="tiny:seed=1", config=_config(tmp_path))
    other = teacher.build_targets(
        examples, teacher_spec="tiny:seed=1", config=_config(tmp_path, teacher_temperature=0.5)
    )
    assert other != base and (other / "manifest.json").is_file() and (base / "manifest.json").is_file()
    assert _bytes(other) != _bytes(base)


def test_a_bf16_teacher_without_native_bf16_is_keyed_as_the_fp32_one(examples, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "bf16_native", lambda device=None: False)
    teacher_dir = models.resolve("tiny:seed=1")
    fp32 = teacher.target_key(teacher.target_inputs(examples, teacher_dir, _config(tmp_path)))
    bf16_config = _config(tmp_path, teacher_dtype="bfloat16")
    bf16 = teacher.target_key(teacher.target_inputs(examples, teacher_dir, bf16_config))
    assert bf16 == fp32  # the same computation, so the same cached targets
