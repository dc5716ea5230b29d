"""Tiny, deterministic stand-ins for the reward models' checkpoints, shared by tests/test_reward_models.py and by the
cross-check against the official packages.

Every weight is a fixed function of its name and shape (no random generator, so any torch version makes the same
numbers), and the official key layouts (ImageReward's BLIP, open_clip's CLIP, the LAION MLP) are written out here as
name → shape tables. Run as a script in an environment that has the official packages, this module checks those
tables against the packages' own modules and prints the official scores of the tiny models: the golden values
pinned in tests/test_reward_models.py.

    # a separate environment (the packages cannot share ours; see docs/rewards.md):
    python -m venv /tmp/irenv && /tmp/irenv/bin/pip install torch==2.14.1 torchvision==0.29.1 image-reward==1.5 \\
        transformers==4.55.4 "huggingface_hub<1" diffusers==0.39.0 openai-clip "setuptools<81"
    /tmp/irenv/bin/pip install --no-deps open_clip_torch==2.24.0 ftfy
    /tmp/irenv/bin/python tests/reward_models_reference.py
    # and rdpo-zoo's rewards on the same models, in the same process (transformers 4.55 there):
    PYTHONPATH=. /tmp/irenv/bin/python tests/reward_models_reference.py --compare
"""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Dict, Tuple

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------ values


def _uniform(n: int, seed: int) -> np.ndarray:
    """``n`` values uniform in [0, 1): splitmix64 of (seed, index), exact integer arithmetic on any platform."""
    with np.errstate(over="ignore"):
        golden = np.uint64(0x9E3779B97F4A7C15)
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed) * golden + golden)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def det(name: str, shape, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """A fixed pseudo-random tensor for ``name``: ``offset + scale·u`` with ``u`` uniform of unit variance, a
    function of the name and the index only (no random generator: every torch and numpy makes the same numbers)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = (_uniform(n, zlib.crc32(name.encode())) * 2.0 - 1.0) * math.sqrt(3.0)
    return torch.from_numpy(offset + scale * u).reshape(tuple(shape)).to(torch.float32)


def fill_value(name: str, shape) -> torch.Tensor:
    """The value of the parameter ``name``: LayerNorm weights near 1, biases small, matrices ~ 1/√fan_in."""
    leaf = name.rsplit(".", 1)[-1]
    lower = name.lower()
    norm = any(t in lower for t in ("norm", "ln_", "ln_final", "ln_pre", "ln_post", "layernorm"))
    if norm and leaf in ("weight",) and len(shape) == 1:
        return det(name, shape, 0.1, 1.0)
    if leaf == "bias" or len(shape) == 1 and "embedding" not in lower and "cls" not in lower:
        return det(name, shape, 0.02)
    if leaf == "logit_scale" or name == "logit_scale":
        return torch.tensor(math.log(1 / 0.07), dtype=torch.float32).reshape(shape)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    if "embed" in lower or "cls_token" in lower or "class_embedding" in lower:
        return det(name, shape, 0.5)
    return det(name, shape, 1.7 / math.sqrt(max(fan_in, 1)))


def fill(module: torch.nn.Module) -> torch.nn.Module:
    """Set every parameter of ``module`` (not its buffers) to :func:`fill_value` of its name."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(fill_value(name, tuple(param.shape)))
    return module


def state_from_layout(layout: Dict[str, Tuple[int, ...]]) -> Dict[str, torch.Tensor]:
    return {name: fill_value(name, shape) for name, shape in layout.items()}


# ------------------------------------------------------------------------------------------------ images


def test_images() -> list:
    """Two uint8 RGB images ``[H, W, 3]``: 224×224 (no resize) and 256×320 (resize and crop)."""
    out = []
    for h, w, k in ((224, 224, 1.0), (256, 320, 2.3)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        r = 127 + 110 * np.sin(xx / (9.0 * k)) * np.cos(yy / 13.0)
        g = 127 + 100 * np.cos((xx + yy) / (17.0 * k))
        b = 127 + 90 * np.sin(np.hypot(xx - w / 3, yy - h / 2) / 11.0)
        out.append(np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8))
    return out


def as_tensor(images) -> list:
    """uint8 ``[H, W, 3]`` arrays as ``[1, 3, H, W]`` float tensors in [0, 1]."""
    return [torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0 for a in images]


# ------------------------------------------------------------------------------------------------ tokenizers

BERT_WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "square", "on", "the", "##s", "green", "circle",
              "painting", ",", "."]
