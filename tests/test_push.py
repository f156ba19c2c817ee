"""Pushing a trained policy to the Hub, offline: a tiny real run, pushed into robotrain's file-based stand-in.

The stand-in replaces `hub_upload.make_uploader`, the access check replaces `hub_upload.probe_hub`; with neither
replaced, the conftest's HF_HUB_OFFLINE=1 makes every push refuse, as it must.

Some tests exercise the wiring outside hub_upload.py: `robotrain push` in cli.py, the parse-time check in
resolve_train_config and the push at the end of train().
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub.errors import HfHubHTTPError

from robotrain import hub_upload
from robotrain.cli import main
from robotrain.configs.parser import parse_train_config
from robotrain.configs.train import config_to_dict, load_train_config
from robotrain.errors import ConfigError, UserError
from robotrain.hub_upload import (
    HubAccess,
    LocalFolderHub,
    PolicySource,
    PushConfig,
    parse_push_config,
    push_policy,
    push_trained_policy,
)
from robotrain.model_card import DERIVED, CardFacts, model_card, train_command
from robotrain.training.metrics import RunLog
from tests.datasets.helpers import record

try:  # the HTTP library huggingface_hub 2.x answers with; 1.x used httpx
    import httpx2 as http
except ImportError:
    import httpx as http

TINY_ACT = ["--policy.type=act", "--policy.dim_model=16", "--policy.n_heads=2", "--policy.dim_feedforward=32",
            "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=4",
            "--policy.chunk_size=4", "--policy.n_action_steps=4", "--policy.pretrained_backbone_weights=null"]
MODEL_FILES = ["config.json", "model.safetensors", "train_config.json"]
ONLINE = HubAccess(offline_requested=False, reachable=True, token="hf_test_token")


def train_flags(dataset: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["train", *TINY_ACT, "--dataset.repo_id=test/synthetic", f"--dataset.root={dataset}", "--batch_size=4",
            "--log_freq=1", "--num_workers=0", f"--output_dir={output_dir}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A 4-step run with checkpoints at 2 and 4, validation rows from training, and evaluation rows written by the
    trainer's own RunLog (a simulator would be needed for real ones)."""
    root = tmp_path_factory.mktemp("push")
    with pytest.MonkeyPatch.context() as patch:  # module scope runs before the conftest's isolation: repeat it
        for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", root / "hf"), ("WANDB_MODE", "disabled"),
                            ("HF_LEROBOT_HOME", root / "hf" / "lerobot"), ("ROBOTRAIN_CACHE_DIR", root / "cache")):
            patch.setenv(name, str(value))
        dataset = record(root / "ds", [12, 9, 14])
        run = root / "run"
        flags = train_flags(dataset, run, "--steps=4", "--save_freq=2", "--eval_freq=2", "--dataset.val_episodes=[2]",
                            "--policy.tags=[sim]", "--policy.optimizer_lr=3e-5", "--policy.kl_weight=12.5",
                            "--job_name=tiny act")
        assert main(flags) == 0
    log = RunLog(run)
    log.write("eval", 2, {"pc_success": 40.0, "avg_sum_reward": 1.5, "avg_max_reward": 0.5, "eval_s": 1.0})
    log.write("eval", 4, {"pc_success": 62.5, "avg_sum_reward": 2.5, "avg_max_reward": 0.9, "eval_s": 1.0})
    return SimpleNamespace(root=root, dataset=dataset, run=run, model=run / "checkpoints" / "last" / "pretrained_model",
                           first=run / "checkpoints" / "000002" / "pretrained_model")


@pytest.fixture
def hub(monkeypatch, tmp_path) -> SimpleNamespace:
    """The stand-in Hub, reachable with a token; `tokens` records the token each uploader was made with."""
    root, tokens = tmp_path / "hub", []

    def make(token):
        tokens.append(token)
        return LocalFolderHub(root)

    monkeypatch.setattr(hub_upload, "probe_hub", lambda: ONLINE)
    monkeypatch.setattr(hub_upload, "make_uploader", make)
    return SimpleNamespace(root=root, tokens=tokens, store=LocalFolderHub(root))


def front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def card_command(card: str) -> list[str]:
    """The bash block of the card, as the shell would split it."""
    block = re.search(r"```bash\n(robotrain train.*?)\n```", card, re.DOTALL).group(1)
    return shlex.split(block.replace("\\\n", " "))


