"""The plugin contract: every hook a plugin may implement. This module is the plugin author's reference.

A plugin is a module (or any object) with functions marked ``@rdpo_zoo.hookimpl`` whose names are the hooks
below. It reaches the engine through an entry point in the ``rdpo_zoo`` group of its distribution::

    [project.entry-points.rdpo_zoo]
    my_plugin = "my_plugin"          # the module that holds the hook implementations

or in-process, for notebooks and tests, with ``rdpo_zoo.register(module_or_object)``. The built-in parts are
plugins of the ``rdpo-zoo`` distribution, loaded by exactly this path.

Every hook receives one argument, ``register``: call it once per part you add, with a part of the hook's kind
(``rdpo_zoo.LossPart`` in ``register_losses`` and so on). A hook may register any number of parts, or none.
Rules for every hook:

- **Be cheap.** Hooks run whenever the registry is first used, including for ``rdpo-zoo --help`` and
  ``rdpo-zoo plugins``. Do not import torch, diffusers, peft or transformers at the top of the module that holds
  your hooks, and do not build anything in a hook: give each part a lazy ``factory`` (a
  ``"package.module:attribute"`` string, or a function that imports inside), and declare its options as
  ``rdpo_zoo.Option`` data.
- **Names are unique per kind** across every loaded plugin. Two plugins registering the same name make that
  name unusable, with an error naming both distributions (``RDPO_ZOO_PLUGINS`` chooses which plugins load).
- **Errors stay yours.** A plugin that fails to import, or a hook that raises, is reported by name with its error
  (``rdpo-zoo plugins`` lists it as broken), none of its parts are registered, and the rest of the engine works.

Which plugins load is set by the ``RDPO_ZOO_PLUGINS`` environment variable (see :mod:`rdpo_zoo.registry`).
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "ENTRY_POINT_GROUP", "hookspec", "hookimpl", "HOOKS"]

#: pluggy's project name, and the entry-point group that plugins advertise themselves in.
PROJECT = "rdpo_zoo"
ENTRY_POINT_GROUP = "rdpo_zoo"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementations with this: ``@rdpo_zoo.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: hook name -> the kind of part it registers
HOOKS = {
    "register_estimators": "estimator",
    "register_losses": "loss",
    "register_penalties": "penalty",
    "register_rewards": "reward",
    "register_models": "model",
    "register_model_families": "model-family",
    "register_step_families": "step-family",
    "register_presets": "preset",
}


@hookspec
def register_estimators(register):
    """Add estimators: what decides which branch of a step pair is preferred.

    Call ``register(rdpo_zoo.EstimatorPart(name, description, factory, options))`` for each. The built-in ones
    (``final-order``, ``x0-hat``, ``delta-q``) label pairs by the reward of the final images, of the children's
    one-step x̂0 predictions, or of the change of that prediction over the step (RDPO's ΔQ).

    ``factory(**options)`` is called with every declared option, typed, and returns an
    ``rdpo_zoo.estimators.Estimator``: class attributes say what the rollout must measure (``needs_parent``,
    ``needs_children``, ``needs_lookahead``, ``needs_final``), ``values(measurements) -> [B, k]`` scores the
    candidates (higher is preferred) and ``keep`` may drop whole groups. An ``Estimator`` subclass whose
    ``__init__`` takes the options is the usual factory.
    """


@hookspec
def register_losses(register):
    """Add pairwise preference losses.

    Call ``register(rdpo_zoo.LossPart(name, description, factory, options, fused=None, penalty=None))``.

    ``factory`` names an ``rdpo_zoo.losses.PairwiseLoss`` (or a zero-argument function returning one): a name,
    a one-line description and the formula ``fn(inputs: rdpo_zoo.LossInputs) -> Tensor[P]``, the per-pair loss.
    ``inputs`` carries ``margin`` = β(r_w − r_l) − λ·penalty (the penalty is the engine's, not yours), the
    log-ratios ``r_w``/``r_l`` (after the optional ratio clamp), ``beta``, and ``options``: the loss's own
    options, typed. β (``beta``) and the ratio clamp (``clamp_eps``) are options of every loss; do not declare
    them. The batch loss is the mean over pairs. Write the formula with differentiable torch operations on
    ``[P]`` tensors; autograd does the rest.

    ``fused``: the name of a fused kernel form in ``rdpo_zoo.kernels`` (built-in losses only); a third-party loss
    leaves it ``None`` and runs in PyTorch. ``penalty``: the name of a penalty the loss always includes
    (``rdpo`` is ``dpo`` with ``psi``).
    """


@hookspec
def register_penalties(register):
    """Add penalties, weighted by λ and subtracted from any loss's margin (or added to the loss).

    Call ``register(rdpo_zoo.PenaltyPart(name, description, factory, options, fused=None, default_lambda=1.0))``.
    ``factory`` names an ``rdpo_zoo.losses.Penalty`` (or a zero-argument function returning one) whose
    ``fn(r_w, r_l) -> Tensor[P]`` sees the unclamped log-ratios. ``lambda`` (default ``default_lambda``) and
    ``placement`` (``inside`` the margin, or ``outside``, added to the loss) are options of every penalty.
    """


@hookspec
def register_rewards(register):
    """Add rewards: scores of decoded images given their prompts, higher is better.

    Call ``register(rdpo_zoo.RewardPart(name, description, factory, options))``. ``factory(**options)`` returns
    an ``rdpo_zoo.rewards.Reward`` (a ``Reward`` subclass whose ``__init__`` takes the options is the usual
    factory). Implement ``score(images [B, 3, H, W] in [0, 1], prompts, timesteps=None) -> [B]``; set
    ``differentiable = True`` and implement ``score_differentiable`` when the reward has a gradient (gradient
    guidance needs it); set ``scale`` to the size of a meaningful difference between two images' rewards.
    Load weights in the factory or on first use, never in the hook.
    """


@hookspec
def register_models(register):
    """Add models: how to build a diffusers pipeline to align.

    Call ``register(rdpo_zoo.ModelPart(name, description, factory, options))``. ``factory(**options)`` returns a
    diffusers pipeline (UNet, text encoder(s), VAE, scheduler). Do not download unless the user named a hub
    model; when weights are missing offline, raise an error that names the model id and how to get it.
    """


@hookspec
def register_model_families(register):
    """Add model families: how one kind of pipeline is driven (``rdpo_zoo.families``).

    Call ``register(rdpo_zoo.ModelFamilyPart(name, description, factory))``; ``factory`` names an
    ``rdpo_zoo.families.ModelFamily`` subclass: its ``denoiser`` (the module LoRA goes on), ``encode`` (prompts to
    conditioning), ``denoise`` (one network call), ``decode``/``encode_images``, ``latent_shape``,
    ``lora_target_modules``, ``save_lora``/``load_lora`` and ``matches(pipe)`` (used when a model part names no
    family). Built-ins: ``sd`` and ``sdxl``.
    """


@hookspec
def register_step_families(register):
    """Add step families: how a sampler's steps are read (``rdpo_zoo.steps``), chosen by ``--scheduler NAME``.

    Call ``register(rdpo_zoo.StepFamilyPart(name, description, factory, options))``; ``factory`` names an
    ``rdpo_zoo.steps.StepFamily`` subclass, built as ``cls(scheduler_config, num_steps, eta, **options)``: its
    ``timesteps`` (int or float values for the denoiser), ``coefficients(index)`` (a, b, σ),
    ``x0_coefficients(index)``, ``flow_time_step(index)`` and the training process (``sample_train_timesteps``,
    ``add_noise``, ``training_target``). Built-ins: ``ddim`` and ``ddpm``.
    """


@hookspec
def register_presets(register):
    """Add presets: a method as data, a named combination of settings.

    Call ``register(rdpo_zoo.Preset(name, description, settings={...}))``. The settings' names and types are
    ``rdpo_zoo.parts.SETTINGS`` (rollout, estimator, loss, loss_options, penalty, penalty_options, reduction,
    scheduler, eta, num_steps, guidance_scale, train_timesteps, threshold, ...). Parts are named, not imported,
    so a preset may use parts of other plugins; explicit flags override a preset (``rdpo_zoo.merge_settings``).
    """
