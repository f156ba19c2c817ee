"""SmolVLA's vision-language backbone: where its files come from, the transformers model built from them, its tokenizer.

`--policy.vlm_model_name` names the backbone three ways:
    a local folder      config.json + tokenizer files (+ weights with load_vlm_weights), e.g. a `hf download` copy
    a Hub id            the same files, fetched into the Hugging Face cache (read from the cache when offline)
    builtin:tiny-smolvlm   a tiny random SmolVLM and a byte-level tokenizer, built in memory (tests, smoke runs)

The architecture needs the backbone's config.json only: without load_vlm_weights (training from scratch) or when a
SmolVLA checkpoint supplies every weight, no weight file is read. The tokenizer always comes from the backbone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robotrain.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

FLAG = "policy.vlm_model_name"
DEFAULT_BACKBONE = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
TINY_BACKBONE = "builtin:tiny-smolvlm"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"

# The tiny backbone: SmolVLM's architecture (SigLIP-style vision tower, pixel-shuffle connector, Llama text model)
# at toy sizes, as a config.json would hold it, so the same dict also writes a folder both transformers 4.57
# (LeRobot 0.4.4's) and 5.x read.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                       "<global-img>", "<end_of_utterance>")
TINY_BACKBONE_CONFIG: dict[str, Any] = {
    "model_type": "smolvlm", "architectures": ["SmolVLMForConditionalGeneration"], "scale_factor": 2,
    "image_token_id": 4, "tie_word_embeddings": False,
    "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                      "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"},
    "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 272,
                    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu",
                    "max_position_embeddings": 512, "pad_token_id": 2, "tie_word_embeddings": False},
}
TINY_TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "unk_token": "<|endoftext|>",
    "bos_token": "<|im_start|>", "pad_token": "<|im_end|>", "eos_token": "<end_of_utterance>",
    "extra_special_tokens": {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
}


@dataclass
class Backbone:
    """What SmolVLA takes from its backbone: the transformers config, the tokenizer and where weights would be."""

    config: Any  # transformers SmolVLMConfig
    tokenizer: Any  # a transformers tokenizer
    directory: Path | None  # None for the built-in tiny backbone


def require_transformers() -> None:
    """A UserError with the install command when the optional dependency is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("SmolVLA builds its vision-language backbone with `transformers`, which is not installed. "
                        "Fix: pip install 'robotrain[smolvla]'") from None


def load_backbone(name: str, need_weights: bool) -> Backbone:
    """The backbone's config and tokenizer (offline-safe: a local folder, the Hub cache, or the built-in one)."""
    require_transformers()
    if name == TINY_BACKBONE:
        if need_weights:
            raise ConfigError("policy.load_vlm_weights", True, f"the built-in {TINY_BACKBONE} backbone has no "
                              "pretrained weights", "set --policy.load_vlm_weights=false")
        from transformers import SmolVLMConfig

        return Backbone(SmolVLMConfig.from_dict(TINY_BACKBONE_CONFIG), tiny_tokenizer(), None)
    directory = locate_backbone(name, need_weights)
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(directory)
    if config.model_type != "smolvlm":
        raise ConfigError(FLAG, name, f"is a '{config.model_type}' model, SmolVLA needs a SmolVLM (model_type "
                          "smolvlm)", f"use {DEFAULT_BACKBONE} or a folder with its files")
    return Backbone(config, AutoTokenizer.from_pretrained(directory), directory)


