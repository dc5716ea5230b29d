"""Built-in presets: each method of the RDPO paper's comparison as data (DESIGN.md, "Methods as presets").

Every setting's source is in the comment beside it: the paper, or the public code where the paper is silent or
the two disagree (BASELINES.md has the code's lines). Settings not fixed here take the defaults of
``rdpo_zoo.parts.SETTINGS``. All presets use ``reduction="mean"``: the public D3PO/DDPO/SPO/Diffusion-DPO code
averages log-likelihoods over the latent elements, and their β (and DDPO's clip) assume it.

Names of parts the rollout issue adds (estimators ``final-order``, ``x0-hat``, ``delta-q``, ``advantage``;
DDPO's per-sample loss ``ppo-clip``) are written here already; until they are registered, merging such a preset
with ``check_parts=True`` fails with the usual unknown-part error.
"""

from __future__ import annotations

import rdpo_zoo
from rdpo_zoo import Preset

# The RDPO paper's own setting (Sec. 5), shared by the presets that its authors re-implemented (TailorPO(-G), RDPO*,
# RDPO): SD 1.5, DDIM η = 1, T = 20, fine-tuning at t = 20, 16, 12, 8, 4; "other hyper-parameters from D3PO".
_RDPO_PAPER = dict(
    scheduler="ddim",  # RDPO Sec. 5: DDIM
    eta=1.0,  # RDPO Sec. 5: η = 1
    num_steps=20,  # RDPO Sec. 5: T = 20
    train_timesteps="20,16,12,8,4",  # RDPO Sec. 5: fine-tuning at t = 20, 16, 12, 8, 4
    guidance_scale=5.0,  # "other hyper-parameters from D3PO": D3PO config/base.py sample.guidance_scale 5.0
    learning_rate=3e-5,  # "other hyper-parameters from D3PO": D3PO config/base.py train.learning_rate 3e-5
    reduction="mean",  # D3PO's ddim_step_with_logprob (the code RDPO builds on) averages over C·H·W
)

