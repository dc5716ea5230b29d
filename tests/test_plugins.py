"""The plugin engine: entry points, listing, lookup errors, duplicates, broken plugins, options, presets, the CLI.

Plugins under test are throw-away ``*.dist-info`` folders in ``tmp_path`` read through ``importlib.metadata``
(the real entry-point path) or objects registered in-process; the registry under test is always a fresh one, so
nothing leaks between tests and nothing installed in the environment is loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from importlib import metadata

import pytest
from click.testing import CliRunner

import rdpo_zoo
from rdpo_zoo import LossPart, Option, OptionError, PenaltyPart, Preset, RewardPart
from rdpo_zoo.cli import main
from rdpo_zoo.parts import SETTINGS, parse_assignments
from rdpo_zoo.registry import DuplicatePartError, Registry, UnknownPartError, temporary_registry

BUILTIN = metadata.distribution("rdpo-zoo")


def fake_distribution(root, name, entry_points, modules, version="1.0"):
    """A minimal installed distribution: ``<name>-<version>.dist-info`` with METADATA and entry_points.txt, plus
    its modules, under ``root`` (which the caller puts on sys.path)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[rdpo_zoo]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return metadata.PathDistribution(info)


def unique(prefix="plug"):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


LOSS_PLUGIN = """
import rdpo_zoo
from rdpo_zoo import LossPart

@rdpo_zoo.hookimpl
def register_losses(register):
    register(LossPart("{name}", "a test loss", "rdpo_zoo.losses:PAIRWISE_LOSSES"))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------- built-ins


def test_builtins_are_entry_points_of_the_distribution():
    eps = {ep.name: ep.value for ep in BUILTIN.entry_points if ep.group == "rdpo_zoo"}
    for name in ("losses", "models", "presets"):
        assert eps[f"rdpo_zoo.{name}"] == f"rdpo_zoo.plugins.{name}"
    registry = Registry(plugins="builtin")
    assert not registry.broken, [p.error for p in registry.broken]
    assert {"dpo", "d3po", "ipo", "hinge", "rdpo"} <= set(registry.names("loss"))
    assert {"psi", "psi-literal", "dpop"} <= set(registry.names("penalty"))
    assert {"sd15", "sdxl", "diffusers"} <= set(registry.names("model"))
    presets = {"ddpo", "d3po", "diffusion-dpo", "spo", "tailorpo", "tailorpo-g", "rdpo-star", "rdpo"}
    assert presets <= set(registry.names("preset"))
    dpo = registry.get("loss", "dpo")
    assert (dpo.source.distribution, dpo.source.version) == ("rdpo-zoo", BUILTIN.version)
    assert dpo.source.plugin == "rdpo_zoo.losses"


def test_builtin_losses_are_the_formulas_of_losses_py():
    """One source of truth: the parts point at rdpo_zoo.losses' objects; names, descriptions, fused forms and
    aliases agree with its tables."""
    from rdpo_zoo.losses import LOSS_ALIASES, PAIRWISE_LOSSES, PENALTIES

    registry = Registry(plugins="builtin")
    for name, formula in PAIRWISE_LOSSES.items():
        part = registry.get("loss", name)
        assert part.load() is formula
        assert (part.description, part.fused, part.penalty) == (formula.description, formula.fused, None)
    for name, formula in PENALTIES.items():
        part = registry.get("penalty", name)
        assert part.load() is formula
        assert (part.description, part.fused) == (formula.description, formula.fused)
    for alias, (base, penalty) in LOSS_ALIASES.items():
        part = registry.get("loss", alias)
        assert part.load() is PAIRWISE_LOSSES[base] and part.penalty == penalty
        assert part.fused == PAIRWISE_LOSSES[base].fused


# ---------------------------------------------------------------------------------------- listing


def test_plugins_json_lists_every_part_with_its_source():
    with temporary_registry(plugins="builtin"):
        result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["selection"] == "builtin"
    losses = {p["name"]: p for p in data["parts"]["loss"]}
    assert losses["dpo"]["fused"] == "dpo"
    assert losses["rdpo"]["penalty"] == "psi"
    assert losses["dpo"]["distribution"] == "rdpo-zoo" and losses["dpo"]["version"] == BUILTIN.version
    assert set(data["parts"]) == {"estimator", "loss", "penalty", "reward", "model", "model-family", "step-family",
                                  "preset"}
    assert {p["name"] for p in data["parts"]["step-family"]} >= {"ddim", "ddpm"}
    assert {p["name"] for p in data["parts"]["model-family"]} >= {"sd", "sdxl"}
    assert {p["name"] for p in data["plugins"]} >= {"rdpo_zoo.losses", "rdpo_zoo.models", "rdpo_zoo.presets"}
    assert all(p["status"] == "ok" for p in data["plugins"])
    presets = {p["name"]: p for p in data["parts"]["preset"]}
    assert presets["d3po"]["settings"]["loss_options"] == {"beta": 0.1, "clamp_eps": 0.1}
    sd15 = {p["name"]: p for p in data["parts"]["model"]}["sd15"]
    assert {o["name"] for o in sd15["options"]} >= {"id", "dtype"}


def test_plugins_text_listing():
    with temporary_registry(plugins="builtin"):
        result = CliRunner().invoke(main, ["plugins", "--options", "--kind", "loss", "--kind", "penalty"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "losses (" in out and "penalties (" in out and "presets (" not in out
    assert f"(rdpo-zoo {BUILTIN.version})" in out
    assert "[fused: dpo]" in out
    assert "beta=0.1 (float > 0" in out
    assert "lambda=100.0" in out and "lambda=5.0" in out  # per-penalty defaults


# ------------------------------------------------------------------------------------------- lookup


def test_unknown_name_lists_known_names_and_the_closest():
    registry = Registry(plugins="builtin")
    with pytest.raises(UnknownPartError) as error:
        registry.get("loss", "dpoo")
    message = str(error.value)
    assert "unknown loss 'dpoo'" in message and "did you mean 'dpo'?" in message
    known = ", ".join(registry.names("loss"))
    assert f"Known losses: {known}" in message and "d3po, dpo, grpo, hinge, ipo" in known
    with pytest.raises(UnknownPartError, match="did you mean 'rdpo-star'"):
        registry.get("preset", "rdpo_star")
    with pytest.raises(ValueError, match="unknown kind of part 'losss'; did you mean 'loss'"):
        registry.get("losss", "dpo")


def test_default_registry_follows_the_environment(monkeypatch):
    # conftest sets RDPO_ZOO_PLUGINS=builtin: the tests' process-wide registry has the built-ins only
    with temporary_registry() as registry:
        assert registry.selection == "builtin"
        assert rdpo_zoo.get_part("loss", "dpo") is registry.get("loss", "dpo")
    monkeypatch.delenv("RDPO_ZOO_PLUGINS")
    assert Registry(distributions=[BUILTIN]).selection == "all"


# --------------------------------------------------------------------------------------- selection


def test_selection_syntax(site):
    extra = unique()
    dist = fake_distribution(site, "Extra_Plugin", {"extra": extra}, {extra: LOSS_PLUGIN.format(name="extra-loss")})
    dists = [BUILTIN, dist]

    def losses(selection):
        registry = Registry(plugins=selection, distributions=dists)
        return registry, set(registry.names("loss"))

    assert losses("none")[1] == set() and losses("")[1] == set()
    builtin = losses("builtin")[1]
    assert {"dpo", "d3po", "ipo", "hinge", "rdpo"} <= builtin and "extra-loss" not in builtin
    assert losses("all")[1] == builtin | {"extra-loss"}
    assert losses("extra-plugin")[1] == {"extra-loss"}  # distribution names are compared normalised
    assert losses("builtin, Extra.Plugin")[1] == builtin | {"extra-loss"}
    registry, names = losses("extra")  # an entry-point name
    assert names == {"extra-loss"} and registry.names("preset") == []
    registry, names = losses("rdpo_zoo.presets")
    assert names == set() and "rdpo" in registry.names("preset")
    registry, names = losses("builtin,extra-plugins")  # a typo: reported, the rest loads
    assert "dpo" in names
    (broken,) = registry.broken
    assert "RDPO_ZOO_PLUGINS names 'extra-plugins'" in broken.error and "did you mean 'Extra_Plugin'" in broken.error


# ---------------------------------------------------------------------------------------- duplicates


def test_two_distributions_registering_one_name(site):
    one, two = unique(), unique()
    dists = [
        BUILTIN,
        fake_distribution(site, "plugin-one", {"one": one}, {one: LOSS_PLUGIN.format(name="twin")}, version="1.2"),
        fake_distribution(site, "plugin-two", {"two": two}, {two: LOSS_PLUGIN.format(name="twin")}, version="3.4"),
    ]
    with temporary_registry(plugins="all", distributions=dists) as registry:
        with pytest.raises(DuplicatePartError) as error:
            registry.get("loss", "twin")
        message = str(error.value)
        assert "loss 'twin' is registered by more than one plugin" in message
        assert "plugin-one 1.2" in message and "plugin-two 3.4" in message and "RDPO_ZOO_PLUGINS" in message
        assert registry.get("loss", "dpo").name == "dpo"  # the rest of the engine works
        result = CliRunner().invoke(main, ["plugins"])
        assert result.exit_code == 0 and "CONFLICT" in result.output
        conflicts = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)["conflicts"]
        assert conflicts == [{"kind": "loss", "name": "twin", "distributions": ["plugin-one 1.2", "plugin-two 3.4"]}]
    # choosing one of them resolves it
    registry = Registry(plugins="builtin,plugin-two", distributions=dists)
    assert registry.get("loss", "twin").source.distribution == "plugin-two"


def test_a_third_party_shadowing_a_builtin_is_a_conflict(site):
    name = unique()
    dist = fake_distribution(site, "shadow", {"shadow": name}, {name: LOSS_PLUGIN.format(name="dpo")})
    registry = Registry(plugins="all", distributions=[BUILTIN, dist])
    with pytest.raises(DuplicatePartError, match=f"rdpo-zoo {BUILTIN.version} and shadow 1.0"):
        registry.get("loss", "dpo")


def test_in_process_duplicate_is_refused_at_once():
    class Plugin:
        @rdpo_zoo.hookimpl
        def register_losses(self, register):
            register(LossPart("dpo", "another dpo", "rdpo_zoo.losses:dpo_loss"))

    registry = Registry(plugins="builtin")
    with pytest.raises(DuplicatePartError, match=f"rdpo-zoo {BUILTIN.version} and mine \\(registered in-process\\)"):
        registry.register(Plugin(), name="mine")
    assert registry.get("loss", "dpo").source.distribution == "rdpo-zoo"
    assert "mine" not in {p.name for p in registry.plugins}


def test_a_plugin_registering_a_name_twice_is_broken(site):
    name = unique()
    source = """
    import rdpo_zoo
    from rdpo_zoo import LossPart

    @rdpo_zoo.hookimpl
    def register_losses(register):
        register(LossPart("same", "first", "rdpo_zoo.losses:PAIRWISE_LOSSES"))
        register(LossPart("same", "second", "rdpo_zoo.losses:PAIRWISE_LOSSES"))
    """
    registry = Registry(plugins="all", distributions=[fake_distribution(site, "twice", {"twice": name}, {name: source})])
    (broken,) = registry.broken
    assert "loss 'same' is registered twice by this plugin" in broken.error
    assert registry.names("loss") == []


# ------------------------------------------------------------------------------------------- broken


BROKEN_SOURCES = {
    "import": ("import", "import no_such_module_anywhere\n", "cannot import {module!r}: ModuleNotFoundError"),
    "hook": (
        "hook",
        """
        import rdpo_zoo
        from rdpo_zoo import LossPart, RewardPart

        @rdpo_zoo.hookimpl
        def register_losses(register):
            register(LossPart("half-registered", "never seen", "rdpo_zoo.losses:PAIRWISE_LOSSES"))

        @rdpo_zoo.hookimpl
        def register_rewards(register):
            raise RuntimeError("no weights here")
        """,
        "hook register_rewards raised RuntimeError: no weights here",
    ),
    "typo": (
        "typo",
        """
        import rdpo_zoo

        @rdpo_zoo.hookimpl
        def register_loses(register):
            pass
        """,
        "unknown hook 'register_loses'; did you mean 'register_losses'?",
    ),
    "kind": (
        "kind",
        """
        import rdpo_zoo
        from rdpo_zoo import LossPart

        @rdpo_zoo.hookimpl
        def register_rewards(register):
            register(LossPart("not-a-reward", "a loss in the wrong hook", "rdpo_zoo.losses:PAIRWISE_LOSSES"))
        """,
        "register_rewards registers rewards: expected an rdpo_zoo.RewardPart, got LossPart",
    ),
    "exit": ("exit", "raise SystemExit(3)\n", "SystemExit: 3"),
}


def test_broken_plugins_are_reported_and_do_not_take_the_cli_down(site):
    modules = {key: unique(key) for key in BROKEN_SOURCES}
    dists = [BUILTIN] + [
        fake_distribution(site, f"broken-{key}", {key: modules[key]}, {modules[key]: source})
        for key, (_, source, _) in BROKEN_SOURCES.items()
    ]
    with temporary_registry(plugins="all", distributions=dists) as registry:
        broken = {p.name: p for p in registry.broken}
        assert set(broken) == set(BROKEN_SOURCES)
        for key, (_, _, expected) in BROKEN_SOURCES.items():
            assert expected.format(module=modules[key]) in broken[key].error, broken[key].error
            assert broken[key].distribution == f"broken-{key}" and broken[key].traceback
        # all or nothing: the hook that succeeded before the failing one added nothing
        assert "half-registered" not in registry.names("loss")
        assert registry.get("loss", "dpo").name == "dpo"
        with pytest.raises(UnknownPartError, match="Broken plugins .*hook register_rewards raised"):
            registry.get("reward", "saturation")

        result = CliRunner().invoke(main, ["plugins"])
        assert result.exit_code == 0, result.output
        assert "broken plugins (5)" in result.output
        assert "hook (broken-hook 1.0): hook register_rewards raised RuntimeError: no weights here" in result.output
        data = json.loads(CliRunner().invoke(main, ["plugins", "--json", "--traceback"]).output)
        status = {p["name"]: p for p in data["plugins"]}
        assert status["hook"]["status"] == "broken" and "no weights here" in status["hook"]["traceback"]
        assert status["rdpo_zoo.losses"]["status"] == "ok"


# ----------------------------------------------------------------------------------- in-process register


def test_register_and_unregister_in_process():
    class Extra:
        @rdpo_zoo.hookimpl
        def register_penalties(self, register):
            register(PenaltyPart("zero", "no penalty at all", "rdpo_zoo.losses:PENALTIES", default_lambda=0.0))

        @rdpo_zoo.hookimpl
        def register_rewards(self, register):
            register(RewardPart("const", "a constant reward", lambda value=1.0: value, [Option("value", float, 1.0, "x")]))

    with temporary_registry(plugins="builtin") as registry:
        name = rdpo_zoo.register(Extra(), name="extra")
        assert rdpo_zoo.get_part("penalty", "zero").source.describe() == "extra (registered in-process)"
        assert {p.kind for p in registry.parts() if p.source.plugin == "extra"} == {"penalty", "reward"}
        with pytest.raises(ValueError, match="already registered"):
            rdpo_zoo.register(Extra(), name="extra")
        rdpo_zoo.unregister(name)
        with pytest.raises(UnknownPartError):
            rdpo_zoo.get_part("penalty", "zero")
        assert "extra" not in {p.name for p in registry.plugins}
        with pytest.raises(KeyError, match="no plugin 'extra'"):
            rdpo_zoo.unregister("extra")
    # the process-wide registry never saw it
    with pytest.raises(UnknownPartError):
        rdpo_zoo.get_part("penalty", "zero")


def test_hook_errors_raise_in_process():
    class Bad:
        @rdpo_zoo.hookimpl
        def register_models(self, register):
            raise RuntimeError("boom")

    registry = Registry(plugins="none")
    with pytest.raises(rdpo_zoo.registry.PluginError, match="hook register_models raised RuntimeError: boom"):
        registry.register(Bad(), name="bad")
    assert registry.plugins == []


# ------------------------------------------------------------------------------------------- options


def test_options_are_typed_from_strings_and_values():
    part = RewardPart(
        "r",
        "a reward",
        "x.y:z",
        [
            Option("quality", int, 95, "JPEG quality", min=1, max=100),
            Option("scale", float, 1.0, "a scale", min=0.0, min_exclusive=True),
            Option("mode", str, "hsv", "a mode", choices=("hsv", "chroma")),
            Option("flag", bool, False, "a flag"),
            Option("limit", float, None, "optional"),
        ],
    )
    assert part.parse_options() == {"quality": 95, "scale": 1.0, "mode": "hsv", "flag": False, "limit": None}
    typed = part.parse_options(["quality=80", "scale=1e-4", "mode=chroma", "flag=yes", "limit=0.5"])
    assert typed == {"quality": 80, "scale": 1e-4, "mode": "chroma", "flag": True, "limit": 0.5}
    assert isinstance(typed["scale"], float) and isinstance(typed["quality"], int)
    assert part.parse_options({"quality": 7.0, "scale": 2, "limit": "none"})["limit"] is None
    bad = {
        "quality=0.5": "reward 'r' option 'quality': expected int in [1, 100], got '0.5'",
        "quality=101": "expected int in [1, 100], got '101'",
        "scale=0": "reward 'r' option 'scale': expected float > 0, got '0'",
        "scale=nan": "expected a finite float > 0",
        "scale=none": "expected float > 0, got 'none'",
        "mode=hvs": "expected one of hsv, chroma (did you mean 'hsv'?), got 'hvs'",
        "flag=maybe": "expected a boolean",
        "qualty=3": "reward 'r' has no option 'qualty'; did you mean 'quality'? Its options: quality, scale, mode",
        "quality": "expected KEY=VALUE (e.g. beta=0.1), got 'quality'",
    }
    for given, message in bad.items():
        with pytest.raises(OptionError) as error:
            part.parse_options([given])
        assert message in str(error.value), (given, str(error.value))
    with pytest.raises(OptionError, match="given twice"):
        parse_assignments(["a=1", "a=2"])
    assert parse_assignments(["timesteps=20,16,12", "x = a=b "]) == {"timesteps": "20,16,12", "x": "a=b"}


def test_loss_options_include_the_common_ones():
    dpo = Registry(plugins="builtin").get("loss", "dpo")
    assert [o.name for o in dpo.all_options] == ["beta", "clamp_eps"]
    assert dpo.parse_options(["beta=0.2", "clamp_eps=0.1"]) == {"beta": 0.2, "clamp_eps": 0.1}
    with pytest.raises(OptionError, match="option 'clamp_eps': expected float in \\(0, 1\\) or none, got '1'"):
        dpo.parse_options(["clamp_eps=1"])
    with pytest.raises(ValueError, match="common to every loss"):
        LossPart("mine", "a loss", "a.b:c", [Option("beta", float, 1.0, "clash")])


def test_part_validation():
    with pytest.raises(ValueError, match="name: expected lower-case"):
        LossPart("My Loss", "x", "a.b:c")
    with pytest.raises(ValueError, match="description must be one non-empty line"):
        LossPart("mine", "two\nlines", "a.b:c")
    with pytest.raises(ValueError, match="factory must be a callable or a 'package.module:attribute'"):
        LossPart("mine", "x", "a.b.c")
    with pytest.raises(OptionError, match="Option 'q' default: expected int >= 1, got 0"):
        Option("q", int, 0, "bad default", min=1)
    with pytest.raises(ValueError, match="declared twice"):
        RewardPart("r", "x", "a.b:c", [Option("a", int, 1, "x"), Option("a", int, 2, "y")])
    with pytest.raises(ImportError, match="reward 'r': cannot import 'no_such_pkg_here.mod' \\(its factory"):
        RewardPart("r", "x", "no_such_pkg_here.mod:f").build()


# --------------------------------------------------------------------------------------------- losses


def test_build_loss_is_pairwise_losses_with_typed_options():
    import torch

    from rdpo_zoo.losses import pairwise_losses

    r = torch.randn(6, 2, dtype=torch.float64)
    with temporary_registry(plugins="builtin"):
        objective = rdpo_zoo.build_loss("dpo", {"beta": "0.5", "clamp_eps": "0.1"}, "psi", ["lambda=3"])
        expected = pairwise_losses(r, "dpo", beta=0.5, clamp_eps=0.1, penalty="psi", psi_lambda=3.0)
        assert torch.equal(objective(r), expected)
        assert objective.fused == ("dpo", "psi") and objective.placement == "inside"
        rdpo = rdpo_zoo.build_loss("rdpo", {"beta": 0.1}, penalty_options=None)
        assert (rdpo.penalty_name, rdpo.psi_lambda) == ("psi", 0.1)  # Ψ's own default, also the rdpo preset's
        assert torch.equal(rdpo(r), pairwise_losses(r, "rdpo", beta=0.1, psi_lambda=0.1))
        assert torch.equal(rdpo.mean(r), rdpo(r).mean())
        with pytest.raises(OptionError, match="already includes the 'psi' penalty"):
            rdpo_zoo.build_loss("rdpo", penalty="dpop")
        with pytest.raises(OptionError, match="given without a penalty"):
            rdpo_zoo.build_loss("dpo", penalty_options={"lambda": 1})
        with pytest.raises(OptionError, match="penalty 'psi' option 'placement': expected one of inside, outside"):
            rdpo_zoo.build_loss("dpo", penalty="psi", penalty_options={"placement": "beside"})
        with pytest.raises(UnknownPartError, match="did you mean 'hinge'"):
            rdpo_zoo.build_loss("hing")


# --------------------------------------------------------------------------------------------- presets


@pytest.fixture
def presets_registry():
    """The built-ins, plus stand-ins for estimators and DDPO's loss where their plugins are not registered."""
    with temporary_registry(plugins="builtin") as registry:

        class Stand:
            @rdpo_zoo.hookimpl
            def register_estimators(self, register):
                for name in ("final-order", "x0-hat", "delta-q", "advantage"):
                    if name not in registry.names("estimator"):
                        register(rdpo_zoo.EstimatorPart(name, "a stand-in", "a.b:c"))

            @rdpo_zoo.hookimpl
            def register_losses(self, register):
                if "ppo-clip" not in registry.names("loss"):
                    register(LossPart("ppo-clip", "a stand-in", "a.b:c", [Option("clip_range", float, 1e-4, "x")]))

        registry.register(Stand(), name="stand-ins")
        yield registry


