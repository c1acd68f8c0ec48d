"""Output directories: refuse to clobber finished runs, atomic writes, `posttrain.json`, `DONE` last.

A stage's output dir is finished only when `DONE` exists; it is written after everything else, so a
crash at any point leaves a dir that no later stage (nor `--resume` logic) mistakes for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from posttrain.errors import UserError

DONE = "DONE"
MANIFEST = "posttrain.json"


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE).is_file()


def require_done(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir() and (path / MANIFEST).exists() and not is_done(path):
        raise UserError(f"{what} {path} is an unfinished posttrain run (no {DONE} file)")
    return path


def prepare_output(path: str | Path, *, overwrite: bool, resume: bool) -> Path:
    """Create the output dir; a finished run needs --overwrite, an unfinished one --resume or --overwrite."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif is_done(path):
            raise UserError(f"output dir {path} already holds a finished run; pass --overwrite to replace it")
        elif not resume:
            raise UserError(
                f"output dir {path} holds an unfinished run; pass --resume to continue it or --overwrite"
            )
    path.mkdir(parents=True, exist_ok=True)
    (path / DONE).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_dir(final: str | Path) -> Path:
    """A fresh staging dir beside `final`; publish it with `publish_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))


def publish_dir(staging: Path, final: str | Path) -> Path:
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_sha256(path: str | Path) -> str:
    """Content hash of the files in a dir (names + bytes), ignoring run bookkeeping."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel in (DONE, MANIFEST, "metrics.jsonl") or rel.startswith(("checkpoints/", "runs/")):
            continue
        h.update(rel.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("posttrain", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out_dir: str | Path, *, stage: str, config: dict, inputs: dict, extra: dict | None = None):
    record = {"stage": stage, "config": config, "inputs": inputs, "versions": versions(), **(extra or {})}
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(record, indent=2, sort_keys=True, default=str))


def mark_done(out_dir: str | Path) -> None:
    atomic_write_text(Path(out_dir) / DONE, "")
