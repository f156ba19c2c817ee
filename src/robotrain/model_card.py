"""The model card of a pushed policy (README.md): front matter, what it is, how it was trained, how to use it.

The command that trained it is rebuilt from its train_config.json: every field that differs from its default,
without the fields that belong to the machine or the run (output_dir, device, features, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import draccus
import yaml

from robotrain.configs.run import (
    POLICY_CONFIG_NAME,
    TRAIN_CONFIG_NAME,
    TRAINING_STATE_DIR,
    TRAINING_STEP,
    read_training_step,
    run_dir_of,
)
from robotrain.errors import UserError
from robotrain.policies.registry import policy_specs

logger = logging.getLogger(__name__)

DEFAULT_LICENSE = "apache-2.0"  # what LeRobot's cards default to; --license changes it

# ---- the card -----------------------------------------------------------------------------------------
@dataclass
class CardFacts:
    """What a model card says about one checkpoint, read from its files and its run's metrics.jsonl."""

    policy_type: str
    train_config: Any = None  # the TrainConfig of train_config.json, when there is one that reads
    step: int | None = None
    success: dict[str, Any] | None = None  # the last evaluation row at or before `step`
    validation: dict[str, Any] | None = None  # the last validation row at or before `step`

    @property
    def step_text(self) -> str:
        return f" (step {self.step})" if self.step is not None else ""

    @classmethod
    def read(cls, model_dir: Path) -> CardFacts:
        from robotrain.configs.parser import load_config_file

        policy_type = str(load_config_file(model_dir / POLICY_CONFIG_NAME, "policy.path").get("type", "unknown"))
        facts = cls(policy_type, _read_train_config(model_dir / TRAIN_CONFIG_NAME))
        checkpoint = model_dir.parent
        if (checkpoint / TRAINING_STATE_DIR / TRAINING_STEP).is_file():
            facts.step = read_training_step(checkpoint)["step"]
        run = run_dir_of(checkpoint)
        if run is not None:
            from robotrain.training.metrics import METRICS_FILE, read_metrics

            rows = [r for r in read_metrics(run.path / METRICS_FILE)
                    if facts.step is None or r.get("step", 0) <= facts.step]
            facts.success = next((r for r in reversed(rows) if r.get("kind") == "eval" and "pc_success" in r), None)
            facts.validation = next((r for r in reversed(rows) if r.get("kind") == "val" and "val_loss" in r), None)
        return facts


def _read_train_config(path: Path) -> Any:
    """The TrainConfig of a checkpoint, or None (a card without the command is better than no push)."""
    if not path.is_file():
        return None
    from robotrain.configs.train import load_train_config

    try:
        return load_train_config(path)
    except UserError as exc:
        logger.warning("%s cannot be read (%s): the model card leaves out the training command", path, exc)
        return None


def model_card(repo_id: str, facts: CardFacts, tags: list[str] | None = None, license: str | None = None) -> str:
    """README.md: YAML front matter the Hub indexes, then what the policy is, its training and how to use it."""
    cfg = facts.train_config
    dataset = cfg.dataset.repo_id if cfg is not None else None
    front: dict[str, Any] = {"library_name": "robotrain", "license": license or DEFAULT_LICENSE,
                             "tags": list(dict.fromkeys(["robotics", facts.policy_type, *(tags or [])]))}
    if dataset:
        front["datasets"] = [dataset]
    front["pipeline_tag"] = "robotics"
    spec = policy_specs().get(facts.policy_type)
    name, paper = (spec.title, spec.paper) if spec is not None else (facts.policy_type, None)
    what = f"[{name}]({paper})" if paper else f"`{name}`"
    on = ""
    if dataset:  # a dataset read from a local folder may not be on the Hub: no link then
        local = cfg.dataset.root is not None
        on = f" on the local dataset `{dataset}`" if local else \
            f" on [{dataset}](https://huggingface.co/datasets/{dataset})"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# `{facts.policy_type}` policy{f' trained on `{dataset}`' if dataset else ''}", "",
             f"Policy: {what}, trained with robotrain{on}.", "",
             "## Training", "", *_training_rows(facts), ""]
    if cfg is not None:
        argv = train_command(cfg)
        command = " \\\n    ".join([" ".join(argv[:2]), *(shlex.quote(token) for token in argv[2:])])
        lines += ["The command that trained it:", "", "```bash", command, "```", ""]
    lines += ["## Use", "", *_usage(repo_id, facts), ""]
    return "\n".join(lines)


def _training_rows(facts: CardFacts) -> list[str]:
    cfg = facts.train_config
    rows = [("policy", f"`{facts.policy_type}`")]
    if cfg is not None:
        episodes = "all episodes" if cfg.dataset.episodes is None else f"episodes {cfg.dataset.episodes}"
        rows.append(("dataset", f"`{cfg.dataset.repo_id}` ({episodes})"))
    if facts.step is not None:
        batch = f", batch size {cfg.batch_size}" if cfg is not None else ""
        rows.append(("steps", f"{facts.step:,}{batch}"))
    if facts.success is not None:
        episodes = f" of {cfg.eval.n_episodes} episodes" if cfg is not None else ""
        env = f" of {cfg.env.task} (`{cfg.env.type}`)" if cfg is not None and cfg.env is not None else ""
        rows.append(("success", f"{facts.success['pc_success']:.1f}%{episodes}{env}, evaluated at step "
                                f"{facts.success['step']:,}"))
    if facts.validation is not None:
        rows.append(("validation loss", f"{facts.validation['val_loss']:.4f} on held-out episodes (step "
                                        f"{facts.validation['step']:,})"))
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]