def test_presets_are_the_papers_settings(presets_registry):
    merged = {name: rdpo_zoo.merge_settings(name) for name in presets_registry.names("preset")}
    assert all(s["reduction"] == "mean" for s in merged.values())
    d3po = merged["d3po"]
    assert (d3po["rollout"], d3po["estimator"], d3po["loss"]) == ("two-trajectories", "final-order", "d3po")
    assert d3po["loss_options"] == {"beta": 0.1, "clamp_eps": 0.1}
    assert (d3po["num_steps"], d3po["eta"], d3po["guidance_scale"], d3po["train_timesteps"]) == (20, 1.0, 5.0, "all")
    ddpo = merged["ddpo"]
    assert ddpo["loss"] == "ppo-clip" and ddpo["loss_options"]["clip_range"] == 1e-4 and ddpo["num_steps"] == 50
    ddp = merged["diffusion-dpo"]
    assert ddp["rollout"] == "noised-pairs" and ddp["loss_options"]["beta"] == 5000.0 and ddp["scheduler"] is None
    spo = merged["spo"]
    assert spo["loss_options"] == {"beta": 10.0, "clamp_eps": 0.1}
    assert (spo["threshold"], spo["branch_start"], spo["rollout"]) == (0.3, 4, "branch-random")
    for name in ("tailorpo", "tailorpo-g", "rdpo-star", "rdpo"):
        s = merged[name]
        assert (s["rollout"], s["eta"], s["num_steps"], s["train_timesteps"]) == ("branch-winner", 1.0, 20, "20,16,12,8,4")
    assert merged["tailorpo"]["estimator"] == "x0-hat" and not merged["tailorpo"]["gradient_guidance"]
    assert merged["tailorpo-g"]["gradient_guidance"] and merged["rdpo-star"]["estimator"] == "delta-q"
    assert merged["rdpo-star"]["penalty"] is None
    assert merged["rdpo"]["penalty"] == "psi"
    assert merged["rdpo"]["penalty_options"] == {"lambda": 0.1, "placement": "inside"}  # the embedded world's λ
    assert set(merged["rdpo"]) == {o.name for o in SETTINGS}


