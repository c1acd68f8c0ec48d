"""Weight-space maths on state dicts, streamed: the uniform average of WARM, and SLERP of task vectors and LITI
for WARP (Ramé et al. 2024, arXiv 2406.16768), top to bottom.

A model is a `state dict` source: an in-memory mapping name -> tensor, a `.safetensors` file, or an HF model
dir (single-file or sharded safetensors). Every operation is a per-tensor linear combination of its inputs,
sum_i w_i * theta_i[name], with weights fixed (average, LITI) or computed per tensor (SLERP):

    average([a, b, c])             ->  (1/M) sum_m theta_m                                 (WARM)
    slerp(init, [a, b], lam)       ->  theta_init + s1 * delta_1 + s2 * delta_2,  delta_m = theta_m - theta_init
                                       s1 = sin((1-lam) Omega) / sin Omega,  s2 = sin(lam Omega) / sin Omega,
                                       Omega = angle(delta_1, delta_2) of that tensor      (WARP's merge)
    liti(init, merged, eta)        ->  (1-eta) theta_init + eta theta_merged               (WARP's next init; also
                                       each point (1-eta') theta_sft + eta' theta_final of the Pareto front)

SLERP of M > 2 models iterates: the running task vector R starts as delta_1 and the m-th model is merged into
it with lam = 1/m, R <- slerp(R, delta_m, 1/m), so each model gets an equal share of the linear fallback
(which is then exactly the uniform average). The spherical result depends on the order in general (three
equal-norm orthogonal task vectors get 0.612, 0.612 and 0.5, not 1/sqrt 3 each); the norm of equal-norm
orthogonal task vectors is kept whatever the order. SLERP falls back to linear interpolation,
(1-lam) R + lam delta_m, when sin Omega < `eps` (parallel or anti-parallel task vectors, where the formula is
0/0) or when either task vector is zero (a tensor no run changed, e.g. a frozen embedding: no angle).

Streaming and memory: sources on disk are read with plain positioned reads (no mmap, whose touched pages
would stay in the process's resident set), in row blocks of about `chunk_elements` elements. SLERP reads
each tensor twice: once to accumulate the Gram matrix G_ij = <delta_i, delta_j> (all its angles and norms),
once to write theta_init + sum_m c_m delta_m with the coefficients c derived from G. With `out_dir` the
blocks go straight into the output safetensors file(s), so a merge holds one row block per input and never a
whole model; without it the result is returned as an in-memory state dict (one output model). Floats are
combined in float64 and rounded once to each tensor's own dtype (so lam = 0 or 1 and eta = 0 or 1 return an
endpoint exactly). Non-float tensors (int counters, bool masks): `average` rounds them to the nearest value,
`slerp` and `liti` require them equal in every input and refuse otherwise. Inputs must have the same keys,
shapes and dtypes; a mismatch is a UserError naming the key and the two models.

`out_dir` receives an HF model dir: model.safetensors (or model-0000k-of-0000n.safetensors + index when
larger than `max_shard_bytes`), and config/generation/tokenizer files copied from the first input that is an
HF dir; it is written to a staging dir beside `out_dir` and renamed into place, replacing `out_dir` as a
whole (so writing over one of the inputs is safe: everything is read before the rename). The work runs in
one torch thread (restored afterwards): it is memory-bound, and extra threads only add waits on a busy machine.

LoRA: these functions merge full weights. A LoRA run's adapters are merged into its base first
(theta = theta_base + (alpha/r) B A, peft's `merge_and_unload`; `merge_lora` writes that as an HF dir, and the
posttrain stages already save merged weights), because a weighted sum of adapters is not the adapter of the
weighted sum (B A is bilinear). An adapter dir given as a source is refused with that hint.

EMA: the in-training anchor update theta_a <- (1-mu) theta_a + mu theta is `posttrain.bond.ema_update` (in
place, on parameters); on files the same step is `liti(anchor, policy, mu)`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from posttrain import artifacts
from posttrain.errors import UserError

# ----------------------------------------------------------------------------------------------------
# 1. Reading sources


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


class _Lazy(Mapping):
    """Read-only name -> tensor view of safetensors file(s); a tensor (or a block of its rows) is read with
    positioned reads when it is asked for, into memory the caller owns (freed when the tensor is)."""

    def __init__(self, files: list[Path], where: str):
        self.where = where
        self._entries = {}  # name -> (fd, absolute byte offset, shape, dtype)
        self._fds = []
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            self._fds.append(fd)
            try:
                size = int.from_bytes(_pread(fd, 8, 0), "little")
                header = json.loads(_pread(fd, size, 8))
            except (OSError, ValueError) as e:
                raise UserError(f"{f}: not a readable safetensors file ({e})") from e
            header.pop("__metadata__", None)
            for key, meta in header.items():
                if meta["dtype"] not in _SAFETENSORS_DTYPES:
                    raise UserError(
                        f"{f}: tensor '{key}' has dtype {meta['dtype']}, which merging does not handle"
                    )
                self._entries[key] = (
                    fd,
                    8 + size + meta["data_offsets"][0],
                    tuple(meta["shape"]),
                    _SAFETENSORS_DTYPES[meta["dtype"]],
                )

    def __del__(self, _close=os.close):  # (os may be gone at interpreter exit)
        for fd in getattr(self, "_fds", ()):
            _close(fd)

    def __getitem__(self, key: str) -> torch.Tensor:
        shape = self.shape(key)
        return self.rows(key, 0, shape[0]) if shape else self._read(key, 0, 1).reshape(())

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][2]

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key][3]

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shape(key)
        per_row = math.prod(shape[1:])
        return self._read(key, start * per_row, (stop - start) * per_row).reshape(stop - start, *shape[1:])

    def _read(self, key: str, first: int, count: int) -> torch.Tensor:
        fd, offset, _, dtype = self._entries[key]
        itemsize = torch.empty((), dtype=dtype).element_size()
        out = torch.empty(count * itemsize, dtype=torch.uint8)
        _pread(fd, count * itemsize, offset + first * itemsize, into=out.numpy())
        return out.view(dtype)


def _pread(fd: int, n: int, offset: int, into=None):
    buf = into if into is not None else bytearray(n)
    view, done = memoryview(buf).cast("B"), 0
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"file ends {n - done} bytes early")
        done += got
    return buf


def open_state(source) -> Mapping[str, torch.Tensor]:
    """A state-dict view of a mapping, a .safetensors file or an HF model dir."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return _Lazy([path], str(path))
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
            return _Lazy(files, str(path))
        if (path / "model.safetensors").is_file():
            return _Lazy([path / "model.safetensors"], str(path))
        if (path / "adapter_config.json").is_file():
            raise UserError(
                f"{path} is a LoRA adapter, not full weights: merge it into its base first "
                "(posttrain.merging.merge_lora), then merge the full models"
            )
        raise UserError(f"{path}: no model.safetensors (or sharded index) to read weights from")
    raise UserError(f"not a model dir or .safetensors file: {path}")


