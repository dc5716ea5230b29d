"""Every bad input of docs/cli.md's table gets one line of error (or its warning, or runs), read from the table
itself; a bug keeps its traceback; --debug shows a user error's; --report-to tensorboard logs through accelerate."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import rdpo_zoo
from rdpo_zoo.cli import main
from train_parts import TestParts, small_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

#: the files the table's commands name, made in the folder they run from
FILES = {
    "three.toml": 'iterations = "three"\n',
    "two-and-a-half.toml": "iterations = 2.5\n",
    "seed-true.toml": "seed = true\n",
    "quiet-no.toml": 'quiet = "no"\n',
    "steps-string.toml": 'num_steps = "20"\n',
    "typo.toml": "itterations = 3\n",
    "broken.toml": "iterations = 3\nseed = \n",
    "a-file": "not a folder\n",
    "empty.txt": "# only a comment\n\n",
}


def table_rows():
    """(command, expected) of the table under docs/cli.md's "## Errors"."""
    text = DOC.read_text().split("## Errors", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`rdpo-zoo "):
            rows.append((cells[1].strip("`"), cells[2].strip("`")))
    return rows


ROWS = table_rows()


def _skip_reason(command: str):
    if ("--device cuda" in command or "--kernel-backend triton" in command) and torch.cuda.is_available():
        return "this machine has CUDA"
    if "--report-to wandb" in command and importlib.util.find_spec("wandb") is not None:
        return "wandb is installed"
    return None


def _reset_accelerate():
    # accelerate keeps one AcceleratorState per process; the rows build runs with different mixed precision
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def bad_inputs_folder(tmp_path, monkeypatch):
    _reset_accelerate()
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    _reset_accelerate()


def check_outcome(command: str, expected: str, code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stderr, f"{command}: a traceback\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    if expected.startswith("Error:"):
        assert code == 2, f"{command}: exit {code}\n{stdout}\n{stderr}"
        assert len(errors) == 1 and lines[-1] == errors[0], f"{command}: not one line of error\n{stderr}"
        assert expected.rstrip("…. ") in errors[0], f"{command}: {errors[0]!r} is not {expected!r}"
    else:
        assert code == 0 and not errors, f"{command}: exit {code}\n{stdout}\n{stderr}"
        if expected.startswith("ok: "):
            assert expected[4:] in stdout, f"{command}: {expected[4:]!r} not in\n{stdout}"
        else:
            assert expected in stderr, f"{command}: {expected!r} not in\n{stderr}"


def test_the_table_covers_the_issue():
    assert len(ROWS) >= 25
    commands = " ".join(c for c, _ in ROWS)
    for flag in ("--output-dir a-file", "/proc/", "three.toml", "two-and-a-half.toml", "seed-true.toml",
                 "quiet-no.toml", "broken.toml", "--eval-prompts empty.txt", "--estimator advantage --loss dpo",
                 "eval --reward nonsense", "sample --model /nonexistent", "--device cuda", "binary.txt",
                 "--kernel-backend triton", "--preset rdpo --loss rdpo", "train --dry-run",
                 "--train-timesteps 25,3", "--mixed-precision fp16"):
        assert flag in commands, flag


@pytest.mark.parametrize("command,expected", ROWS, ids=[c for c, _ in ROWS])
def test_bad_input_gets_what_the_table_says(command, expected, bad_inputs_folder, monkeypatch):
    reason = _skip_reason(command)
    if reason:
        pytest.skip(reason)
    if "--kernel-backend triton" in command:  # the tests run Triton interpreted; a user's CPU does not
        monkeypatch.setattr("rdpo_zoo.kernels.log_ratio.is_interpreted", lambda: False)
    result = CliRunner().invoke(main, shlex.split(command)[1:])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    check_outcome(command, expected, result.exit_code, result.stdout, result.stderr)


def _run(args, cwd, env_extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [
    "rdpo-zoo train --config broken.toml --dry-run",
    "rdpo-zoo sample --model /nonexistent --output-dir out",
    "rdpo-zoo train --kernel-backend triton --dry-run",
])
def test_bad_input_in_a_real_process(command, bad_inputs_folder):
    if _skip_reason(command):
        pytest.skip(_skip_reason(command))
    expected = dict(ROWS)[command]
    run = _run([sys.executable, "-c", "from rdpo_zoo.cli import main; main()", *shlex.split(command)[1:]],
               bad_inputs_folder, drop=("TRITON_INTERPRET",))
    check_outcome(command, expected, run.returncode, run.stdout, run.stderr)


def test_a_bug_keeps_its_traceback(tmp_path):
    # a genuine internal error (here planted: the prompt reader fails with an IndexError) is not a user error
    code = ("import rdpo_zoo.world as world; world.prompt_set = lambda *a, **k: [][1]\n"
            "from rdpo_zoo.cli import main; main(['sample', '--output-dir', 'out'])")
    run = _run([sys.executable, "-c", code], tmp_path)
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "IndexError: list index out of range" in run.stderr
    assert not any(line.startswith("Error:") for line in run.stderr.splitlines())


def test_a_bug_in_process_propagates_and_debug_shows_a_user_errors_traceback(tmp_path, monkeypatch):
    from rdpo_zoo.errors import UserInputError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("rdpo_zoo.world.prompt_set", lambda *a, **k: [][1])
    result = CliRunner().invoke(main, ["sample", "--output-dir", "out"])
    assert isinstance(result.exception, IndexError)
    (tmp_path / "a-file").write_text("")
    for args in (["--debug", "train", "--output-dir", "a-file", "--dry-run"],
                 ["train", "--output-dir", "a-file", "--dry-run", "--debug"]):
        result = CliRunner().invoke(main, args)
        assert isinstance(result.exception, UserInputError) and "'a-file' is a file" in str(result.exception)


def test_deprecated_names_still_work_and_warn():
    new = CliRunner().invoke(main, ["schedule", "--num-steps", "3", "--json"])
    old = CliRunner().invoke(main, ["schedule", "--steps=3", "--json"])
    assert new.exit_code == old.exit_code == 0
    assert json.loads(old.stdout) == json.loads(new.stdout) and len(json.loads(new.stdout)["steps"]) == 3
    assert "warning: --steps is deprecated; use --num-steps" in old.stderr and not new.stderr


def test_default_threads_follow_the_cores_not_the_load(monkeypatch):
    from rdpo_zoo import runtime

    for cores, threads in ((1, 1), (2, 1), (4, 2), (16, 8), (64, 8)):
        monkeypatch.setattr(runtime, "cpu_cores", lambda cores=cores: cores)
        assert runtime.default_threads() == threads
    before = torch.get_num_threads()
    try:
        assert runtime.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def test_parts():
    name = rdpo_zoo.register(TestParts, name="test-parts")
    yield
    rdpo_zoo.unregister(name)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the test extra's tensorboard")
def test_report_to_tensorboard_writes_the_metrics_through_accelerate(tmp_path, test_parts):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rdpo_zoo.trainer import Trainer

    trainer = Trainer(small_config(tmp_path, iterations=2, report_to="tensorboard"))
    trainer.train()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    rewards = events.Scalars("reward_mean")
    assert [e.step for e in rewards] == [1, 2]
    assert [e.value for e in rewards] == pytest.approx([r["reward_mean"] for r in logged], rel=1e-6)
    assert "loss" in events.Tags()["scalars"]


def test_report_to_none_starts_no_tracker_and_lora_files_are_readable(tmp_path, test_parts):
    from rdpo_zoo.trainer import LORA_WEIGHT_NAME, Trainer

    umask = os.umask(0o022)
    try:
        trainer = Trainer(small_config(tmp_path, iterations=1))
        trainer.train()
    finally:
        os.umask(umask)
    assert trainer.accelerator.trackers == [] and not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "lora" / LORA_WEIGHT_NAME).stat().st_mode & 0o777 == 0o644


def test_a_dry_run_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--output-dir", "runs/new/run", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: every check passed" in result.stdout and list(tmp_path.iterdir()) == []


def test_report_to_wandb_runs_offline_with_the_configuration(tmp_path, test_parts, monkeypatch):
    """W&B through accelerate's tracker, against a stand-in ``wandb`` module (the package is not a dependency):
    offline unless WANDB_MODE says otherwise, into the run folder, with the configuration and every iteration."""
    import importlib.machinery
    import types

    from rdpo_zoo.trainer import Trainer

    calls = {"log": [], "config": {}}

    class Run:
        def log(self, values, step=None):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = init
    fake.config = types.SimpleNamespace(update=lambda values, allow_val_change: calls["config"].update(values))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    Trainer(small_config(tmp_path, iterations=2, report_to="wandb")).train()
    assert calls["init"] == {"project": "rdpo-zoo", "mode": "offline", "dir": str(tmp_path)}
    assert calls["config"]["run.report_to"] == "wandb" and calls["config"]["method.rollout"] == "branch-winner"
    assert [step for step, _ in calls["log"]] == [1, 2] and "reward_mean" in calls["log"][0][1]
    assert calls["finished"]
