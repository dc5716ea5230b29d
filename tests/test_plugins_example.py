"""The example third-party plugin (examples/rdpo-zoo-example-plugin), through the real entry-point path.

The test environment is not changed: the plugin is "installed" into a temporary folder (a ``*.dist-info`` whose
``entry_points.txt`` is generated from the example's own pyproject.toml, or a real ``pip install --target`` in the
slow test) that only a subprocess sees on its ``PYTHONPATH``. ``docs/plugins.md`` must show the example's files
as they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rdpo-zoo-example-plugin"
GUIDE = ROOT / "docs" / "plugins.md"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]

USE_BY_NAME = r"""
import json, torch, rdpo_zoo
from rdpo_zoo.losses import pairwise_losses

out = {}
registry = rdpo_zoo.get_registry()
loss_part = rdpo_zoo.get_part("loss", "dpo-margin")
out["loss_source"] = [loss_part.source.distribution, loss_part.source.version]
r = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
# through the engine, by name, with typed options from strings
objective = rdpo_zoo.build_loss("dpo-margin", ["beta=1.0", "margin=0.5"], "psi", ["lambda=2"])
# through rdpo_zoo.losses.pairwise_losses, with the formula the part names
direct = pairwise_losses(r, loss=loss_part.load(), beta=1.0, penalty="psi", psi_lambda=2.0, margin=0.5)
dpo = pairwise_losses(r, loss="dpo", beta=1.0, penalty="psi", psi_lambda=2.0)
z = torch.tensor([0.5, -0.5 - 2.0 * 0.5], dtype=torch.float64)
out["loss"] = objective(r).tolist()
out["loss_direct"] = direct.tolist()
out["loss_expected"] = torch.nn.functional.softplus(0.5 - z).tolist()
out["margin_zero_is_dpo"] = torch.allclose(pairwise_losses(r, loss=loss_part.load(), beta=1.0, margin=0.0),
                                           pairwise_losses(r, loss="dpo", beta=1.0))
out["fused"] = objective.fused
try:
    rdpo_zoo.build_loss("dpo-margin", ["margni=1"])
except ValueError as error:
    out["option_error"] = str(error)

reward = rdpo_zoo.get_part("reward", "saturation").build({"measure": "hsv"})
images = torch.rand(2, 3, 8, 8, requires_grad=True)
images_grey = torch.full((1, 3, 8, 8), 0.3)
out["reward_type"] = [c.__name__ for c in type(reward).__mro__[:2]]
out["grey"] = reward(images_grey, ["a grey square"]).tolist()
value = reward.score_differentiable(images, ["a", "b"])
value.sum().backward()
out["grad_finite"] = bool(torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0)
print("RESULT " + json.dumps(out))
"""


def fake_install(site: Path) -> None:
    """What an installer leaves for the example: a ``*.dist-info`` with METADATA and the entry points of the
    example's pyproject.toml; the code itself is found through PYTHONPATH (as an editable install does)."""
    info = site / f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PROJECT['name']}\nVersion: {PROJECT['version']}\n")
    groups = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items())
    (info / "entry_points.txt").write_text(text)


def run(args, pythonpath, selection="builtin,rdpo-zoo-example-plugin"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)), RDPO_ZOO_PLUGINS=selection)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


CLI = ["-c", "import sys; from rdpo_zoo.cli import main; sys.exit(main())"]


def check_installed(pythonpath):
    data = json.loads(run(CLI + ["plugins", "--json"], pythonpath))
    (plugin,) = [p for p in data["plugins"] if p["distribution"] == PROJECT["name"]]
    assert plugin["status"] == "ok" and plugin["version"] == PROJECT["version"]
    assert plugin["parts"] == ["loss:dpo-margin", "reward:saturation"]
    loss = {p["name"]: p for p in data["parts"]["loss"]}["dpo-margin"]
    assert (loss["distribution"], loss["fused"]) == (PROJECT["name"], None)
    assert [(o["name"], o["common"]) for o in loss["options"]] == [("beta", True), ("clamp_eps", True), ("margin", False)]
    reward = {p["name"]: p for p in data["parts"]["reward"]}["saturation"]
    assert reward["distribution"] == PROJECT["name"]
    text = run(CLI + ["plugins", "--kind", "loss", "--kind", "reward"], pythonpath)
    assert re.search(r"dpo-margin +DPO with a target margin .*\(rdpo-zoo-example-plugin 0\.1\.0\)  \[fused: no", text)
    assert re.search(r"saturation +mean colour saturation .*\(rdpo-zoo-example-plugin 0\.1\.0\)", text)

    line = next(l for l in run(["-c", USE_BY_NAME], pythonpath).splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["loss_source"] == [PROJECT["name"], PROJECT["version"]]
    assert out["loss"] == pytest.approx(out["loss_expected"]) and out["loss_direct"] == pytest.approx(out["loss_expected"])
    assert out["margin_zero_is_dpo"] and out["fused"] is None
    assert "loss 'dpo-margin' has no option 'margni'; did you mean 'margin'?" in out["option_error"]
    assert out["reward_type"] == ["Saturation", "Reward"]
    assert out["grey"] == [0.0] and out["grad_finite"]


def test_example_plugin_through_its_entry_point(tmp_path):
    fake_install(tmp_path)
    check_installed([tmp_path, EXAMPLE])
    # selection: without it in RDPO_ZOO_PLUGINS the installed plugin is not loaded
    data = json.loads(run(CLI + ["plugins", "--json"], [tmp_path, EXAMPLE], selection="builtin"))
    assert "dpo-margin" not in {p["name"] for p in data["parts"]["loss"]}


@pytest.mark.slow
def test_example_plugin_installed_by_pip(tmp_path):
    """The same with a real installer: ``pip install --target`` (no network: no dependencies, no isolation)."""
    source, target = tmp_path / "src", tmp_path / "site"
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=600,
    )
    check_installed([target])


def test_example_plugin_in_process():
    """The example's own test path: in-process registration into a temporary registry."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import rdpo_zoo
        import rdpo_zoo_example_plugin

        with rdpo_zoo.temporary_registry(plugins="builtin"):
            rdpo_zoo.register(rdpo_zoo_example_plugin)
            assert rdpo_zoo.get_part("loss", "dpo-margin").source.describe() == (
                "rdpo_zoo_example_plugin (registered in-process)"
            )
            objective = rdpo_zoo.build_loss("dpo-margin", {"margin": 0.0, "beta": 2.0})
            assert objective.options == {"margin": 0.0} and objective.beta == 2.0
    finally:
        sys.path.remove(str(EXAMPLE))


def guide_files() -> dict:
    """The last version of every file the guide shows: a fenced block whose first line is ``# file: PATH``."""
    files = {}
    for block in re.findall(r"```[a-z]*\n(.*?)```", GUIDE.read_text(), flags=re.S):
        first, _, rest = block.partition("\n")
        match = re.match(r"^# file: (\S+)$", first)
        if match:
            files[match.group(1)] = rest
    return files


def test_guide_shows_the_example_as_it_is():
    files = guide_files()
    expected = {
        "pyproject.toml",
        "rdpo_zoo_example_plugin/__init__.py",
        "rdpo_zoo_example_plugin/losses.py",
        "rdpo_zoo_example_plugin/rewards.py",
        "tests/test_example_plugin.py",
    }
    assert expected <= set(files), sorted(files)
    for path in expected:
        assert files[path] == (EXAMPLE / path).read_text(), f"docs/plugins.md shows an outdated {path}"
