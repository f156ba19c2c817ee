"""Pushing a trained policy to the Hugging Face Hub: `robotrain push`, and `--policy.push_to_hub=true` in training.

    <checkpoint>/pretrained_model/   config.json  model.safetensors  train_config.json
          |  + README.md, the model card written here (front matter, dataset, steps, success, command, usage)
          v
    Uploader.create_repo(exist_ok=True) -> [create_branch] -> upload_folder: one commit with every file

Everything that can fail for a reason outside robotrain (offline, no token, a read-only or rejected token) is
checked before any work: at parse time for training, before the weights are read for `robotrain push`. Errors the
Hub answers later (401, 403, 404, 429, 5xx) become one-line UserErrors.

Two seams keep this testable offline, each a module-level function that tests monkeypatch (no environment
variable a user could set by accident): `make_uploader(token)` returns huggingface_hub's HfApi by default, or
`LocalFolderHub`, a file-based stand-in; `probe_hub()` reports what the access check decides on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from robotrain.configs.run import (
    CHECKPOINTS_DIR,
    POLICY_CONFIG_NAME,
    PRETRAINED_MODEL_DIR,
    RunDir,
)
from robotrain.errors import ConfigError, UserError
from robotrain.hub import hub_offline_requested, hub_reachable, is_valid_repo_id
from robotrain.model_card import CardFacts, model_card

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
MAIN = "main"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


# ---- the uploader seam -------------------------------------------------------------------------------------
class Uploader(Protocol):
    """The three calls of huggingface_hub.HfApi a push makes (same names and keywords)."""

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False) -> Any: ...

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False) -> Any: ...

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, commit_message: str | None = None,
                      revision: str | None = None) -> Any: ...


def make_uploader(token: str | None) -> Uploader:
    """The uploader a push uses: huggingface_hub's HfApi. Tests replace this function with a LocalFolderHub."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