def test_merge_settings_overrides(presets_registry):
    # None means "not given"; *_options merge key by key; strings are typed
    s = rdpo_zoo.merge_settings("d3po", {"loss": None, "eta": "0.5", "loss_options": {"beta": "0.2"}})
    assert s["eta"] == 0.5 and s["loss_options"] == {"beta": 0.2, "clamp_eps": 0.1}
    # another loss keeps the options it declares (beta, clamp_eps are every loss's)
    s = rdpo_zoo.merge_settings("d3po", {"loss": "ipo"})
    assert s["loss"] == "ipo" and s["loss_options"] == {"beta": 0.1, "clamp_eps": 0.1}
    # "none" removes a part, with its options
    s = rdpo_zoo.merge_settings("rdpo", {"penalty": "none"})
    assert s["penalty"] is None and s["penalty_options"] == {}
    # another penalty keeps the λ the preset chose (every penalty declares lambda)
    s = rdpo_zoo.merge_settings("rdpo", {"penalty": "dpop", "penalty_options": {"placement": "outside"}})
    assert s["penalty_options"] == {"lambda": 0.1, "placement": "outside"}  # not dpop's own 5.0
    # no preset: the defaults, with the part's defaults filled in
    s = rdpo_zoo.merge_settings(None, {"loss": "hinge"})
    assert s["loss_options"] == {"beta": 0.1, "clamp_eps": None} and s["penalty"] is None
    with pytest.raises(OptionError, match="unknown setting .learning_rat.; did you mean .learning_rate."):
        rdpo_zoo.merge_settings("d3po", {"learning_rat": 1e-4})
    with pytest.raises(OptionError, match="loss 'd3po' has no option 'betta'; did you mean 'beta'"):
        rdpo_zoo.merge_settings("d3po", {"loss_options": {"betta": 1}})
    with pytest.raises(OptionError, match="overrides setting 'eta': expected float >= 0 or none, got -1"):
        rdpo_zoo.merge_settings("d3po", {"eta": -1})
    # the rdpo preset's penalty is the one loss rdpo includes: the same method, not a double count (issue 22)
    s = rdpo_zoo.merge_settings("rdpo", {"loss": "rdpo"})
    assert s["loss"] == "rdpo" and s["penalty"] is None
    assert s["penalty_options"] == {"lambda": 0.1, "placement": "inside"}
    with pytest.raises(OptionError, match="already includes the 'psi' penalty; penalty 'psi' .given."):
        rdpo_zoo.merge_settings("rdpo", {"loss": "rdpo", "penalty": "psi"})
    with pytest.raises(OptionError, match="penalty 'dpop' .from preset. as well would count it twice"):
        rdpo_zoo.merge_settings({"loss": "dpo", "penalty": "dpop"}, {"loss": "rdpo"})
    with pytest.raises(UnknownPartError, match="unknown preset 'rdpp'"):
        rdpo_zoo.merge_settings("rdpp")
    # a part the preset names but nobody registered fails at merge time, unless parts are not checked
    s = rdpo_zoo.merge_settings("d3po", {"estimator": "nobody-has-this"}, check_parts=False)
    assert s["estimator"] == "nobody-has-this"
    with pytest.raises(UnknownPartError, match="unknown estimator 'nobody-has-this'"):
        rdpo_zoo.merge_settings("d3po", {"estimator": "nobody-has-this"})