def _name(source, i: int) -> str:
    return getattr(source, "where", None) or (str(source) if not isinstance(source, Mapping) else f"model {i}")


def check_compatible(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Same keys, and per key the same shape and dtype, in every state dict; otherwise a UserError naming
    the first offending key and the two models."""
    ref = states[0]
    ref_keys = set(ref)
    for state, name in zip(states[1:], names[1:]):
        keys = set(state)
        if keys != ref_keys:
            key = sorted(ref_keys ^ keys)[0]
            has, lacks = (names[0], name) if key in ref_keys else (name, names[0])
            raise UserError(
                f"cannot merge: key '{key}' is in {has} but not in {lacks} (models of different architectures)"
            )
    for key in sorted(ref_keys):
        ref_shape, ref_dtype = _shape(ref, key), _dtype(ref, key)
        for state, name in zip(states[1:], names[1:]):
            if _shape(state, key) != ref_shape:
                raise UserError(
                    f"cannot merge: '{key}' has shape {list(_shape(state, key))} in {name} but "
                    f"{list(ref_shape)} in {names[0]}"
                )
            if _dtype(state, key) != ref_dtype:
                raise UserError(
                    f"cannot merge: '{key}' is {_dtype(state, key)} in {name} but {ref_dtype} in {names[0]}"
                )


def _shape(state, key) -> tuple[int, ...]:
    return state.shape(key) if isinstance(state, _Lazy) else tuple(state[key].shape)


def _dtype(state, key):
    return state.dtype(key) if isinstance(state, _Lazy) else state[key].dtype


def _rows(state, key, block: tuple[int, int] | None) -> torch.Tensor:
    """Rows start:stop of a tensor, or the whole tensor when `block` is None (0-dim tensors)."""
    if block is None:
        return state[key]
    return state.rows(key, *block) if isinstance(state, _Lazy) else state[key][block[0] : block[1]]


def _blocks(shape: tuple[int, ...], chunk_elements: int) -> Iterator[tuple[int, int] | None]:
    """Row blocks of about `chunk_elements` elements (a 262k-row embedding is never read whole)."""
    if not shape:
        yield None
        return
    step = max(1, chunk_elements // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        yield start, min(start + step, shape[0])


# ----------------------------------------------------------------------------------------------------
# 2. The streamed linear combination (every operation below is one)


def _merge(
    states: list,
    names: list[str],
    weights_of: Callable[[str], Sequence[float]],
    *,
    integers: str,
    out_dir,
    chunk_elements: int,
    max_shard_bytes: int,
):
    """Per key, sum_i weights_of(key)[i] * states[i][key] in row blocks (float64, rounded once to the dtype);
    non-float tensors are rounded (`integers="round"`) or must be equal in every state (`"equal"`). Returns
    the state dict, or writes it to `out_dir` block by block and returns that path."""

    def tensor_blocks(key: str) -> Iterator[tuple[tuple[int, int] | None, torch.Tensor]]:
        shape, dtype = _shape(states[0], key), _dtype(states[0], key)
        exact = dtype.is_floating_point or dtype.is_complex
        if not exact and integers == "equal":
            ref = states[0][key]
            for state, name in zip(states[1:], names[1:]):
                if not torch.equal(state[key], ref):
                    raise UserError(
                        f"cannot merge: '{key}' is a {dtype} tensor that differs between {names[0]} "
                        f"and {name}; only float tensors can be interpolated"
                    )
            yield None, ref
            return
        weights = weights_of(key)
        for block in _blocks(shape, chunk_elements):
            acc = None
            for state, w in zip(states, weights):
                part = _rows(state, key, block).to(torch.float64, copy=True).mul_(w)  # (a copy: never the input)
                acc = part if acc is None else acc.add_(part)
            yield block, acc.to(dtype) if exact else acc.round_().to(dtype)

    # One torch thread: the work is memory-bound elementwise ops on row blocks, where more threads gain
    # little and, on a busy machine, wait at every op's barrier (2.7x slower at load 4 on 2 cores, measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if out_dir is None:
            out = {}
            for key in states[0]:
                result = torch.empty(_shape(states[0], key), dtype=_dtype(states[0], key))
                for block, values in tensor_blocks(key):
                    if block is None:
                        result.copy_(values)
                    else:
                        result[block[0] : block[1]] = values
                out[key] = result
            return out
        dirs = [Path(s.where) for s in states if isinstance(s, _Lazy) and Path(s.where).is_dir()]
        return _write_hf_dir(
            out_dir, states[0], tensor_blocks, copy_from=dirs[0] if dirs else None, max_shard_bytes=max_shard_bytes
        )
    finally:
        torch.set_num_threads(threads)


_HF_FILES = (
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def _write_hf_dir(out_dir, ref, tensor_blocks, *, copy_from: Path | None, max_shard_bytes: int) -> Path:
    """Write safetensors shard(s) whose header is planned from `ref`'s shapes and dtypes, then each tensor's
    blocks in order, into a staging dir; copy config and tokenizer files; rename the dir into place."""
    out_dir = Path(out_dir)
    sizes = {k: math.prod(_shape(ref, k)) * torch.empty((), dtype=_dtype(ref, k)).element_size() for k in ref}
    shards, current, used = [], [], 0
    for key in ref:
        if current and used + sizes[key] > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(key)
        used += sizes[key]
    shards.append(current)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    staging = artifacts.atomic_dir(out_dir)
    try:
        for name, keys in zip(names, shards):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for key in keys:
                header[key] = {
                    "dtype": _DTYPE_NAMES[_dtype(ref, key)],
                    "shape": list(_shape(ref, key)),
                    "data_offsets": [offset, offset + sizes[key]],
                }
                offset += sizes[key]
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
            with open(staging / name, "wb") as f:
                f.write(len(text).to_bytes(8, "little") + text)
                for key in keys:
                    for _, values in tensor_blocks(key):
                        f.write(values.contiguous().reshape(-1).view(torch.uint8).numpy())
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(sizes.values())},
                "weight_map": {k: n for n, keys in zip(names, shards) for k in keys},
            }
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
        if copy_from is not None:
            for f in copy_from.iterdir():
                if f.is_file() and (f.name in _HF_FILES or f.name.startswith("tokenizer")):
                    shutil.copy2(f, staging / f.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return artifacts.publish_dir(staging, out_dir)


def _open_all(sources: Sequence) -> tuple[list, list[str]]:
    states = [open_state(s) for s in sources]
    names = [_name(s, i) for i, s in enumerate(states)]
    check_compatible(states, names)
    return states, names


_CHUNK = 1 << 22  # elements per row block: 32 MB of float64 per input
_SHARD = 5_000_000_000  # bytes per output shard (save_pretrained's historical "5GB")


# ----------------------------------------------------------------------------------------------------
# 3. The operations


def average(
    sources: Sequence,
    weights: Sequence[float] | None = None,
    *,
    out_dir=None,
    chunk_elements: int = _CHUNK,
    max_shard_bytes: int = _SHARD,
):
    """Weighted average (uniform by default) of M state dicts, tensor by tensor; each result keeps its
    input dtype. Floats are summed in float64 and rounded once to their dtype; integer and bool tensors
    (counters such as BatchNorm's num_batches_tracked) are rounded to the nearest value. M = 1 returns the
    member's tensors unchanged. Returns the state dict, or writes an HF dir to `out_dir` and returns it."""
    if not sources:
        raise UserError("nothing to average: no models given")
    if weights is None:
        weights = [1.0 / len(sources)] * len(sources)
    if len(weights) != len(sources) or abs(sum(weights) - 1.0) > 1e-9:
        raise UserError(f"merge weights must be one per model and sum to 1, got {list(weights)}")
    states, names = _open_all(sources)
    return _merge(
        states,
        names,
        lambda key: weights,
        integers="round",
        out_dir=out_dir,
        chunk_elements=chunk_elements,
        max_shard_bytes=max_shard_bytes,
    )


def slerp_coefficients(gram: torch.Tensor, lam: float | None = None, eps: float = 1e-4) -> list[float]:
    """Coefficients c with sum_m c_m delta_m = the (iterated) SLERP of task vectors whose Gram matrix is
    `gram` (G_ij = <delta_i, delta_j>). M = 2: lam is the weight of the second (None = 0.5); M > 2: lam must
    be None and the m-th is merged into the running result with lam = 1/m (see the module docstring)."""
    gram = gram.to(torch.float64)
    m_total = gram.shape[0]
    if lam is not None and m_total != 2:
        raise UserError(
            f"slerp: lam applies to two models; {m_total} models are merged with equal weight (leave lam unset)"
        )
    coef = torch.zeros(m_total, dtype=torch.float64)
    coef[0] = 1.0
    for m in range(1, m_total):
        step = lam if lam is not None else 1.0 / (m + 1)
        norm_r2, norm_d2, dot = float(coef @ gram @ coef), float(gram[m, m]), float((gram @ coef)[m])
        if norm_r2 > 0 and norm_d2 > 0:
            omega = math.acos(max(-1.0, min(1.0, dot / math.sqrt(norm_r2 * norm_d2))))
        else:
            omega = 0.0  # a zero task vector has no angle: linear
        if math.sin(omega) < eps:
            keep, add = 1.0 - step, step
        else:
            keep, add = math.sin((1 - step) * omega) / math.sin(omega), math.sin(step * omega) / math.sin(omega)
        coef *= keep
        coef[m] += add
    return coef.tolist()


def _gram(states: list, key: str, chunk_elements: int) -> torch.Tensor:
    """G_ij = <theta_i - theta_0, theta_j - theta_0> over i, j >= 1 for one tensor, accumulated in float64
    block by block."""
    gram = torch.zeros(len(states) - 1, len(states) - 1, dtype=torch.float64)
    for block in _blocks(_shape(states[0], key), chunk_elements):
        base = _rows(states[0], key, block).to(torch.float64).reshape(-1)
        deltas = torch.empty(len(states) - 1, base.numel(), dtype=torch.float64)
        for i, state in enumerate(states[1:]):
            torch.sub(_rows(state, key, block).reshape(-1), base, out=deltas[i])
        gram += deltas @ deltas.T
    return gram


def slerp(
    init,
    sources: Sequence,
    lam: float | None = None,
    out_dir=None,
    *,
    eps: float = 1e-4,
    chunk_elements: int = _CHUNK,
    max_shard_bytes: int = _SHARD,
):
    """WARP's merge: per-tensor spherical interpolation of the task vectors delta_m = theta_m - theta_init of
    M >= 2 fine-tunes of `init` (iterated for M > 2, linear when sin Omega < eps or a task vector is zero;
    formulas in the module docstring). Returns the state dict, or writes an HF dir to `out_dir`."""
    if len(sources) < 2:
        raise UserError(f"slerp needs at least two fine-tuned models, got {len(sources)}")
    states, names = _open_all([init, *sources])

    def weights_of(key: str) -> list[float]:
        coef = slerp_coefficients(_gram(states, key, chunk_elements), lam, eps)
        return [1.0 - sum(coef), *coef]  # theta_init + sum c_m (theta_m - theta_init)

    return _merge(
        states,
        names,
        weights_of,
        integers="equal",
        out_dir=out_dir,
        chunk_elements=chunk_elements,
        max_shard_bytes=max_shard_bytes,
    )


def liti(init, merged, eta: float, out_dir=None, *, chunk_elements: int = _CHUNK, max_shard_bytes: int = _SHARD):
    """Linear interpolation towards the initialisation: (1 - eta) theta_init + eta theta_merged, 0 <= eta <= 1
    (eta = 0 gives init, eta = 1 the merged model). Returns the state dict, or writes an HF dir to `out_dir`."""
    if not 0.0 <= eta <= 1.0:
        raise UserError(f"liti: eta must be in [0, 1], got {eta}")
    states, names = _open_all([init, merged])
    return _merge(
        states,
        names,
        lambda key: [1.0 - eta, eta],
        integers="equal",
        out_dir=out_dir,
        chunk_elements=chunk_elements,
        max_shard_bytes=max_shard_bytes,
    )


def merge_lora(adapter_dir, out_dir, *, base=None) -> Path:
    """Full weights of a causal-LM LoRA run, as an HF dir: the base model (`base`, default the adapter's
    base_model_name_or_path; any posttrain model spec) with the adapters merged in by peft's merge_and_unload.
    Tokenizer files are copied from the adapter dir when it has them, else from the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain import models

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir}: not a peft adapter dir (no adapter_config.json)")
    base = base or json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}: the adapter records no base model; pass base=")
    base_dir = models.resolve(str(base))
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    has_tokenizer = any(f.name.startswith("tokenizer") for f in adapter_dir.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_dir)
    staging = artifacts.atomic_dir(out_dir)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return artifacts.publish_dir(staging, out_dir)