PROMPTS = ["a photo of a cat", "a red square on the green circle, painting"]


def write_bert_vocab(folder: str) -> str:
    """A word-piece vocabulary: BERT's special tokens and a few words (bert-base-uncased's layout)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as handle:
        handle.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as handle:
        json.dump({"do_lower_case": True, "model_max_length": 512}, handle)
    return folder


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_vocab(folder: str) -> str:
    """A byte-level CLIP BPE vocabulary with no merges (every character a token): 514 tokens, the end-of-text
    token last (as in CLIP's, so that pooling at argmax(id) finds it)."""
    os.makedirs(folder, exist_ok=True)
    vocab = {}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(folder, "merges.txt"), "w") as handle:
        handle.write("#version: 0.2\n")
    return folder


CLIP_VOCAB = 514
#: token ids for the open_clip golden values: [SOT, ..., EOT, 0 ...] with EOT the largest id (open_clip pools there)
HPS_TOKENS = [[512, 40, 70, 100, 7, 513] + [0] * 71, [512, 3, 300, 250, 99, 60, 61, 62, 513] + [0] * 68]

# ------------------------------------------------------------------------------------------------ tiny configs

CLIP_TINY = dict(
    text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                     pad_token_id=513),
    vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       image_size=224, patch_size=32),
)

# head widths as ViT-H-14's (80 for images, 64 for text), so the default head counts of the conversion apply
OPEN_CLIP_TINY = dict(embed_dim=24, vision=dict(width=160, layers=2, heads=2, patch=32, image=224, mlp=320),
                      text=dict(width=128, layers=2, heads=2, context=77, vocab=CLIP_VOCAB, mlp=256))


def open_clip_layout(cfg=OPEN_CLIP_TINY) -> Dict[str, Tuple[int, ...]]:
    """open_clip ``CLIP``'s parameter names and shapes (ViT image tower, standard text tower)."""
    v, t, e = cfg["vision"], cfg["text"], cfg["embed_dim"]
    grid = v["image"] // v["patch"]
    out = {
        "positional_embedding": (t["context"], t["width"]),
        "text_projection": (t["width"], e),
        "logit_scale": (),
        "visual.class_embedding": (v["width"],),
        "visual.positional_embedding": (grid * grid + 1, v["width"]),
        "visual.proj": (v["width"], e),
        "visual.conv1.weight": (v["width"], 3, v["patch"], v["patch"]),
        "visual.ln_pre.weight": (v["width"],),
        "visual.ln_pre.bias": (v["width"],),
        "visual.ln_post.weight": (v["width"],),
        "visual.ln_post.bias": (v["width"],),
        "token_embedding.weight": (t["vocab"], t["width"]),
        "ln_final.weight": (t["width"],),
        "ln_final.bias": (t["width"],),
    }
    for prefix, c in (("visual.", v), ("", t)):
        w = c["width"]
        for i in range(c["layers"]):
            b = f"{prefix}transformer.resblocks.{i}."
            out.update({
                b + "ln_1.weight": (w,), b + "ln_1.bias": (w,),
                b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,),
                b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
                b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
                b + "mlp.c_fc.weight": (c["mlp"], w), b + "mlp.c_fc.bias": (c["mlp"],),
                b + "mlp.c_proj.weight": (w, c["mlp"]), b + "mlp.c_proj.bias": (w,),
            })
    return out


