"""Learned reward models of the RDPO paper and its baselines, as rdpo-zoo rewards (see docs/rewards.md):

- ``aesthetic``: the LAION improved aesthetic predictor on CLIP ViT-L/14 (DDPO, D3PO, RDPO) -- :mod:`.aesthetic`;
- ``pickscore``: PickScore, CLIP-H -- :mod:`.pickscore`;
- ``hpsv2``: Human Preference Score v2 / v2.1, open_clip ViT-H-14 weights run by transformers' CLIP -- :mod:`.hpsv2`;
- ``image-reward`` and ``vp-score``: ImageReward's BLIP architecture built from transformers' BLIP parts, loading
  the official checkpoints natively -- :mod:`.image_reward`.

Importing this package (and :mod:`.weights`, :mod:`.sources`) imports no torch: the plugin's availability checks
use them. The reward modules import torch and transformers.
"""