def without(data: dict, dotted: set[str]) -> dict:
    out = json.loads(json.dumps(data, default=str))
    for key in dotted:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) or {}
        node.pop(leaf, None)
    return out


# ---- the model card --------------------------------------------------------------------------------------------
def test_model_card_has_front_matter_dataset_steps_success_and_usage(trained):
    card = model_card("user/tiny", CardFacts.read(trained.model), tags=["sim", "tiny"], license="mit")
    meta = front_matter(card)
    assert meta["library_name"] == "robotrain" and meta["license"] == "mit"
    assert meta["tags"] == ["robotics", "act", "sim", "tiny"]  # the policy's own tag is not repeated
    assert meta["datasets"] == ["test/synthetic"]
    assert "| steps | 4, batch size 4 |" in card
    assert "62.5%" in card and "40.0%" not in card  # the last evaluation, not the first
    assert re.search(r"\| validation loss \| \d+\.\d{4} on held-out episodes \(step 4\) \|", card)
    assert "robotrain eval --policy.path=user/tiny" in card
    assert 'Policy.from_pretrained("user/tiny")' in card
    assert "local dataset `test/synthetic`" in card  # trained from a folder: no link to a Hub page that may not exist


def test_model_card_of_an_earlier_checkpoint_reports_what_it_had_seen(trained):
    card = model_card("user/tiny", CardFacts.read(trained.first))
    assert front_matter(card)["license"] == "apache-2.0"
    assert "| steps | 2, batch size 4 |" in card and "40.0%" in card and "62.5%" not in card


def test_the_cards_command_parses_back_to_the_same_config(trained, workdir):
    saved = load_train_config(trained.model / "train_config.json")
    argv = card_command(model_card("user/tiny", CardFacts.read(trained.model)))
    assert argv == train_command(saved)
    assert argv[:2] == ["robotrain", "train"] and "--policy.type=act" in argv and "--job_name=tiny act" in argv
    assert not any(a.startswith(("--output_dir", "--policy.device", "--policy.input_features")) for a in argv)
    again = parse_train_config(argv[2:] + [f"--output_dir={workdir / 'again'}"])
    assert without(config_to_dict(again), DERIVED) == without(config_to_dict(saved), DERIVED)


def test_the_command_of_a_fine_tune_starts_from_its_policy_path(trained, workdir):
    cfg = parse_train_config(["--policy.path", str(trained.first), "--dataset.repo_id=test/synthetic",
                              f"--dataset.root={trained.dataset}", "--policy.n_action_steps=2", "--steps=3",
                              f"--output_dir={workdir / 'ft'}"])
    argv = train_command(cfg)
    assert f"--policy.path={trained.first}" in argv and "--policy.n_action_steps=2" in argv
    assert not any(a.startswith(("--policy.type", "--policy.dim_model")) for a in argv)  # the checkpoint has them
    again = parse_train_config(argv[2:] + [f"--output_dir={workdir / 'again'}"])
    assert without(config_to_dict(again), DERIVED) == without(config_to_dict(cfg), DERIVED)


# ---- pushing -----------------------------------------------------------------------------------------------------
def test_push_uploads_the_checkpoint_byte_for_byte_with_a_card(trained, hub):
    url = push_policy(PushConfig(PolicySource(trained.model), "user/tiny", private=True, tags=["demo"]))
    main_dir = hub.root / "user" / "tiny" / "main"
    assert sorted(p.name for p in main_dir.iterdir()) == ["README.md", *MODEL_FILES]
    for name in MODEL_FILES:
        assert (main_dir / name).read_bytes() == (trained.model / name).read_bytes(), name
    assert front_matter((main_dir / "README.md").read_text())["tags"] == ["robotics", "act", "demo"]
    assert hub.store.commits("user/tiny") == [{"revision": "main", "message": "Upload act policy (step 4) with "
                                               "robotrain", "files": ["README.md", *MODEL_FILES]}]
    assert json.loads((hub.root / "user" / "tiny" / "repo.json").read_text())["private"] is True
    assert hub.tokens == ["hf_test_token"] and url == (hub.root / "user" / "tiny").resolve().as_uri()
    assert sorted(p.name for p in trained.model.iterdir()) == MODEL_FILES  # the checkpoint itself is untouched


