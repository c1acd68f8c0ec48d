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
from posttrain.kd import capped_logits, sample_targets

FORMAT_VERSION = 1


class TeacherWorker:
    """A Ray actor holding one teacher; `run(shard)` returns that shard's sparse targets as arrays (shard["mode"]
    "logprobs": the teacher's log-prob of each next token instead, for the reverse divergence). An example is
    read at its `teacher_input_ids` / `teacher_positions` when it has them (privileged context), else at the
    student's `input_ids` / `positions`."""

    def __init__(
        self, teacher_dir: str, dtype: str, k: int, temperature: float, estimator: str, seed: int, threads: int = 1
    ):
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=getattr(torch, dtype)).eval()
        self.k, self.temperature, self.estimator, self.seed = k, temperature, estimator, seed

    def _logits(self, input_ids: list[int], positions: list[int]) -> torch.Tensor:
        # the LM head (262k x 640 for Gemma 3) is most of the cost: apply it at target positions only
        hidden = self.model.model(torch.tensor([input_ids])).last_hidden_state[0]
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return capped_logits(hidden[torch.tensor(positions, dtype=torch.long)], self.model.lm_head, softcap)

    @torch.no_grad()
    def run(self, shard: dict) -> dict:
        all_ids, all_weights, offsets = [], [], [0]
        for index, ex in zip(shard["indices"], shard["examples"]):
            input_ids = ex.get("teacher_input_ids", ex["input_ids"])
            positions = ex.get("teacher_positions", ex["positions"])
            logits = self._logits(input_ids, positions)
            if shard.get("mode") == "logprobs":
                nxt = torch.tensor([input_ids[p + 1] for p in positions], dtype=torch.long)
                logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)
                ids, weights = nxt.to(torch.int32)[:, None], logp.gather(-1, nxt[:, None])
            else:
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


def teacher_view(ex: dict) -> dict:
    """What the teacher needs of an example: its token ids and target positions (the teacher's own, with
    privileged context)."""
    keys = ("input_ids", "positions", "teacher_input_ids", "teacher_positions")
    return {k: ex[k] for k in keys if k in ex}


def teacher_dtype(config) -> str:
    """The teacher's forward dtype: bfloat16 only where the hardware runs it natively (models.use_bf16)."""
    from posttrain import models

    if config.teacher_dtype == "bfloat16" and not models.use_bf16(True):
        return "float32"
    return config.teacher_dtype


def worker_args(teacher_dir: Path, config) -> tuple:
    return (
        str(teacher_dir),
        teacher_dtype(config),
        config.k,
        config.teacher_temperature,
        config.estimator,
        config.seed,
    )


class OnlineTeacher:
    """The teacher for on-policy rows: `teacher_workers` Ray actors (on any node: only token ids go in and only
    ids + weights come back), started once for the run. `score(examples, step)` -> per example (ids, weights);
    the draws of example i at step s are seeded by (seed, s, i), so a resumed run redraws them."""

    STEP_KEY = 1_000_000_007  # keeps on-policy seeds apart from the off-policy ones (the example index)

    def __init__(self, teacher_dir: Path, config, mode: str):
        from posttrain import cluster

        ray = cluster.init(config.ray_address)
        n = max(1, config.teacher_workers)
        self.mode = mode
        self.actors = cluster.start_actors(
            TeacherWorker,
            num_actors=n,
            actor_args=worker_args(teacher_dir, config),
            num_cpus=1,
            num_gpus=1 if ray.cluster_resources().get("GPU", 0) >= n else 0,
        )
        self.bytes_received = 0
        self.tokens = 0

    def submit(self, examples: list[dict], step: int) -> list:
        """Start scoring `examples` on the actors (one call per example, spread over them); returns at once."""
        from posttrain import cluster

        keys = [self.STEP_KEY * (step + 1) + ex["index"] for ex in examples]
        shards = [
            {"shard": i, "indices": [k], "examples": [teacher_view(ex)], "mode": self.mode}
            for i, (k, ex) in enumerate(zip(keys, examples))
        ]
        return cluster.submit(self.actors, "run", shards)

    def collect(self, handle: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (ids, weights) per example of a `submit`, waiting for them."""
        from posttrain import cluster

        out = []
        for res in cluster.gather(handle):
            out.append((torch.from_numpy(res["ids"]), torch.from_numpy(res["weights"])))
            self.bytes_received += res["ids"].nbytes + res["weights"].nbytes
            self.tokens += res["ids"].shape[0]
        return out

    def close(self) -> None:
        from posttrain import cluster

        cluster.kill(self.actors)


def target_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def target_inputs(examples: list[dict], teacher_dir: Path, config) -> dict:
    """Everything the targets depend on; its hash is the cache key (the teacher's own inputs only when they
    differ from the student's: without privileged context the key is what it always was)."""
    from posttrain import data

    teacher_side = {}
    if any("teacher_input_ids" in ex for ex in examples):
        teacher_side = {
            "teacher_data_sha256": data.examples_hash(
                [{"input_ids": ex["teacher_input_ids"], "loss_mask": ex["teacher_positions"]} for ex in examples]
            )
        }
    return {
        **teacher_side,
        "format": FORMAT_VERSION,
        "teacher_sha256": artifacts.dir_sha256(teacher_dir),
        "teacher_dtype": teacher_dtype(config),
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
            "examples": [teacher_view(ex) for ex in examples[bounds[s] : bounds[s + 1]]],
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
        actor_args=worker_args(teacher_dir, config),
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