IMAGE_REWARD_TINY = dict(
    vision=dict(width=128, layers=2, heads=2, patch=16, image=224, mlp=256),  # head width 64, as BLIP's ViT-L
    med=dict(hidden_act="gelu", hidden_size=32, intermediate_size=37, layer_norm_eps=1e-12,
             max_position_embeddings=64, num_attention_heads=2, num_hidden_layers=2, pad_token_id=0,
             vocab_size=len(BERT_WORDS) + 5 + 2, type_vocab_size=2, initializer_range=0.02,
             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, add_cross_attention=True,
             architectures=["BertModel"], model_type="bert"),
)


def image_reward_layout(cfg=IMAGE_REWARD_TINY) -> Dict[str, Tuple[int, ...]]:
    """The parameters of the official ``ImageReward`` module (``blip.visual_encoder``: BLIP's ViT;
    ``blip.text_encoder``: med.py's BertModel without pooler; ``mlp.layers``), names and shapes."""
    v, m = cfg["vision"], cfg["med"]
    w, h, grid = v["width"], m["hidden_size"], v["image"] // v["patch"]
    out = {
        "blip.visual_encoder.cls_token": (1, 1, w),
        "blip.visual_encoder.pos_embed": (1, grid * grid + 1, w),
        "blip.visual_encoder.patch_embed.proj.weight": (w, 3, v["patch"], v["patch"]),
        "blip.visual_encoder.patch_embed.proj.bias": (w,),
        "blip.visual_encoder.norm.weight": (w,),
        "blip.visual_encoder.norm.bias": (w,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (m["vocab_size"], h),
        "blip.text_encoder.embeddings.position_embeddings.weight": (m["max_position_embeddings"], h),
        "blip.text_encoder.embeddings.LayerNorm.weight": (h,),
        "blip.text_encoder.embeddings.LayerNorm.bias": (h,),
    }
    for i in range(v["layers"]):
        b = f"blip.visual_encoder.blocks.{i}."
        out.update({
            b + "norm1.weight": (w,), b + "norm1.bias": (w,),
            b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
            b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
            b + "norm2.weight": (w,), b + "norm2.bias": (w,),
            b + "mlp.fc1.weight": (v["mlp"], w), b + "mlp.fc1.bias": (v["mlp"],),
            b + "mlp.fc2.weight": (w, v["mlp"]), b + "mlp.fc2.bias": (w,),
        })
    for i in range(m["num_hidden_layers"]):
        b = f"blip.text_encoder.encoder.layer.{i}."
        for att, kv in (("attention", h), ("crossattention", w)):
            out.update({
                f"{b}{att}.self.query.weight": (h, h), f"{b}{att}.self.query.bias": (h,),
                f"{b}{att}.self.key.weight": (h, kv), f"{b}{att}.self.key.bias": (h,),
                f"{b}{att}.self.value.weight": (h, kv), f"{b}{att}.self.value.bias": (h,),
                f"{b}{att}.output.dense.weight": (h, h), f"{b}{att}.output.dense.bias": (h,),
                f"{b}{att}.output.LayerNorm.weight": (h,), f"{b}{att}.output.LayerNorm.bias": (h,),
            })
        out.update({
            b + "intermediate.dense.weight": (m["intermediate_size"], h), b + "intermediate.dense.bias": (m["intermediate_size"],),
            b + "output.dense.weight": (h, m["intermediate_size"]), b + "output.dense.bias": (h,),
            b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,),
        })
    for i, (a, b) in zip((0, 2, 4, 6, 7), ((h, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        out[f"mlp.layers.{i}.weight"] = (b, a)
        out[f"mlp.layers.{i}.bias"] = (b,)
    return out


def aesthetic_mlp_layout(input_size: int = 768) -> Dict[str, Tuple[int, ...]]:
    out = {}
    for i, (a, b) in zip((0, 2, 4, 6, 7), ((input_size, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        out[f"layers.{i}.weight"] = (b, a)
        out[f"layers.{i}.bias"] = (b,)
    return out


def tiny_clip_model(projection_dim: int = 768):
    """transformers' ``CLIPModel`` at the tiny config, every parameter filled by name."""
    from transformers import CLIPConfig, CLIPModel

    return fill(CLIPModel(CLIPConfig(projection_dim=projection_dim, **CLIP_TINY))).eval()


# ------------------------------------------------------------------------------------------------ the cross-check


def _official_golden() -> dict:  # pragma: no cover -- runs in the side environment only
    """The official packages' scores of the tiny models (see the module docstring)."""
    import tempfile

    from PIL import Image

    torch.set_num_threads(1)
    images = test_images()
    pil = [Image.fromarray(a) for a in images]
    out = {}

    # LAION aesthetic, as D3PO's / DDPO's aesthetic_scorer: uint8 tensors through CLIPProcessor, CLIP, MLP
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    clip = tiny_clip_model()
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    holder = torch.nn.Module()
    holder.layers = mlp
    holder.load_state_dict(state_from_layout(aesthetic_mlp_layout()))
    holder.eval()
    processor = CLIPImageProcessor()
    scores = []
    with torch.no_grad():
        for a in images:
            x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0
            x = (x * 255).round().clamp(0, 255).to(torch.uint8)
            inputs = processor(images=x, return_tensors="pt")
            embed = clip.get_image_features(**inputs)
            embed = embed / torch.linalg.vector_norm(embed, dim=-1, keepdim=True)
            scores.append(float(holder.layers(embed).squeeze(1)))
    out["aesthetic"] = scores

    # PickScore, as its model card: CLIPProcessor (image processor + tokenizer), logit_scale.exp() * cosine
    tmp = tempfile.mkdtemp()
    tok = CLIPTokenizer.from_pretrained(write_clip_vocab(os.path.join(tmp, "clip_tok")))
    pick = CLIPProcessor(image_processor=processor, tokenizer=tok)
    clip_pick = tiny_clip_model(projection_dim=16)
    scores = []
    with torch.no_grad():
        for image, prompt in zip(pil, PROMPTS):
            image_inputs = pick(images=image, return_tensors="pt")
            text_inputs = pick(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
            image_embs = clip_pick.get_image_features(**image_inputs)
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = clip_pick.get_text_features(**text_inputs)
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores.append(float((clip_pick.logit_scale.exp() * (text_embs @ image_embs.T))[0, 0]))
    out["pickscore"] = scores
    out["pickscore_ids"] = [pick(text=p, padding=True, truncation=True, max_length=77)["input_ids"] for p in PROMPTS]

    # HPSv2 through open_clip: the model, its eval transform, raw cosine of normalised features
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    v, t = OPEN_CLIP_TINY["vision"], OPEN_CLIP_TINY["text"]
    model = open_clip.model.CLIP(
        OPEN_CLIP_TINY["embed_dim"],
        CLIPVisionCfg(layers=v["layers"], width=v["width"], head_width=v["width"] // v["heads"], patch_size=v["patch"],
                      image_size=v["image"], mlp_ratio=v["mlp"] / v["width"]),
        CLIPTextCfg(context_length=t["context"], vocab_size=t["vocab"], width=t["width"], heads=t["heads"],
                    layers=t["layers"], mlp_ratio=t["mlp"] / t["width"]),
    )
    layout = {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert layout == open_clip_layout(), sorted(set(layout.items()) ^ set(open_clip_layout().items()))
    model.load_state_dict(state_from_layout(open_clip_layout()), strict=True)
    model.eval()
    transform = open_clip.image_transform(224, is_train=False)
    scores = []
    with torch.no_grad():
        for image, ids in zip(pil, HPS_TOKENS):
            feats_i = model.encode_image(transform(image)[None], normalize=True)
            feats_t = model.encode_text(torch.tensor([ids]), normalize=True)
            scores.append(float((feats_i @ feats_t.T)[0, 0]))
    out["hpsv2"] = scores

    # ImageReward: the package's own class and score(), with the tiny BLIP parts
    from ImageReward.ImageReward import MLP, ImageReward as Official, _transform
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    cfg = IMAGE_REWARD_TINY
    official = Official.__new__(Official)
    torch.nn.Module.__init__(official)
    official.device = "cpu"
    official.blip = torch.nn.Module()
    official.blip.visual_encoder = VisionTransformer(img_size=cfg["vision"]["image"], patch_size=cfg["vision"]["patch"],
                                                     embed_dim=cfg["vision"]["width"], depth=cfg["vision"]["layers"],
                                                     num_heads=cfg["vision"]["heads"],
                                                     mlp_ratio=cfg["vision"]["mlp"] / cfg["vision"]["width"])
    med_path = os.path.join(tmp, "med_config.json")
    with open(med_path, "w") as handle:
        json.dump(dict(cfg["med"], encoder_width=cfg["med"]["hidden_size"]), handle)
    med = BertConfig.from_json_file(med_path)
    med.encoder_width = cfg["vision"]["width"]
    official.blip.text_encoder = BertModel(config=med, add_pooling_layer=False)
    tokenizer = BertTokenizer.from_pretrained(write_bert_vocab(os.path.join(tmp, "bert")))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    official.blip.tokenizer = tokenizer
    official.preprocess = _transform(224)
    official.mlp = MLP(cfg["med"]["hidden_size"])
    official.mean, official.std = 0.16717362830052426, 1.0333394966054072
    params = {k: tuple(p.shape) for k, p in official.named_parameters()}
    assert params == image_reward_layout(), sorted(set(params.items()) ^ set(image_reward_layout().items()))
    missing, unexpected = official.load_state_dict(state_from_layout(image_reward_layout()), strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    official.eval()
    with torch.no_grad():
        out["image_reward"] = [float(official.score(p, image)) for image, p in zip(pil, PROMPTS)]
    out["image_reward_ids"] = [tokenizer(p, padding="max_length", truncation=True, max_length=35)["input_ids"]
                               for p in PROMPTS]
    return out


def _rdpo_zoo_scores() -> dict:  # pragma: no cover -- the same tiny models through rdpo-zoo's rewards
    import tempfile

    from transformers import CLIPTokenizer

    from rdpo_zoo.reward_models.aesthetic import Aesthetic, AestheticMLP
    from rdpo_zoo.reward_models.hpsv2 import HPSv2
    from rdpo_zoo.reward_models.image_reward import ImageReward, load_blip_tokenizer
    from rdpo_zoo.reward_models.pickscore import PickScore

    images = as_tensor(test_images())
    tmp = tempfile.mkdtemp()
    clip_tok = CLIPTokenizer.from_pretrained(write_clip_vocab(os.path.join(tmp, "clip")))
    mlp = AestheticMLP()
    mlp.load_state_dict(state_from_layout(aesthetic_mlp_layout()))
    rewards = {
        "aesthetic": Aesthetic.from_modules(tiny_clip_model(), mlp),
        "pickscore": PickScore.from_modules(tiny_clip_model(projection_dim=16), clip_tok),
        "image_reward": ImageReward.from_state_dict(state_from_layout(image_reward_layout()),
                                                    load_blip_tokenizer(write_bert_vocab(os.path.join(tmp, "bert"))),
                                                    med_config=IMAGE_REWARD_TINY["med"]),
    }
    out = {name: [float(r(x, [p])) for x, p in zip(images, PROMPTS)] for name, r in rewards.items()}
    hps = HPSv2.from_open_clip_state_dict(state_from_layout(open_clip_layout()), clip_tok)
    out["hpsv2"] = [float(hps.model.score_tokens(x, torch.tensor([ids]))) for x, ids in zip(images, HPS_TOKENS)]
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    official = _official_golden()
    print(json.dumps(official, indent=1))
    if "--compare" in sys.argv:  # rdpo-zoo importable here too (PYTHONPATH=.): compare in one process
        ours = _rdpo_zoo_scores()
        worst = max(abs(a - b) / max(abs(b), 1e-3) for k in ours for a, b in zip(ours[k], official[k]))
        print(json.dumps({"rdpo_zoo": ours, "worst_relative_difference": worst}, indent=1))
        assert worst < 2e-5, worst
