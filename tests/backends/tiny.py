"""Tiny random dual-tower checkpoints built with each library's own API (no download)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TEXTS = ["a photo of a cat", "A Dog, running!", "", "the quick brown fox jumps over the lazy dog " * 3,
         "ünïcode and emoji 🙂"]


def open_clip_folder(root: Path, *, siglip_bias: bool = False) -> Path:
    """An open_clip ``local-dir`` folder: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder = root / ("open_clip_siglip" if siglip_bias else "open_clip_tiny")
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    if siglip_bias:
        model_cfg["init_logit_bias"] = -10.0
    cfg = {"model_cfg": model_cfg,
           "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic",
                              "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _char_vocab(prefix_marker: str = "", suffix_marker: str = "") -> dict[str, int]:
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + ",.!?'"
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        if suffix_marker:
            vocab.setdefault(c + suffix_marker, len(vocab))
    if prefix_marker:
        vocab.setdefault(prefix_marker, len(vocab))
    return vocab


def hf_folder(root: Path, family: str) -> Path:
    """A tiny random transformers CLIP / SigLIP / SigLIP2 folder with tokenizer and image processor."""
    import transformers as tf

    folder = root / f"hf_{family}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "patch_size": 8}
    if family == "clip":
        specials = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        vocab = {**specials, **{k: v + 2 for k, v in _char_vocab(suffix_marker="</w>").items()}}
        tok = tf.CLIPTokenizer(vocab=vocab, merges=[])
        text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                "pad_token_id": 1}
        config = tf.CLIPConfig(text_config=text, vision_config={**vision, "image_size": 32}, projection_dim=24)
        model = tf.CLIPModel(config)
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family == "siglip":
        import sentencepiece as spm

        corpus = folder / "corpus.txt"
        corpus.write_text("\n".join(["a photo of a cat", "a dog running in the park", "the quick brown fox",
                                     "jumps over the lazy dog", "unicode and emoji"] * 20))
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=30,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       minloglevel=2)
        corpus.unlink()
        (folder / "spiece.vocab").unlink()
        tok = tf.SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)
        text = {"vocab_size": 30, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "eos_token_id": 1}
        config = tf.SiglipConfig(text_config=text, vision_config={**vision, "image_size": 32})
        model = tf.SiglipModel(config)
        proc = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    elif family == "siglip2":
        specials = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
        vocab = {**specials, **{k: v + 5 for k, v in _char_vocab(prefix_marker="▁").items()}}
        tok = tf.Siglip2Tokenizer(vocab=vocab, merges=[])
        text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0, "eos_token_id": 1,
                "bos_token_id": 2}
        config = tf.Siglip2Config(text_config=text, vision_config={**vision, "num_patches": 16})
        model = tf.Siglip2Model(config)
        proc = tf.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    else:
        raise ValueError(family)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder
