"""Sparse teacher targets: computed by Ray actors over data shards, stored as shards, cached by content.

Layout of a target set ($POSTTRAIN_CACHE/targets/<key>/):
  shard-00000.safetensors   ids int32 (N, K), weights fp16 (N, K), offsets int64 (examples + 1)
  ...                       (N = target tokens of the shard's examples, in example order)
  manifest.json             key inputs: teacher hash, K, temperature, estimator, seed, data hash; shards;
                            which worker computed each shard. Written last: a dir without it is not a set.
The key is the hash of the manifest's inputs, so any change (teacher weights, data, tokenisation, K,
temperature, estimator, seed) computes a new set, and an unchanged one is reused.
Sampling is seeded per example (seed, example index) and each example is run alone (no padding), so the
bytes do not depend on how examples are sharded or which worker ran them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from posttrain import artifacts
from posttrain.kd import sample_targets

FORMAT_VERSION = 1


class TeacherWorker:
    """A Ray actor holding one teacher; `run(shard)` returns that shard's sparse targets as arrays."""

    def __init__(
        self, teacher_dir: str, dtype: str, k: int, temperature: float, estimator: str, seed: int, threads: int = 1
    ):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=getattr(torch, dtype)).eval()
        self.k, self.temperature, self.estimator, self.seed = k, temperature, estimator, seed

    @torch.no_grad()
    def run(self, shard: dict) -> dict:
        all_ids, all_weights, offsets = [], [], [0]
        for index, ex in zip(shard["indices"], shard["examples"]):
            # the LM head (262k x 640 for Gemma 3) is most of the cost: apply it at target positions only
            hidden = self.model.model(torch.tensor([ex["input_ids"]])).last_hidden_state[0]
            logits = self.model.lm_head(hidden[torch.tensor(ex["positions"], dtype=torch.long)])
            softcap = getattr(self.model.config, "final_logit_softcapping", None)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            ids, weights = sample_targets(
                logits, self.k, temperature=self.temperature, estimator=self.estimator, generator=g
            )
            all_ids.append(ids)
            all_weights.append(weights)
            offsets.append(offsets[-1] + ids.shape[0])
        return {
            "shard": shard["shard"],
            "ids": torch.cat(all_ids).numpy(),
            "weights": torch.cat(all_weights).numpy(),
            "offsets": offsets,
            "worker": f"{os.uname().nodename}:{os.getpid()}",
        }


def target_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def target_inputs(examples: list[dict], teacher_dir: Path, config) -> dict:
    """Everything the targets depend on; its hash is the cache key."""
    from posttrain import data

    return {
        "format": FORMAT_VERSION,
        "teacher_sha256": artifacts.dir_sha256(teacher_dir),
        "teacher_dtype": config.teacher_dtype,
        "k": config.k,
        "temperature": config.teacher_temperature,
        "estimator": config.estimator,
        "seed": config.seed,
        "data_sha256": data.examples_hash(examples),
    }


def build_targets(examples: list[dict], *, teacher_spec: str, config) -> Path:
    """The target set for these examples: reused from the cache, or computed by Ray actors."""
    from safetensors.numpy import save_file

    from posttrain import cluster, models

    teacher_dir = models.resolve(teacher_spec)
    inputs = target_inputs(examples, teacher_dir, config)
    root = Path(config.target_cache) if config.target_cache else models.cache_root() / "targets"
    out = root / target_key(inputs)
    if (out / "manifest.json").is_file():
        print(f"[posttrain] teacher targets: cache hit {out}", flush=True)
        return out

    n_shards = max(1, min(config.target_shards, len(examples)))
    bounds = [round(i * len(examples) / n_shards) for i in range(n_shards + 1)]
    shards = [
        {
            "shard": s,
            "indices": list(range(bounds[s], bounds[s + 1])),
            "examples": [
                {"input_ids": ex["input_ids"], "positions": ex["positions"]}
                for ex in examples[bounds[s] : bounds[s + 1]]
            ],
        }
        for s in range(n_shards)
    ]
    ray = cluster.init(config.ray_address)
    n_workers = max(1, min(config.teacher_workers, n_shards))
    print(
        f"[posttrain] teacher targets: {len(examples)} examples, {n_shards} shards, {n_workers} Ray actors",
        flush=True,
    )
    results = cluster.map_actors(
        TeacherWorker,
        shards,
        num_actors=n_workers,
        num_cpus=1,
        num_gpus=1 if ray.cluster_resources().get("GPU", 0) >= n_workers else 0,
        actor_args=(
            str(teacher_dir),
            config.teacher_dtype,
            config.k,
            config.teacher_temperature,
            config.estimator,
            config.seed,
        ),
        progress="teacher targets",
    )

    staging = artifacts.atomic_dir(out)
    records = []
    for res in results:
        name = f"shard-{res['shard']:05d}.safetensors"
        save_file(
            {"ids": res["ids"], "weights": res["weights"], "offsets": np.asarray(res["offsets"], dtype=np.int64)},
            str(staging / name),
        )
        records.append(
            {
                "file": name,
                "examples": len(res["offsets"]) - 1,
                "tokens": int(res["ids"].shape[0]),
                "worker": res["worker"],
            }
        )
    manifest = {"inputs": inputs, "shards": records, "teacher": str(teacher_dir)}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return artifacts.publish_dir(staging, out)


def load_targets(target_dir: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per example, in order: (ids int32 (n, K), weights fp16 (n, K))."""
    from safetensors.torch import load_file

    target_dir = Path(target_dir)
    manifest = json.loads((target_dir / "manifest.json").read_text())
    out = []
    for rec in manifest["shards"]:
        t = load_file(str(target_dir / rec["file"]))
        off = t["offsets"].tolist()
        out += [(t["ids"][a:b], t["weights"][a:b]) for a, b in zip(off[:-1], off[1:])]
    return out