def test_preset_is_data():
    with pytest.raises(OptionError, match="preset 'p': unknown setting 'betaa'"):
        Preset("p", "a preset", settings={"betaa": 1})
    with pytest.raises(ValueError, match="a preset is data"):
        Preset("p", "a preset", factory="a.b:c")
    preset = Preset("p", "a preset", settings={"loss": "hinge", "eta": "0"})
    assert preset.settings == {"loss": "hinge", "eta": 0.0}


# ------------------------------------------------------------------------------------------------- models


def test_models_do_not_download_unnamed_weights(tmp_path):
    registry = Registry(plugins="builtin")
    with pytest.raises(OSError) as error:
        registry.get("model", "sd15").build({"cache_dir": str(tmp_path)})
    message = str(error.value)
    assert "runwayml/stable-diffusion-v1-5 is not in the local Hugging Face cache" in message
    assert "huggingface-cli download runwayml/stable-diffusion-v1-5" in message and "--model-opt id=" in message
    with pytest.raises(OSError, match="is not a folder"):
        registry.get("model", "sdxl").build({"id": str(tmp_path / "missing" / "pipe")})
    with pytest.raises(ValueError, match="option 'id' is required"):
        registry.get("model", "diffusers").build()
    with pytest.raises(OptionError, match="model 'sd15' option 'dtype': expected one of float32, float16, bfloat16"):
        registry.get("model", "sd15").build({"dtype": "fp8"})