PRESETS = [
    Preset(
        "ddpo",
        "DDPO: single trajectories, per-prompt normalised advantage, PPO-clip on the step log-ratio",
        settings=dict(
            rollout="single",  # kvablack/ddpo-pytorch scripts/train.py: one trajectory per prompt sample
            estimator="advantage",  # train.py: (r − mean)/(std + 1e-8) per prompt, clamped to ±5 (adv_clip_max 5)
            loss="ppo-clip",  # train.py: mean(max(−A·ratio, −A·clamp(ratio, 1 − 1e-4, 1 + 1e-4)))
            loss_options={"clip_range": 1e-4},  # config/base.py train.clip_range 1e-4
            scheduler="ddim",  # ddim_with_logprob.py
            eta=1.0,  # config/base.py sample.eta 1.0
            num_steps=50,  # config/base.py sample.num_steps 50
            guidance_scale=5.0,  # config/base.py sample.guidance_scale 5.0
            train_timesteps="all",  # config/base.py train.timestep_fraction 1.0
            learning_rate=3e-4,  # config/base.py train.learning_rate 3e-4
            gradient_guidance=False,  # single trajectories: no pair to guide
            reduction="mean",  # ddim_with_logprob.py: log_prob.mean over all but the batch dimension
            optimiser_step="trajectory",  # train.py: gradient_accumulation_steps × num_train_timesteps, one step per
            # trajectory's trained timesteps (config/base.py train.batch_size 1, gradient_accumulation_steps 1)
        ),
    ),
    Preset(
        "d3po",
        "D3PO: two trajectories from one x_T, labelled by the final images, DPO at every step with the ratio clamp",
        settings=dict(
            rollout="two-trajectories",  # yk7333/d3po train_d3po.py l.297-352: same prompt, same x_T
            estimator="final-order",  # train_d3po.py l.183-198 compare(): the final images' rewards label every step
            loss="d3po",  # train_d3po.py l.597-599: −log σ(β·log r_w − β·log r_l)
            loss_options={
                "beta": 0.1,  # config/base.py train.beta 0.1
                "clamp_eps": 0.1,  # config/base.py train.eps 0.1: ratio clamped to [0.9, 1.1]
            },
            scheduler="ddim",  # ddim_with_logprob.py (DDPO's)
            eta=1.0,  # config/base.py sample.eta 1.0
            num_steps=20,  # config/base.py sample.num_steps 20
            guidance_scale=5.0,  # config/base.py sample.guidance_scale 5.0
            train_timesteps="all",  # config/base.py train.timestep_fraction 1.0: every one of the 20 steps
            learning_rate=3e-5,  # config/base.py train.learning_rate 3e-5
            gradient_guidance=False,  # D3PO: two independent trajectories, no guidance
            reduction="mean",  # ddim_with_logprob.py: mean over C·H·W
            optimiser_step="trajectory",  # train_d3po.py: Accelerator(gradient_accumulation_steps = grad_accum ×
            # num_train_timesteps), train.batch_size 1: one optimiser step per pair of trajectories
        ),
    ),
    Preset(
        "diffusion-dpo",
        "Diffusion-DPO: preferred and dispreferred images noised with the same t and ε, DPO with β = 5000",
        settings=dict(
            rollout="noised-pairs",  # SalesforceAIResearch/DiffusionDPO train.py l.1053-1055: same t, same ε;
            # the rollout sets a = 0, b = 1, σ := 1 so that dpo is exactly its objective (DESIGN.md)
            estimator="final-order",  # the pairs' labels (Pick-a-Pic label_0, or --choice_model) on final images
            loss="dpo",  # train.py: −log σ(−½β((m_w − m_l) − (ref_w − ref_l))); the ½ is s = 1/(2σ²)
            loss_options={"beta": 5000.0},  # train.py --beta_dpo 5000 (argparse default and all three launchers)
            scheduler=None,  # no sampler: the model's training noise schedule
            eta=None,
            guidance_scale=1.0,  # train.py: unet(x_t, t, c), the conditional output, no guidance
            train_timesteps="uniform",  # train.py: t ~ U{0..999}
            learning_rate=2.048e-5,  # launchers: lr 1e-8 × --scale_lr (grad_accum 128 × batch 1 × 16 GPUs = 2048)
            gradient_guidance=False,  # noised pairs: no rollout to guide
            reduction="mean",  # train.py: (unet(x_t) − ε)².mean(dim=[1, 2, 3])
        ),
    ),
    Preset(
        "spo",
        "SPO: k candidates from one x_t scored by a step-aware model, continue from a random one; DPO with clamp",
        settings=dict(
            rollout="branch-random",  # RockeyCoss/SPO multi_sample_pipeline.py: next x_t drawn by torch.randint
            num_candidates=4,  # configs (SD1.5 experiment) num_sample_each_step 4 (basic_config.py has 2)
            branch_start=4,  # basic_config.py divert_start_step 4
            estimator="x0-hat",  # the step-aware preference model scores x̂0 with the candidate's timestep (a reward
            # with accepts_timestep = True; the estimator passes t to it)
            loss="dpo",  # train_spo.py l.584-586: −log σ(β·log r_w − β·log r_l)
            loss_options={
                "beta": 10.0,  # basic_config.py beta 10.0
                "clamp_eps": 0.1,  # basic_config.py eps 0.1
            },
            threshold=0.3,  # basic_config.py threshold 0.3 (SDXL config 0.4)
            gap_rule="softmax",  # multi_sample_pipeline.py: a pair is kept when softmax([s_w, s_l])[0] − [1] > threshold,
            # i.e. tanh((s_w − s_l)/2) > threshold (the gap in units of the reward's scale)
            scheduler="ddim",  # ddim_with_logprob.py (DDPO's)
            eta=1.0,  # basic_config.py eta 1.0
            num_steps=20,  # basic_config.py num_steps 20
            guidance_scale=5.0,  # basic_config.py guidance 5.0
            train_timesteps="all",  # every step from branch_start on yields pairs (train_spo.py pools them all)
            learning_rate=6e-5,  # basic_config.py lr 6e-5 (SDXL 1e-5)
            gradient_guidance=False,  # SPO: candidates ranked by its step-aware preference model, not guided
            reduction="mean",  # ddim_with_logprob.py: mean over C·H·W
        ),
    ),
    Preset(
        "tailorpo",
        "TailorPO: two children from one x_t ranked by the reward of their x̂0, continue from the winner; DPO",
        settings=dict(
            rollout="branch-winner",  # TailorPO (arXiv 2502.01667; no public code): children of the same x_t
            num_candidates=2,  # TailorPO: a pair per step
            estimator="x0-hat",  # TailorPO: step-wise reward r(decode(x̂0)) of each child
            loss="dpo",  # TailorPO: D3PO/SPO form −log σ(β(r_w − r_l)); no clamp in DESIGN.md's table
            loss_options={"beta": 0.1},  # RDPO Sec. 5: "other hyper-parameters from D3PO": β = 0.1
            gradient_guidance=False,  # TailorPO without -G
            **_RDPO_PAPER,
        ),
    ),
    Preset(
        "tailorpo-g",
        "TailorPO-G: TailorPO plus gradient guidance that widens each pair's reward gap",
        settings=dict(
            rollout="branch-winner",
            num_candidates=2,
            estimator="x0-hat",
            loss="dpo",
            loss_options={"beta": 0.1},  # RDPO Sec. 5: "other hyper-parameters from D3PO"
            gradient_guidance=True,  # TailorPO-G: x^w_{t-1} moved along ∇ reward(x̂0) (needs a differentiable reward)
            **_RDPO_PAPER,
        ),
    ),
    Preset(
        "rdpo-star",
        "RDPO*: TailorPO-G with the ΔQ step reward (RDPO Eq. 6)",
        settings=dict(
            rollout="branch-winner",  # RDPO Algorithm 1: two children from x_t, continue from x^w_{t-1}
            num_candidates=2,  # RDPO Algorithm 1
            estimator="delta-q",  # RDPO Eq. 6: r*_t = change of r(x̂0) over the step
            loss="dpo",  # RDPO Sec. 4: RDPO* = TailorPO-G implementation + ΔQ reward, DPO loss
            loss_options={"beta": 0.1},  # RDPO Sec. 5: "other hyper-parameters from D3PO"
            gradient_guidance=True,  # RDPO* is built on their TailorPO-G implementation
            **_RDPO_PAPER,
        ),
    ),
    Preset(
        "rdpo",
        "RDPO: RDPO* plus the Ψ penalty that keeps the dispreferred log-ratio down (RDPO Eq. 9–10)",
        settings=dict(
            rollout="branch-winner",  # RDPO Algorithm 1
            num_candidates=2,  # RDPO Algorithm 1
            estimator="delta-q",  # RDPO Eq. 6
            loss="dpo",  # RDPO Eq. 9: −log σ(δ − λΨ), δ = β(r_w − r_l) (loss dpo + penalty psi = loss rdpo)
            loss_options={"beta": 0.1},  # RDPO Sec. 5: "other hyper-parameters from D3PO"
            penalty="psi",  # RDPO Eq. 10, with the intended sign (docs/maths.md; psi-literal is the printed one)
            penalty_options={
                # RDPO Sec. 5 prints λ "1, 00" (its ablation tries 10, 100, 10 000), at the paper's scale. Ours is
                # the embedded world's sweep (DESIGN.md): λ = β = 0.1; at λ = 100 with the mean reduction Ψ's push is
                # 1000× DPO's and erased the guided gain (docs/rollout.md; the claims study pins the paper's 100).
                "lambda": 0.1,
                "placement": "inside",  # RDPO Eq. 9: Ψ inside the sigmoid
            },
            gradient_guidance=True,  # RDPO = RDPO* + Ψ
            **_RDPO_PAPER,
        ),
    ),
    Preset(
        "flow-grpo",
        "Flow-GRPO: G trajectories per prompt, group-normalised advantages, PPO-clip on the step ratio + β·KL",
        settings=dict(
            rollout="single",  # yifan123/flow_grpo scripts/train_sd3.py: independent trajectories, each prompt
            # repeated config.sample.num_image_per_prompt times (config/grpo.py: 24; 16 for some rewards). Budget, not
            # method: G and the trained steps below are cut so that the run (40 iterations × 8 prompts and the
            # evaluation) takes ≤ 5 min on 2 CPU cores with the embedded model (docs/grpo.md); --group-size 24
            # --train-timesteps 10,9,8,7,6,5,4,3,2 restores the public budget. G = 4: config/grpo.py's Wan 2.1 config
            group_size=4,
            estimator="group-advantage",  # flow_grpo/stat_tracking.py PerPromptStatTracker (np.std + 1e-4), cleared
            # every epoch; config.sample.global_std False by default
            loss="grpo",  # train_sd3.py: mean(max(−A·ratio, −A·clamp(ratio, 1 ± clip_range))) + β·kl_loss
            loss_options={
                "clip_range": 1e-4,  # config/base.py train.clip_range 1e-4
                "adv_clip_max": 5.0,  # config/base.py train.adv_clip_max 5
                "kl_beta": 0.04,  # config/grpo.py train.beta 0.04 (0.01 for some rewards; 0 in base.py)
                "kl": "public",  # train_sd3.py: ÷ 2·std_dev_t², |dt| times the exact KL (docs/grpo.md): β transfers
            },
            scheduler="ddim",  # on SD models: DDPO's DDIM sampler with a log-prob; on flow models pass the public
            # sampler, --scheduler flow-sde --eta 0.7 (DDIM refuses a flow-matching schedule)
            eta=1.0,  # DDIM η = 1 (DDPO); Flow-GRPO's noise_level 0.7 is the flow-sde's η, which has no DDIM meaning
            num_steps=10,  # config/base.py sample.num_steps 10 (training rollouts; evaluation uses 40)
            guidance_scale=4.5,  # config/base.py sample.guidance_scale 4.5
            # train_sd3.py trains the first int(num_steps·train.timestep_fraction) steps; public 0.99 (the first 9),
            # here 0.3 (the first 3, the noisiest: budget, above; Flow-GRPO-Fast trains sde_window_size 3 steps in
            # sde_window_range (0, num_steps//2), the first half)
            train_timesteps="10,9,8",
            learning_rate=3e-4,  # config/base.py train.learning_rate 3e-4
            gradient_guidance=False,  # single trajectories: no pair to guide
            reduction="mean",  # sd3_sde_with_logprob.py: log_prob.mean over all but the batch dimension
        ),
    ),
]


@rdpo_zoo.hookimpl
def register_presets(register):
    for preset in PRESETS:
        register(preset)
