"""Tiny ContextDiff models with seeded random weights, for tests and (until a trained one ships) the default.

Two variants: pixel space (3 x 32 x 32 samples, no VAE) and latent (a tiny AutoencoderKL: 32 x 32 images,
4 x 16 x 16 latents). The adapter gets small random output weights instead of its zero init, so everything
downstream exercises the contextual path rather than plain DDIM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from contextdiff_ref.data.shapes import vocabulary
from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import ModelComponents, save_model_dir
from runtime.schedule import SchedulerConfig

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SHAPES_WORDS = vocabulary()  # every word of the shapes captions


def make_clip_tokenizer(words: Iterable[str] = SHAPES_WORDS, max_length: int = 16) -> CLIPTokenizer:
    """A CLIP-style byte-level BPE tokenizer: every byte is a token, and each of ``words`` is merged into one.

    BPE applies the lowest-ranked merge first, so one word's merges can derail another's ("re" from "red" splits
    "green" into g·re·e·n); merges continuing each word from wherever it got stuck are appended until every word
    encodes to one token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[tuple[str, str]] = []
    words = tuple(words)
    for _ in range(len(words) + 1):
        tokenizer = CLIPTokenizer(vocab={**vocab, BOS: len(vocab), EOS: len(vocab) + 1}, merges=merges, model_max_length=max_length)
        pieces = {word: tokenizer.tokenize(word) for word in words} if merges else {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
        stuck = {word: symbols for word, symbols in pieces.items() if len(symbols) > 1}
        if not stuck:
            return tokenizer
        for symbols in stuck.values():
            while len(symbols) > 1:  # merge left to right from the current split: ((r e) d</w>)
                if (symbols[0], symbols[1]) not in merges:
                    merges.append((symbols[0], symbols[1]))
                vocab.setdefault(symbols[0] + symbols[1], len(vocab))
                symbols = [symbols[0] + symbols[1]] + symbols[2:]
        vocab = {k: i for i, k in enumerate(vocab)}  # BOS/EOS stay last
    raise RuntimeError(f"could not build single-token merges for {sorted(stuck)}")


def build_tiny_components(*, latent: bool = False, seed: int = 0, prediction_type: str = "epsilon", vocab_size: int | None = None,
                          damped: bool = True) -> ModelComponents:  # fmt: skip
    """Seeded random tiny model (a few seconds on a CPU); the global torch RNG is left untouched.

    ``vocab_size``: rows of the text encoder's token embedding (default: the tokenizer's vocabulary). Rows past the
    tokenizer's are never looked up, but they are weights: 17.5 M rows make a 2.24 GB text encoder — a real graph past
    protobuf's 2 GiB limit that still exports and runs in seconds (tests/export/test_large_graphs.py).

    ``damped`` scales the UNet's output layer by 0.02: a random UNet at full output scale is chaotic under guidance
    (1e-7 differences between two correct implementations grow to percent in 20 steps), which the behaviour tests do
    not want; but a damped UNet barely moves the image, so image parity is checked on trained models or undamped."""
    tokenizer = make_clip_tokenizer()
    text_dim = 32
    channels = 4 if latent else 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size or len(tokenizer), hidden_size=text_dim, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))  # fmt: skip
        unet = UNet2DConditionModel(
            sample_size=16 if latent else 32, in_channels=channels, out_channels=channels, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_dim,
            attention_head_dim=8, norm_num_groups=8,
        )  # fmt: skip
        adapter = ContextAdapter(
            in_channels=channels, cross_attention_dim=text_dim, patch_size=2, hidden_dim=32, num_layers=1,
            num_heads=2, mlp_ratio=2,
        )  # fmt: skip
        if damped:
            with torch.no_grad():
                unet.conv_out.weight.mul_(0.02)
        torch.nn.init.normal_(adapter.proj_out.weight, std=0.05)
        torch.nn.init.normal_(adapter.proj_out.bias, std=0.05)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8, sample_size=32,
        ) if latent else None  # fmt: skip
    if latent:  # Stable-Diffusion-like schedule
        scheduler = SchedulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                                    steps_offset=1, clip_sample=False, prediction_type=prediction_type)
    else:
        scheduler = SchedulerConfig(beta_schedule="linear", clip_sample=True, prediction_type=prediction_type)
    for module in (text_encoder, unet, adapter, vae):
        if module is not None:
            module.eval().requires_grad_(False)
    return ModelComponents(tokenizer, text_encoder, unet, adapter, scheduler, vae, recommended_guidance_scale=None)


def write_tiny_model_dir(path: str | os.PathLike[str], *, latent: bool = False, seed: int = 0, prediction_type: str = "epsilon",
                         vocab_size: int | None = None, damped: bool = True) -> Path:
    """Build a tiny model (arguments: :func:`build_tiny_components`) and write it as a model directory (atomically)."""
    components = build_tiny_components(latent=latent, seed=seed, prediction_type=prediction_type, vocab_size=vocab_size, damped=damped)
    return save_model_dir(components, path)