def locate_backbone(name: str, need_weights: bool) -> Path:
    """The folder holding the backbone's files: `name` itself, or its Hub snapshot in the cache (fetched if online)."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [f for f in (CONFIG_FILE, *TOKENIZER_FILES) if not (path / f).is_file()]
        if need_weights and not _has_weights(path):
            missing.append(WEIGHTS_FILE)
        if missing:
            raise ConfigError(FLAG, name, f"lacks {', '.join(missing)} ({needed_files(need_weights)})",
                              f"copy them there from a download of {DEFAULT_BACKBONE} (on a connected machine: "
                              f"`hf download {DEFAULT_BACKBONE} --local-dir DIR`)"
                              + ("; or start from random VLM weights with --policy.load_vlm_weights=false"
                                 if WEIGHTS_FILE in missing else ""))
        return path
    from robotrain.hub import is_valid_repo_id

    if not is_valid_repo_id(name):
        raise ConfigError(FLAG, name,
                          f"is neither an existing local folder nor a Hub id ({needed_files(need_weights)})",
                          "point it at the folder holding them (fetched on a connected machine with `hf download "
                          f"{DEFAULT_BACKBONE} --local-dir DIR`), or at a Hub id")
    return _fetch_from_hub(name, need_weights)


def needed_files(need_weights: bool) -> str:
    """The sentence every backbone error carries: which files SmolVLA reads."""
    files = f"SmolVLA reads the backbone's {CONFIG_FILE} and tokenizer ({', '.join(TOKENIZER_FILES)})"
    return files + (f" and its weights ({WEIGHTS_FILE})" if need_weights else "")


def _fetch_from_hub(repo_id: str, need_weights: bool) -> Path:
    from robotrain.hub import fetch_hub_file, fetch_optional_hub_file, hub_offline_requested

    try:
        directory = fetch_hub_file(repo_id, CONFIG_FILE, FLAG).parent
        for name in TOKENIZER_FILES:
            fetch_hub_file(repo_id, name, FLAG)
        for name in OPTIONAL_TOKENIZER_FILES:
            fetch_optional_hub_file(repo_id, name)
        if need_weights:
            _fetch_weights(repo_id)
    except ConfigError as exc:
        if "cannot be reached" not in exc.problem and "HF_HUB_OFFLINE" not in exc.problem:
            raise
        why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "the Hugging Face Hub cannot be reached"
        files = f"{CONFIG_FILE} {' '.join(TOKENIZER_FILES)} {' '.join(OPTIONAL_TOKENIZER_FILES[:1])}"
        files += f" {WEIGHTS_FILE}" if need_weights else ""
        raise ConfigError(FLAG, repo_id, f"is not a local folder, {why} and the Hub cache lacks its files "
                          f"({needed_files(need_weights)})",
                          f"on a connected machine run `hf download {repo_id} {files} --local-dir smolvlm2`, copy "
                          "that folder here and pass --policy.vlm_model_name=/path/to/smolvlm2 (or copy the "
                          "machine's ~/.cache/huggingface/hub here and set HF_HUB_OFFLINE=1)") from None
    return directory


def _fetch_weights(repo_id: str) -> None:
    from robotrain.hub import fetch_hub_file, fetch_optional_hub_file

    index = fetch_optional_hub_file(repo_id, WEIGHTS_INDEX)
    if index is None:
        fetch_hub_file(repo_id, WEIGHTS_FILE, FLAG)
        return
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        fetch_hub_file(repo_id, shard, FLAG)


def _has_weights(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() or (directory / WEIGHTS_INDEX).is_file()


def build_vlm(backbone: Backbone, num_vlm_layers: int, load_weights: bool, dtype: torch.dtype) -> torch.nn.Module:
    """SmolVLMForConditionalGeneration with only its first num_vlm_layers text layers (<= 0: all of them).

    The config is truncated before building (LeRobot builds every layer and drops the extra ones after): the same
    modules and parameters, without initializing or loading the dropped half.
    """
    from transformers import SmolVLMForConditionalGeneration

    config = backbone.config
    if num_vlm_layers > 0:
        config.text_config.num_hidden_layers = min(num_vlm_layers, config.text_config.num_hidden_layers)
    if load_weights:
        logger.info("loading the VLM weights from %s", backbone.directory)
        model = SmolVLMForConditionalGeneration.from_pretrained(backbone.directory, config=config, dtype=dtype)
    else:
        model = SmolVLMForConditionalGeneration(config)
    return model.to(dtype)


def tiny_tokenizer() -> Any:
    """The built-in backbone's tokenizer: one token per byte (GPT-2's byte alphabet) plus SmolVLM's special tokens."""
    from transformers import PreTrainedTokenizerFast

    fields = {k: v for k, v in TINY_TOKENIZER_CONFIG.items() if k not in ("tokenizer_class", "extra_special_tokens")}
    return PreTrainedTokenizerFast(tokenizer_object=_tiny_tokenizer_object(), **fields,
                                   extra_special_tokens=TINY_TOKENIZER_CONFIG["extra_special_tokens"])


def _tiny_tokenizer_object() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(TINY_SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every byte is a token
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    return tokenizer


def write_tiny_backbone(folder: str | Path, config_overrides: dict[str, Any] | None = None) -> Path:
    """Write the tiny backbone as a backbone folder: config.json, tokenizer files and the processor files LeRobot's
    AutoProcessor also reads. `config_overrides` replaces top-level keys or merges into text_/vision_config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(TINY_BACKBONE_CONFIG))
    for key, value in (config_overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    _tiny_tokenizer_object().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(TINY_TOKENIZER_CONFIG, indent=2) + "\n")
    side = config["vision_config"]["image_size"]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SmolVLMImageProcessor", "processor_class": "SmolVLMProcessor",
        "max_image_size": {"longest_edge": side}, "size": {"longest_edge": 2 * side}}, indent=2) + "\n")
    tokens = (side // config["vision_config"]["patch_size"] // config["scale_factor"]) ** 2
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "SmolVLMProcessor",
                                                              "image_seq_len": tokens}, indent=2) + "\n")
    return folder