def _usage(repo_id: str, facts: CardFacts) -> list[str]:
    cfg = facts.train_config
    if cfg is not None and cfg.env is not None:  # the env as the run evaluated it (its task, observation type)
        flags = {"env.task": cfg.env.task, **dict(_changed(cfg.env, _defaults(type(cfg.env)), "env."))}
        env = " ".join(shlex.quote(f"--{k}={_cli_text(v)}") for k, v in sorted(flags.items()))
        evaluate = f"robotrain eval --policy.path={repo_id} {env} --eval.n_episodes={cfg.eval.n_episodes}"
        where = "in simulation"
    else:
        dataset = cfg.dataset.repo_id if cfg is not None else "<dataset>"
        evaluate = f"robotrain eval --policy.path={repo_id} --dataset.repo_id={dataset}"
        where = "on recorded episodes (its loss and action error)"
    return [f"Evaluate it {where}:", "", "```bash", evaluate, "```", "", "Load it in Python:", "", "```python",
            "from robotrain.policies import Policy", "", f'policy = Policy.from_pretrained("{repo_id}")',
            "action = policy.select_action(batch)  # batch: the observation keys the policy was trained on", "```",
            "", f"Fine-tune it: `robotrain train --policy.path={repo_id} --dataset.repo_id=<your dataset>`."]


# ---- the training command, rebuilt from train_config.json --------------------------------------------------
# Set by robotrain for this run or machine, not by the command: leaving them out keeps the command reusable.
DERIVED = {"output_dir", "resume", "policy.device", "policy.input_features", "policy.output_features",
           "policy.pretrained_path", "wandb.run_id"}


def train_command(cfg: Any) -> list[str]:
    """The `robotrain train` argv (a TrainConfig in) that trains the same config: every field that differs from
    its default, choices first (--policy.type, or --policy.path for a fine-tune), derived fields left out."""
    data = dict(_changed(cfg, _defaults(type(cfg)), ""))
    if cfg.policy.pretrained_path is not None and not cfg.resume:  # a fine-tune: --policy.path, then overrides
        base = _pretrained_policy(Path(cfg.policy.pretrained_path)) or _defaults(type(cfg.policy))
        data = {k: v for k, v in data.items() if not k.startswith("policy.")}
        data.update(_changed(cfg.policy, base, "policy.", with_type=False))
        data["policy.path"] = _policy_path_text(Path(cfg.policy.pretrained_path))
    if cfg.use_policy_training_preset:  # the preset sets them; flags for them are refused
        data = {k: v for k, v in data.items() if k.split(".")[0] not in ("optimizer", "scheduler")}
    if cfg.job_name == (f"{cfg.env.type}_{cfg.policy.type}" if cfg.env else cfg.policy.type):
        data.pop("job_name", None)
    data = {k: v for k, v in data.items() if k not in DERIVED}
    first = [k for k in ("dataset.repo_id", "policy.path", "policy.type", "env.type") if k in data]
    order = first + [k for k in data if k not in first]
    return ["robotrain", "train", *(f"--{key}={_cli_text(data[key])}" for key in order)]


def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> encoded default, for the fields of dataclass `cls` that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and f.default is not dataclasses.MISSING:
            out[f.name] = draccus.encode(f.default)
        elif f.init and f.default_factory is not dataclasses.MISSING:
            out[f.name] = draccus.encode(f.default_factory())
    return out


def _changed(obj: Any, base: dict[str, Any], prefix: str, with_type: bool = True) -> list[tuple[str, Any]]:
    """(flag, encoded value) of every field of dataclass `obj` that differs from `base`, nested sections walked
    field by field (a `.type` choice first); dict-valued fields are one flag, as the parser reads them."""
    out: list[tuple[str, Any]] = []
    if with_type and isinstance(obj, draccus.ChoiceRegistry):
        out.append((f"{prefix}type", obj.get_choice_name(type(obj))))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = base.get(f.name)
            same_choice = isinstance(sub, dict) and sub.get("type", None) in (None, _choice_name(value))
            out += _changed(value, sub if same_choice else _defaults(type(value)), f"{prefix}{f.name}.")
            continue
        encoded = draccus.encode(value)
        if f.name not in base or base[f.name] != encoded:
            out.append((f"{prefix}{f.name}", encoded))
    return out


def _choice_name(obj: Any) -> str | None:
    return obj.get_choice_name(type(obj)) if isinstance(obj, draccus.ChoiceRegistry) else None


def _policy_path_text(path: Path) -> str:
    """--policy.path as the user gave it: a Hub id for a folder of huggingface_hub's cache
    (.../models--<user>--<name>/snapshots/<revision>), else the folder."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        owner_name = parts[-3][len("models--"):].split("--")
        if len(owner_name) == 2:
            return "/".join(owner_name)
    return str(path)


def _pretrained_policy(directory: Path) -> dict[str, Any] | None:
    """The config.json a fine-tune started from (what --policy.path loads), when it is still on this machine."""
    path = directory / POLICY_CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cli_text(value: Any) -> str:
    """A value as the parser reads it back: strings as typed, everything else as YAML flow."""
    return value if isinstance(value, str) else _flow(value)


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 reads 1e-05 as a string: give the mantissa a dot
        mantissa, e, exponent = text.partition("e")
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(text, (
            f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