def test_push_of_a_run_folder_takes_its_last_checkpoint_to_a_branch(trained, hub):
    url = push_policy(PushConfig(PolicySource(trained.run), "user/tiny", revision="v1", commit_message="first"))
    branch = hub.root / "user" / "tiny" / "v1"
    assert (branch / "model.safetensors").read_bytes() == (trained.model / "model.safetensors").read_bytes()
    assert not (hub.root / "user" / "tiny" / "main").exists()
    assert hub.store.commits("user/tiny")[0]["message"] == "first" and url.endswith("/tree/v1")


def test_push_falls_back_to_the_policys_own_hub_settings(trained, hub, tmp_path):
    copy = tmp_path / "pretrained_model"  # a checkpoint copied out of its run: no steps, no metrics, still a card
    copy.mkdir()
    config = json.loads((trained.model / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "repo_id": "org/from_config", "license": "mit"}))
    (copy / "model.safetensors").write_bytes((trained.model / "model.safetensors").read_bytes())
    push_policy(PushConfig(PolicySource(copy)))
    card = (hub.root / "org" / "from_config" / "main" / "README.md").read_text()
    assert front_matter(card)["license"] == "mit" and "datasets" not in front_matter(card)
    assert "## Use" in card and "```bash\nrobotrain train" not in card


def test_push_without_a_repo_id_or_weights_names_the_flag(trained, hub, tmp_path):
    with pytest.raises(ConfigError, match=r"^--repo_id: no Hub repo to push to"):
        push_policy(PushConfig(PolicySource(trained.model)))
    with pytest.raises(ConfigError, match=r"--repo_id=tiny: is not a Hub repo id of the form <user>/<name>"):
        push_policy(PushConfig(PolicySource(trained.model), "tiny"))
    with pytest.raises(ConfigError, match=r"--policy.path=.*: does not exist"):
        push_policy(PushConfig(PolicySource(tmp_path / "nowhere"), "user/tiny"))
    assert not hub.root.exists() and hub.tokens == []


