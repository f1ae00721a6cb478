"""Elastic ViT ops against AutoFormer's own formulas (microsoft/Cream AutoFormer/model), re-written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.ops.elastic import collect_active_state
from nas.ops.elastic_attention import (
    HEAD_DIM,
    ElasticFusedQKV,
    ElasticPatchEmbed,
    ElasticViTBlock,
    ElasticViTHead,
    PatchEmbed,
    RelativePosition2D,
    ViTBlock,
    ViTHead,
)


def _official_rel(table_v: torch.Tensor, table_h: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """`RelativePosition2D_super.forward(n, n)` [multihead_super.py]."""
    q = k = torch.arange(n - 1)
    side = int((n - 1) ** 0.5)
    v = (k[None, :] // side - q[:, None] // side).clamp(-length, length) + length + 1
    h = (k[None, :] % side - q[:, None] % side).clamp(-length, length) + length + 1
    return table_v[F.pad(v, (1, 0, 1, 0))] + table_h[F.pad(h, (1, 0, 1, 0))]


def _official_layer(block: ElasticViTBlock, x: torch.Tensor, heads: int, mlp: int) -> torch.Tensor:
    """`TransformerEncoderLayer.forward` with `AttentionSuper` (change_qkv, relative_position, pre-norm)."""
    b, n, e = x.shape
    q_dim, length = heads * HEAD_DIM, block.rel_pos_embed_k.length
    w = block.qkv.weight[:, :e]
    w = torch.cat([w[i : 3 * q_dim : 3, :] for i in range(3)], dim=0)  # qkv_super.sample_weight
    bias = block.qkv.bias[: 3 * q_dim]  # qkv_super.sample_bias
    y = F.layer_norm(x, (e,), block.attn_layer_norm.weight[:e], block.attn_layer_norm.bias[:e])
    qkv = F.linear(y, w, bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (q_dim // heads) ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale
    r_k = _official_rel(block.rel_pos_embed_k.embeddings_table_v, block.rel_pos_embed_k.embeddings_table_h, n, length)
    attn = attn + (q.permute(2, 0, 1, 3).reshape(n, heads * b, -1) @ r_k.transpose(2, 1)).transpose(1, 0).reshape(
        b, heads, n, n) * scale
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    r_v = _official_rel(block.rel_pos_embed_v.embeddings_table_v, block.rel_pos_embed_v.embeddings_table_h, n, length)
    attn_1 = attn.permute(2, 0, 1, 3).reshape(n, b * heads, -1)
    out = out + (attn_1 @ r_v).transpose(1, 0).reshape(b, heads, n, -1).transpose(2, 1).reshape(b, n, -1)
    x = x + F.linear(out, block.proj.weight[:e, :q_dim], block.proj.bias[:e])
    y = F.layer_norm(x, (e,), block.ffn_layer_norm.weight[:e], block.ffn_layer_norm.bias[:e])
    y = F.gelu(F.linear(y, block.fc1.weight[:mlp, :e], block.fc1.bias[:mlp]))
    return x + F.linear(y, block.fc2.weight[:e, :mlp], block.fc2.bias[:e])


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize(("grid", "length"), [(14, 14), (4, 4), (3, 2)])
def test_relative_position_matches_autoformer(grid, length):
    rel = RelativePosition2D(length, grid)
    n = grid * grid + 1
    expected = _official_rel(rel.embeddings_table_v, rel.embeddings_table_h, n, length)
    assert torch.equal(rel(), expected)
    assert rel.embeddings_table_v.shape == (2 * length + 2, HEAD_DIM)
    assert set(dict(rel.state_dict())) == {"embeddings_table_v", "embeddings_table_h"}  # indices are not state


@pytest.mark.parametrize(("embed", "heads", "mlp"), [(240, 4, 960), (192, 3, 576), (216, 4, 756), (216, 3, 648)])
def test_elastic_layer_is_autoformers_sampled_layer(embed, heads, mlp):
    torch.manual_seed(0)
    block = ElasticViTBlock(240, 4, 960, grid=3, rpe_length=3)
    _randomise(block)
    block.set_active(embed, heads, mlp)
    x = torch.randn(2, 10, embed)
    with torch.no_grad():
        out = block(x)
        assert torch.allclose(out, _official_layer(block, x, heads, mlp), rtol=1e-5, atol=1e-5)
        standalone = ViTBlock(embed, heads, mlp, grid=3, rpe_length=3)
        standalone.load_state_dict(collect_active_state(block), strict=True)
        assert torch.allclose(standalone(x), out, rtol=1e-5, atol=1e-5)


def test_qkv_rows_interleave_and_bias_is_blocked():
    qkv = ElasticFusedQKV(8, 2)
    with torch.no_grad():
        qkv.weight.copy_(torch.arange(3 * 2 * HEAD_DIM, dtype=torch.float32)[:, None].expand(-1, 8))
        qkv.bias.zero_()
    qkv.set_active(8, 1)
    out = qkv(torch.ones(1, 8))[0] / 8  # row index each output came from
    rows = out.long().tolist()
    assert rows[:HEAD_DIM] == list(range(0, 3 * HEAD_DIM, 3))  # q: rows 0, 3, 6, ...
    assert rows[HEAD_DIM : 2 * HEAD_DIM] == list(range(1, 3 * HEAD_DIM, 3))  # k
    assert rows[2 * HEAD_DIM :] == list(range(2, 3 * HEAD_DIM, 3))  # v
    state = qkv.active_state_dict()
    assert state["weight"].data_ptr() == qkv.weight.data_ptr() and state["bias"].shape == (3 * HEAD_DIM,)


def test_embedding_and_head_slices():
    torch.manual_seed(1)
    embed, head = ElasticPatchEmbed(24, 4, 2), ElasticViTHead(24, 5)
    _randomise(embed)
    _randomise(head, 1)
    embed.set_active(16)
    head.set_active(16)
    x = torch.randn(3, 3, 8, 8)
    small_embed, small_head = PatchEmbed(16, 4, 2), ViTHead(16, 5)
    small_embed.load_state_dict(collect_active_state(embed), strict=True)
    small_head.load_state_dict(collect_active_state(head), strict=True)
    with torch.no_grad():
        tokens = embed(x)
        assert tokens.shape == (3, 5, 16)
        assert torch.allclose(small_embed(x), tokens, atol=1e-6)
        assert torch.allclose(small_head(tokens), head(tokens), atol=1e-6)
        assert torch.equal(tokens[:, 0], embed.cls_token[0, :, :16].expand(3, -1) + embed.pos_embed[0, :1, :16])


def test_bad_settings_are_refused():
    block = ElasticViTBlock(64, 2, 128, grid=2, rpe_length=2)
    with pytest.raises(ValueError, match="heads 3"):
        block.set_active(64, 3, 128)
    with pytest.raises(ValueError, match="embed_dim 65"):
        block.set_active(65, 2, 128)
    block.set_active(32, 1, 64)
    with pytest.raises(ValueError, match="input has 64 features"):
        block(torch.zeros(1, 5, 64))