class LocalFolderHub:
    """A file-based stand-in for the Hub: files land in <root>/<repo_id>/<revision>/, each commit is a line of
    <root>/<repo_id>/commits.jsonl, and the repo's settings (private, branches) are in <root>/<repo_id>/repo.json."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _settings(self, repo_id: str) -> dict[str, Any]:
        path = self.root / repo_id / "repo.json"
        if not path.is_file():
            raise LookupError(f"{repo_id} does not exist in {self.root}")
        return json.loads(path.read_text())

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False) -> str:
        path = self.root / repo_id / "repo.json"
        if path.is_file() and not exist_ok:
            raise FileExistsError(f"{repo_id} exists in {self.root}")
        if not path.is_file():
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"private": bool(private), "branches": [MAIN]}))
        return (self.root / repo_id).resolve().as_uri()

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False) -> None:
        settings = self._settings(repo_id)
        if branch in settings["branches"] and not exist_ok:
            raise FileExistsError(f"branch {branch} exists in {repo_id}")
        settings["branches"] = sorted({*settings["branches"], branch})
        (self.root / repo_id / "repo.json").write_text(json.dumps(settings))

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, commit_message: str | None = None,
                      revision: str | None = None) -> str:
        revision = revision or MAIN
        if revision not in self._settings(repo_id)["branches"]:
            raise LookupError(f"{repo_id} has no branch {revision}")
        target = self.root / repo_id / revision
        names = sorted(p.name for p in Path(folder_path).iterdir() if p.is_file())
        for name in names:  # as the Hub does: files are added or replaced, others stay
            target.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((Path(folder_path) / name).read_bytes())
        with open(self.root / repo_id / "commits.jsonl", "a") as log:
            log.write(json.dumps({"revision": revision, "message": commit_message, "files": names}) + "\n")
        return target.resolve().as_uri()

    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        """Every commit made to `repo_id`, oldest first."""
        path = self.root / repo_id / "commits.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---- can this machine push? --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubAccess:
    """What the access check decides on."""

    offline_requested: bool  # HF_HUB_OFFLINE is set
    reachable: bool
    token: str | None
    token_problem: str | None = None  # "rejected" or "read-only", when the Hub said so


def probe_hub() -> HubAccess:
    """Look at this machine's Hub access: the environment, a TCP probe, the token and (online) its role. Tests
    replace this function."""
    if hub_offline_requested():
        return HubAccess(True, False, None)
    if not hub_reachable():
        return HubAccess(False, False, None)
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    try:
        token = get_token()
    except Exception as exc:  # e.g. a failed OIDC exchange: huggingface_hub raises instead of returning None
        logger.debug("no Hugging Face token: %s", exc)
        token = None
    if token is None:
        return HubAccess(False, True, None)
    try:
        role = HfApi().whoami(token=token).get("auth", {}).get("accessToken", {}).get("role")
    except HfHubHTTPError as exc:
        rejected = exc.response is not None and exc.response.status_code == 401
        return HubAccess(False, True, token, "rejected" if rejected else None)
    except Exception as exc:  # a rate limit or a hiccup: the upload itself will tell
        logger.debug("could not check the Hugging Face token: %s", exc)
        return HubAccess(False, True, token)
    return HubAccess(False, True, token, "read-only" if role == "read" else None)


def check_hub_access(flag: str, value: Any, later: str) -> str:
    """The token to push with; otherwise one ConfigError naming `flag` and the fix. `later` says how to do
    without the push (e.g. drop the flag and push afterwards)."""
    from huggingface_hub import constants

    access = probe_hub()
    if access.offline_requested:
        raise ConfigError(flag, value, "cannot push: HF_HUB_OFFLINE is set",
                          f"unset HF_HUB_OFFLINE on a machine with network, or {later}")
    if not access.reachable:
        raise ConfigError(flag, value, f"cannot push: the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached",
                          f"check the network connection (or proxy), or {later}")
    if access.token is None:
        raise ConfigError(flag, value, "cannot push: no Hugging Face token (not logged in)",
                          f"run `hf auth login` with a write token (or set HF_TOKEN), or {later}")
    if access.token_problem == "rejected":
        raise ConfigError(flag, value, "cannot push: the Hub rejected the Hugging Face token (invalid or expired)",
                          f"run `hf auth login` again with a write token from {TOKENS_PAGE}, or {later}")
    if access.token_problem == "read-only":
        raise ConfigError(flag, value, "cannot push: the Hugging Face token is read-only",
                          f"run `hf auth login` with a write token from {TOKENS_PAGE}, or {later}")
    return access.token


def check_hub_repo_id(flag: str, repo_id: str) -> None:
    """A Hub model id of the form <user>/<name>: what `--policy.path=<user>/<name>` can load back."""
    if not is_valid_repo_id(repo_id) or repo_id.count("/") != 1:
        raise ConfigError(flag, repo_id, "is not a Hub repo id of the form <user>/<name> (letters, digits, '.', "
                          "'_', '-')", f"use e.g. --{flag}=<your user or organization>/act_pusht")


def check_push_to_hub(cfg: Any) -> None:
    """Parse-time check of `robotrain train --policy.push_to_hub=true` (cfg: a TrainConfig): refuse before the
    dataset is loaded or anything is written when the end of the run could not push."""
    policy = cfg.policy
    if policy is None or not policy.push_to_hub:
        return
    check_hub_repo_id("policy.repo_id", policy.repo_id)
    if not cfg.save_checkpoint:
        raise ConfigError("policy.push_to_hub", True, "uploads the final checkpoint, and --save_checkpoint=false "
                          "saves none", "drop --save_checkpoint=false, or set --policy.push_to_hub=false")
    # A resumed run or a --config_path file may hold push_to_hub=true that the user never typed: name the value.
    check_hub_access("policy.push_to_hub", True, "train without it (--policy.push_to_hub=false) and push the "
                     "checkpoint later with `robotrain push`")


# ---- the command --------------------------------------------------------------------------------------------
@dataclass
class PolicySource:
    """Which trained policy to push."""

    path: Path | None = None
    """A checkpoint's pretrained_model folder (<run>/checkpoints/<step|last>/pretrained_model), a checkpoint
    folder, or a run folder (its last checkpoint)."""


@dataclass
class PushConfig:
    """Everything `robotrain push` needs."""

    policy: PolicySource = field(default_factory=PolicySource)
    """The policy to push."""
    repo_id: str | None = None
    """Hub repo to push to, <user>/<name>; default: the policy's own --policy.repo_id, if it was trained with one."""
    private: bool | None = None
    """Create the repo as private (an existing repo keeps its visibility); default: the policy's setting."""
    tags: list[str] | None = None
    """Extra model-card tags, besides robotics and the policy type; default: the policy's --policy.tags."""
    license: str | None = None
    """Model-card license, e.g. mit; default: the policy's --policy.license, else apache-2.0."""
    revision: str | None = None
    """Branch to push to (created from main when missing; --branch works too); default: main."""
    commit_message: str | None = None
    """Message of the commit; default: "Upload <type> policy (step N) with robotrain"."""

    def validate(self) -> None:
        if self.policy.path is None:
            raise ConfigError("policy.path", None, "no policy to push",
                              f"add --policy.path=<run>/{CHECKPOINTS_DIR}/last/{PRETRAINED_MODEL_DIR}")
        if self.repo_id is not None:
            check_hub_repo_id("repo_id", self.repo_id)
        if self.revision is not None and (not self.revision.strip() or ".." in self.revision):
            raise ConfigError("revision", self.revision, "is not a branch name", "use e.g. --revision=step-20000")


