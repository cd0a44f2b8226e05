"""The built-in decoder-only language model, nanoGPT style, in one file.

Read top to bottom: config, attention (separate `q`, `k`, `v`, `o` projections, where adapters and
manifolds attach), MLP, block, model. Shapes: B batch, T time, C = d_model, H query heads,
G key/value heads (grouped-query attention when G < H), D = C / H head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: = n_head (standard multihead attention)
    d_mlp: int | None = None  # None: 4 * d_model
    norm: str = "layernorm"  # layernorm | rmsnorm (parameter-free, as in docs/papers/knight.md §1)
    mlp: str = "gelu"  # gelu | relu2
    pos_emb: bool = True
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, elementwise_affine=False)
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias)


class CausalSelfAttention(nn.Module):
    """Multihead causal self-attention with separate q, k, v, o projections.

    Per head h the logits are X W_Q,h^T W_K,h X^T and the value path X W_V,h^T W_O,h^T: two
    rank-D products of factor pairs (docs/papers/knight.md §2), which is where the geometries
    attach.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, self.n_kv * cfg.head_dim, bias=cfg.bias)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def project_qkv(self, x: torch.Tensor):
        """(B, T, C) -> q (B, H, T, D), k and v (B, G, T, D)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        return q, k, v

    def attend(self, q, k, v) -> torch.Tensor:
        """Causal attention of q (B, H, T, D) over k, v (B, G, T, D) -> (B, T, H * D)."""
        B, H, T, D = q.shape
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_head,
        )
        return y.transpose(1, 2).reshape(B, T, H * D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.attend(*self.project_qkv(x)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = cfg.d_mlp or 4 * cfg.d_model
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.relu2 = cfg.mlp == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.down(h)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), CausalSelfAttention(cfg)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos_emb else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) int64 -> logits (B, T, V); with targets, (logits, mean cross-entropy)."""
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} > model.seq_len={self.cfg.seq_len}")
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 N (matmul weights) + 12 L T C (attention scores)."""
        cfg = self.cfg
        n = sum(p.numel() for n_, p in self.named_parameters() if "emb" not in n_)
        if cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        return 6 * n + 12 * cfg.n_layer * cfg.seq_len * cfg.d_model
