"""Encoder and decoder sizes at paper scale (spec/mamp-and-data.md A.9)."""

from __future__ import annotations

import torch

from skelcli.methods.base import DatasetInfo
from skelcli.methods.decoder import DecoderConfig, MaskedDecoder
from skelcli.methods.mamp import MAMP, MAMPSettings
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder, count_parameters


def test_paper_encoder_has_6336000_parameters():
    assert count_parameters(SkeletonEncoder(EncoderConfig())) == 6_336_000


def test_paper_decoder_sizes():
    assert count_parameters(MaskedDecoder(256, 30, 25, 12, DecoderConfig(depth=3))) == 2_453_004
    assert count_parameters(MaskedDecoder(256, 30, 25, 12, DecoderConfig(depth=5))) == 4_032_524


def test_mamp_model_is_encoder_plus_decoder_and_drops_decoder_downstream():
    model = MAMP(MAMPSettings(), DatasetInfo("ntu60", 60))
    assert count_parameters(model) == 6_336_000 + 2_453_004
    assert model.pretraining_only == ("decoder",)
    assert model.downstream_encoder() is model.encoder


def test_decoder_restores_token_order():
    """With zero-initialised blocks bypassed, a visible token's prediction depends on its own encoding."""
    torch.manual_seed(0)
    dec = MaskedDecoder(8, 2, 3, 5, DecoderConfig(dim=8, depth=1, heads=2))
    latent = torch.randn(1, 2, 8)
    ids_restore = torch.tensor([[3, 0, 4, 1, 5, 2]])  # shuffled order [1, 3, 5, 0, 2, 4]: keep tokens 1 and 3
    out = dec(latent, ids_restore)
    assert out.shape == (1, 6, 5)
    # swapping the two visible encodings swaps which positions they land on (check via decoder_embed)
    x = torch.cat([dec.decoder_embed(latent), dec.mask_token.expand(1, 4, 8)], dim=1)
    placed = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, 8))
    assert torch.allclose(placed[0, 1], dec.decoder_embed(latent)[0, 0])
    assert torch.allclose(placed[0, 3], dec.decoder_embed(latent)[0, 1])
    assert torch.allclose(placed[0, 0], dec.mask_token[0, 0])