# ---- refusals before any work --------------------------------------------------------------------------------------
REFUSALS = {
    "offline": (HubAccess(True, False, None), "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"),
    "unreachable": (HubAccess(False, False, None), "cannot be reached", "check the network connection"),
    "no token": (HubAccess(False, True, None), "no Hugging Face token", "`hf auth login`"),
    "rejected": (HubAccess(False, True, "hf_x", "rejected"), "rejected the Hugging Face token", "`hf auth login`"),
    "read-only": (HubAccess(False, True, "hf_x", "read-only"), "token is read-only", "write token"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_push_is_refused_in_one_line_before_reading_anything(trained, hub, monkeypatch, case):
    access, problem, fix = REFUSALS[case]
    monkeypatch.setattr(hub_upload, "probe_hub", lambda: access)
    monkeypatch.setattr(CardFacts, "read", lambda *_: pytest.fail("read before the access check"))
    with pytest.raises(ConfigError) as refused:
        push_policy(PushConfig(PolicySource(trained.model), "user/tiny"))
    message = str(refused.value)
    assert message.startswith("--repo_id=user/tiny: cannot push: ") and problem in message and fix in message
    assert "\n" not in message and not hub.root.exists() and hub.tokens == []


def test_the_real_probe_reads_the_environment_the_network_and_the_token(monkeypatch):
    import huggingface_hub

    assert hub_upload.probe_hub().offline_requested  # the conftest sets HF_HUB_OFFLINE=1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_upload, "hub_reachable", lambda: False)
    assert hub_upload.probe_hub() == HubAccess(False, False, None)
    monkeypatch.setattr(hub_upload, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert hub_upload.probe_hub() == HubAccess(False, True, None)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")

    def whoami(self, token=None, **_):
        raise http_error(401, "Invalid credentials")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)
    assert hub_upload.probe_hub().token_problem == "rejected"
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami",
                        lambda self, token=None, **_: {"auth": {"accessToken": {"role": "read"}}})
    assert hub_upload.probe_hub() == HubAccess(False, True, "hf_x", "read-only")


def test_training_with_push_is_checked_before_any_work(trained, workdir, monkeypatch):
    cfg = parse_train_config(train_flags(trained.dataset, workdir / "r")[1:])
    cfg.policy.push_to_hub, cfg.policy.repo_id = True, "user/tiny"  # set here: parsing them would run the check
    refused = (r"^--policy.push_to_hub=true: cannot push: HF_HUB_OFFLINE is set\. Fix: .*"
               r"\(--policy.push_to_hub=false\) and push the checkpoint later with `robotrain push`")
    with pytest.raises(ConfigError, match=refused):
        hub_upload.check_push_to_hub(cfg)
    cfg.save_checkpoint = False
    monkeypatch.setattr(hub_upload, "probe_hub", lambda: ONLINE)
    with pytest.raises(ConfigError, match="--save_checkpoint=false saves none"):
        hub_upload.check_push_to_hub(cfg)
    cfg.save_checkpoint, cfg.policy.repo_id = True, "../x"
    with pytest.raises(ConfigError, match=r"^--policy.repo_id=../x: is not a Hub repo id"):
        hub_upload.check_push_to_hub(cfg)
    cfg.policy.repo_id = "user/tiny"
    hub_upload.check_push_to_hub(cfg)  # online with a token: nothing to say
    cfg.policy.push_to_hub = False
    monkeypatch.setattr(hub_upload, "probe_hub", lambda: pytest.fail("probed without a push"))
    hub_upload.check_push_to_hub(cfg)


# ---- what the Hub answers ------------------------------------------------------------------------------------------
def http_error(status: int, server_message: str | None = None) -> HfHubHTTPError:
    response = http.Response(status, request=http.Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(f"{status} error", response=response, server_message=server_message)


class FailingHub(LocalFolderHub):
    def __init__(self, root: Path, error: BaseException):
        super().__init__(root)
        self.error = error

    def upload_folder(self, **_):
        raise self.error


HUB_ANSWERS = {
    "401": (http_error(401), "the Hub rejected the token", "hf auth login"),
    "403 name taken": (http_error(403, "You don't have the rights to create a model under the namespace \"user\"\n"
                                      "see the docs"), "may not write to user/tiny", "under your own name"),
    "404": (http_error(404), "cannot be found or is not yours", "check --repo_id"),
    "429": (http_error(429), "rate limit", "wait a few minutes"),
    "500": (http_error(503), "failed with HTTP 503", "push again later"),
    "no connection": (http.ConnectError("connection refused"), "could not be reached (ConnectError)", "network"),
}


@pytest.mark.parametrize("case", list(HUB_ANSWERS))
def test_hub_errors_become_one_line(trained, hub, monkeypatch, case):
    error, problem, fix = HUB_ANSWERS[case]
    monkeypatch.setattr(hub_upload, "make_uploader", lambda token: FailingHub(hub.root, error))
    staged = set(Path(tempfile.gettempdir()).glob("robotrain-push-*"))
    with pytest.raises(UserError) as failed:
        push_policy(PushConfig(PolicySource(trained.model), "user/tiny"))
    message = str(failed.value)
    assert message.startswith("pushing to user/tiny: ") and problem in message and fix in message.split("Fix: ")[1]
    assert "\n" not in message
    assert set(Path(tempfile.gettempdir()).glob("robotrain-push-*")) == staged  # the staging folder is gone


def test_a_failed_push_after_training_says_how_to_push_again(trained, hub, monkeypatch):
    cfg = load_train_config(trained.model / "train_config.json")
    cfg.policy.repo_id = "user/tiny"
    monkeypatch.setattr(hub_upload, "make_uploader", lambda token: FailingHub(hub.root, http_error(403)))
    with pytest.raises(UserError) as failed:
        push_trained_policy(cfg, trained.model.parent)
    message = str(failed.value)
    assert message.startswith("training finished, but the push failed: pushing to user/tiny: ")
    assert f"`robotrain push --policy.path={trained.model} --repo_id=user/tiny`" in message and "\n" not in message


def test_push_flags_parse_with_branch_as_revision_and_help():
    cfg = parse_push_config(["--policy.path=run", "--repo_id=user/tiny", "--private=true", "--tags=[a,b]",
                             "--license=mit", "--branch=v1", "--commit_message=first try"])
    assert cfg == PushConfig(PolicySource(Path("run")), "user/tiny", True, ["a", "b"], "mit", "v1", "first try")
    with pytest.raises(ConfigError, match="did you mean --repo_id"):
        parse_push_config(["--policy.path=run", "--repoid=user/tiny"])
    with pytest.raises(ConfigError, match=r"^--policy.path: no policy to push"):
        parse_push_config(["--repo_id=user/tiny"])
    from robotrain.configs.parser import HelpRequested

    with pytest.raises(HelpRequested) as shown:
        parse_push_config(["--help"])
    assert "--policy.path=PATH" in shown.value.text and "--repo_id=STR" in shown.value.text


# ---- needs integration: `robotrain push` in cli.py, the check in resolve_train_config, the push in train() --------
def test_cli_push_end_to_end(trained, hub, capsys):
    assert main(["push", f"--policy.path={trained.run}", "--repo_id=user/tiny", "--private=true", "--tags=[a,b]",
                 "--license=mit", "--branch=v1", "--commit_message=first"]) == 0
    branch = hub.root / "user" / "tiny" / "v1"
    for name in MODEL_FILES:
        assert (branch / name).read_bytes() == (trained.model / name).read_bytes(), name
    meta = front_matter((branch / "README.md").read_text())
    assert meta["license"] == "mit" and meta["tags"] == ["robotics", "act", "a", "b"]
    assert f"{(hub.root / 'user' / 'tiny').resolve().as_uri()}/tree/v1" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["offline", "no token"])
def test_cli_push_refusal_is_one_line_exit_2_nothing_written(trained, hub, monkeypatch, capsys, case):
    monkeypatch.setattr(hub_upload, "probe_hub", lambda: REFUSALS[case][0])
    assert main(["push", f"--policy.path={trained.model}", "--repo_id=user/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("robotrain push: error: --repo_id=user/tiny: cannot push: ")
    assert not hub.root.exists() and hub.tokens == []


def test_cli_train_with_push_offline_is_refused_at_parse_time(trained, workdir, monkeypatch, capsys):
    from robotrain.training import train

    monkeypatch.setattr(train, "make_datasets", lambda *_: pytest.fail("the dataset was loaded before the check"))
    run = workdir / "run"
    assert main(train_flags(trained.dataset, run, "--steps=2", "--policy.push_to_hub=true",
                            "--policy.repo_id=user/tiny")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--policy.push_to_hub=true: cannot push: HF_HUB_OFFLINE is set" in err[0]
    assert not run.exists()


def test_training_pushes_its_final_checkpoint(trained, hub, workdir, capsys):
    run = workdir / "run"
    assert main(train_flags(trained.dataset, run, "--steps=2", "--policy.push_to_hub=true",
                            "--policy.repo_id=user/trained")) == 0
    main_dir = hub.root / "user" / "trained" / "main"
    for name in MODEL_FILES:
        assert (main_dir / name).read_bytes() == (run / "checkpoints" / "last" / "pretrained_model" / name).read_bytes()
    card = (main_dir / "README.md").read_text()
    assert "| steps | 2, batch size 4 |" in card and "--policy.push_to_hub=true" in card
    assert (hub.root / "user" / "trained").resolve().as_uri() in capsys.readouterr().out


def test_a_run_with_a_simulator_gets_its_env_in_the_card(trained):
    from robotrain.envs.configs import AlohaEnv

    facts = CardFacts.read(trained.model)
    facts.train_config.env = AlohaEnv(task="AlohaTransferCube-v0")
    card = model_card("user/tiny", facts)
    assert "62.5% of 50 episodes of AlohaTransferCube-v0 (`aloha`), evaluated at step 4" in card
    assert ("robotrain eval --policy.path=user/tiny --env.task=AlohaTransferCube-v0 --env.type=aloha "
            "--eval.n_episodes=50") in card
    assert "--env.type=aloha" in card_command(card) and "--env.task=AlohaTransferCube-v0" in card_command(card)


def test_the_uploader_protocol_matches_huggingface_hub():
    """The calls a push makes bind to HfApi's signatures, so the default uploader takes them as the stand-in does."""
    import inspect

    from huggingface_hub import HfApi

    inspect.signature(HfApi.create_repo).bind(None, "user/tiny", private=True, exist_ok=True)
    inspect.signature(HfApi.create_branch).bind(None, "user/tiny", branch="v1", exist_ok=True)
    inspect.signature(HfApi.upload_folder).bind(None, repo_id="user/tiny", folder_path="x", commit_message="m",
                                                revision=None)


def test_a_fine_tune_of_a_hub_policy_is_written_with_its_hub_id(trained, workdir):
    cfg = load_train_config(trained.model / "train_config.json")
    cfg.policy.pretrained_path = workdir / "hub" / "models--user--tiny" / "snapshots" / "0123abc"
    argv = train_command(cfg)
    assert "--policy.path=user/tiny" in argv and not any(a.startswith("--policy.type") for a in argv)