# --------------------------------------------------------------------------------- CLI option generation


def test_part_options_for_other_commands():
    import click

    from rdpo_zoo.cli.plugins_cmd import parse_part_options, part_options

    @click.command()
    @part_options("loss", default="dpo")
    def train(loss, loss_opt):
        click.echo(json.dumps(parse_part_options("loss", loss, loss_opt)))

    runner = CliRunner()
    with temporary_registry(plugins="builtin"):
        help_text = " ".join(runner.invoke(train, ["--help"]).output.split())  # undo click's wrapping
        assert "--loss NAME" in help_text and "--loss-opt KEY=VALUE" in help_text
        assert "hinge / SLiC" in help_text and "beta=0.1 (float > 0" in help_text
        result = runner.invoke(train, ["--loss", "ipo", "--loss-opt", "beta=0.5", "--loss-opt", "clamp_eps=none"])
        assert result.exit_code == 0 and json.loads(result.output) == {"beta": 0.5, "clamp_eps": None}
        result = runner.invoke(train, ["--loss-opt", "beta=x"])
        assert result.exit_code == 2 and "Invalid value for --loss-opt" in result.output
        assert "loss 'dpo' option 'beta': expected float > 0, got 'x'" in result.output
        result = runner.invoke(train, ["--loss", "dpoo"])
        assert result.exit_code == 2 and "did you mean 'dpo'?" in result.output

    # with a preset: flags not given leave the preset's values
    from rdpo_zoo.cli.plugins_cmd import part_overrides

    assert part_overrides("loss", None, ()) == {}
    assert part_overrides("penalty", "dpop", ["lambda=2"]) == {"penalty": "dpop", "penalty_options": {"lambda": "2"}}
    with pytest.raises(click.BadParameter, match="--penalty-opt: expected KEY=VALUE"):
        part_overrides("penalty", None, ["lambda"])


NO_TORCH_SCRIPT = """
import json, sys, time
start = time.perf_counter()
from rdpo_zoo.cli import main
try:
    main(["--help"], standalone_mode=False)
    main(["plugins"], standalone_mode=False)
    main(["plugins", "--json", "--options"], standalone_mode=False)
except SystemExit:
    pass
import rdpo_zoo
rdpo_zoo.get_part("loss", "dpo").parse_options(["beta=0.1"])
rdpo_zoo.get_part("model", "sd15").parse_options(["dtype=float16"])
rdpo_zoo.merge_settings("d3po", {"loss_options": {"beta": "0.2"}}, check_parts=False)
from rdpo_zoo.cli.plugins_cmd import options_help
options_help("loss"); options_help("penalty")
heavy = sorted(m for m in ("torch", "diffusers", "peft", "transformers", "triton") if m in sys.modules)
print("RESULT", json.dumps({"heavy": heavy, "seconds": time.perf_counter() - start}))
"""


def test_help_listing_and_options_import_no_torch():
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT], capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "RDPO_ZOO_PLUGINS": "builtin"},
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    assert data["heavy"] == [], data
    assert data["seconds"] < 5.0, data  # ~0.1 s on an idle core; generous for a loaded CI machine