def parse_push_config(argv: list[str]) -> PushConfig:
    """`robotrain push` arguments -> a checked PushConfig (--branch is read as --revision)."""
    from robotrain.configs.parser import HelpRequested, _build, read_command_line

    argv = [("--revision" + token[len("--branch"):]) if token.split("=")[0] == "--branch" else token
            for token in argv]
    line = read_command_line(argv, "push")
    if line.wants_help:
        from robotrain.configs.help import render_help

        raise HelpRequested(render_help(PushConfig, line, "push"))
    if line.config_path is not None:
        raise ConfigError("config_path", line.config_path, "is not an option of this command",
                          "run `robotrain push --help`")
    return _build(PushConfig, line, {"policy": {"path": line.policy_path}} if line.policy_path else {})


def find_model_dir(path: Path) -> Path:
    """The pretrained_model folder `--policy.path` names: itself, a checkpoint's, or a run's last checkpoint's."""
    path = Path(path).expanduser()
    if (path / CHECKPOINTS_DIR).is_dir():  # a run folder
        checkpoint = RunDir(path).latest_checkpoint()
        if checkpoint is None:
            raise ConfigError("policy.path", path, "is a run folder without a complete checkpoint",
                              f"point at one of {path / CHECKPOINTS_DIR}/<step>/{PRETRAINED_MODEL_DIR}")
        path = checkpoint
    if (path / PRETRAINED_MODEL_DIR).is_dir():
        path = path / PRETRAINED_MODEL_DIR
    if not path.is_dir():
        raise ConfigError("policy.path", path, "does not exist" if not path.exists() else "is not a folder",
                          f"point at <run>/{CHECKPOINTS_DIR}/<step|last>/{PRETRAINED_MODEL_DIR}, or at a run folder")
    for name in (POLICY_CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise ConfigError("policy.path", path, f"holds no {name}",
                              f"point at <run>/{CHECKPOINTS_DIR}/<step|last>/{PRETRAINED_MODEL_DIR}")
    return path


def push_policy(cfg: PushConfig) -> str:
    """Upload cfg.policy.path's pretrained_model and a model card to cfg.repo_id; returns the repo's URL."""
    from robotrain.configs.parser import load_config_file

    cfg.validate()
    model_dir = find_model_dir(cfg.policy.path)
    policy = load_config_file(model_dir / POLICY_CONFIG_NAME, "policy.path")
    repo_id = cfg.repo_id or policy.get("repo_id")
    if not repo_id:
        raise ConfigError("repo_id", None, "no Hub repo to push to (the policy was not trained with one)",
                          "add --repo_id=<user>/<name>")
    check_hub_repo_id("repo_id", repo_id)
    token = check_hub_access("repo_id", repo_id, "push later from a machine that can")
    facts = CardFacts.read(model_dir)
    tags = cfg.tags if cfg.tags is not None else policy.get("tags")
    card = model_card(repo_id, facts, tags, cfg.license or policy.get("license"))
    private = cfg.private if cfg.private is not None else policy.get("private")
    message = cfg.commit_message or f"Upload {facts.policy_type} policy{facts.step_text} with robotrain"
    return _upload(make_uploader(token), repo_id, model_dir, card, private, cfg.revision, message)


def push_trained_policy(cfg: Any, checkpoint: Path) -> str:
    """The end of `robotrain train --policy.push_to_hub=true` (cfg: its TrainConfig): push the final checkpoint.
    A failure is one line that says the checkpoint is safe and how to push it again."""
    model_dir = Path(checkpoint) / PRETRAINED_MODEL_DIR
    push = PushConfig(PolicySource(model_dir), cfg.policy.repo_id, cfg.policy.private, cfg.policy.tags,
                      cfg.policy.license)
    try:
        return push_policy(push)
    except UserError as exc:
        retry = f"robotrain push --policy.path={shlex.quote(str(model_dir))} --repo_id={cfg.policy.repo_id}"
        raise UserError(f"training finished, but the push failed: {exc}. The checkpoint is saved; push it "
                        f"with `{retry}`") from None


def _upload(uploader: Uploader, repo_id: str, model_dir: Path, card: str, private: bool | None,
            revision: str | None, message: str) -> str:
    """One commit of every file of `model_dir` plus README.md, staged as links so the weights are not copied."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != CARD_NAME)
    with tempfile.TemporaryDirectory(prefix="robotrain-push-") as staging:
        for path in files:
            (Path(staging) / path.name).symlink_to(path.resolve())
        (Path(staging) / CARD_NAME).write_text(card)
        try:
            url = str(uploader.create_repo(repo_id, private=private, exist_ok=True))
            if revision and revision != MAIN:
                uploader.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = uploader.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=message,
                                            revision=revision)
        except Exception as exc:
            error = hub_error(exc, repo_id, revision)
            if error is None:
                raise
            raise error from None
    logger.info("pushed %d files of %s to %s (%s)", len(files) + 1, model_dir, repo_id, commit)
    return url if not revision or revision == MAIN else f"{url}/tree/{revision}"


def hub_error(exc: BaseException, repo_id: str, revision: str | None = None) -> UserError | None:
    """One line for an error the Hub (or the way to it) answered; None for anything else (a bug: re-raised)."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"pushing to {repo_id}"
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"{where}: HF_HUB_OFFLINE is set. Fix: unset it on a machine with network")
    if isinstance(exc, HFValidationError):
        return UserError(f"{where}: {_first_line(str(exc))}. Fix: use a repo id of the form <user>/<name>")
    if isinstance(exc, _transport_errors()):  # connection refused, DNS, timeouts: no HTTP answer at all
        return UserError(f"{where}: the Hugging Face Hub could not be reached ({type(exc).__name__}). Fix: check "
                         "the network connection and push again")
    if not isinstance(exc, HfHubHTTPError):
        return None
    status = exc.response.status_code if exc.response is not None else None
    said = f" (the Hub said: {_first_line(exc.server_message)})" if exc.server_message else ""
    if isinstance(exc, RevisionNotFoundError):
        problem, fix = f"branch {revision} cannot be found", "check --revision, or push to main"
    elif isinstance(exc, RepositoryNotFoundError) or status == 404:
        problem, fix = f"{repo_id} cannot be found or is not yours", "check --repo_id and that you are logged in"
    elif status == 401:
        problem, fix = "the Hub rejected the token", f"run `hf auth login` with a write token from {TOKENS_PAGE}"
    elif status == 403:
        problem, fix = (f"the token may not write to {repo_id} (the name belongs to another user or organization, "
                        "or the token lacks write access)", f"push to a repo under your own name, or use a token "
                        f"with write access to {repo_id.split('/')[0]} ({TOKENS_PAGE})")
    elif status == 409:
        problem, fix = f"the name {repo_id} is taken or in conflict", "choose another --repo_id"
    elif status == 429:
        problem, fix = "the Hub's rate limit was reached", "wait a few minutes and push again"
    elif status is not None and status >= 500:
        problem, fix = f"the Hub failed with HTTP {status}", "push again later"
    else:
        problem, fix = f"the Hub answered HTTP {status}", "check --repo_id and your token, then push again"
    return UserError(f"{where}: {problem}{said}. Fix: {fix}")


def _first_line(text: str | None, limit: int = 200) -> str:
    """A server message fit for a one-line error."""
    lines = (text or "").strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a request that got no HTTP answer, from whichever HTTP library huggingface_hub uses:
    httpx2 (2.x), httpx (1.x) or requests (0.x)."""
    errors: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        with contextlib.suppress(ImportError):
            errors += [getattr(importlib.import_module(module), name) for name in names]
    return tuple(errors)
