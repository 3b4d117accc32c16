"""`tiny-lm`: a small decoder-only transformer with a byte-level tokenizer and a KV cache.

Weights come from a fixed seed (no download, the same model everywhere); it
writes no sensible text, but it does the work of a language model: a prefill
over the prompt, then one decode step per token attending over its cached keys
and values. The cache is one preallocated tensor per layer with a slot per
sequence, so a decode step runs every running sequence at once whatever their
lengths (server/tinylm_engine.py schedules them).

Tokens: 0-255 are bytes, then BOS and EOS. Sampling is restricted to printable
ASCII and newline, so every response is valid UTF-8 text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BOS, EOS = 256, 257
VOCAB = 258
_ALLOWED = [10, *range(32, 127)]


def encode(text: bytes) -> list[int]:
    return [BOS, *text]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
        h = self.heads
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        return q, k, v

    def _out(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = att.shape
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(self.norm2(x))

    def prefill(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot: int
    ) -> torch.Tensor:
        q, k, v = self._split(x)
        t = x.shape[1]
        k_cache[slot, :, :t] = k[0]
        v_cache[slot, :, :t] = v[0]
        return self._out(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def decode(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        q, k, v = self._split(x)
        k_cache[slots, :, pos] = k[:, :, 0]
        v_cache[slots, :, pos] = v[:, :, 0]
        span = mask.shape[-1]
        keys, values = k_cache[slots, :, :span], v_cache[slots, :, :span]
        return self._out(x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


class TinyLM(nn.Module):
    """Embeddings, `layers` pre-norm blocks and an output head."""

    def __init__(self, dim: int = 128, layers: int = 4, heads: int = 4, context: int = 512) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.dim, self.heads, self.context = dim, heads, context
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self._layers: list[_Block] = [b for b in self.blocks if isinstance(b, _Block)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        # A fresh head's logits are nearly uniform; sharpened, the text has some
        # structure without repeating one byte (a head tied to the embeddings would).
        self.scale = 6.0

    def new_cache(self, slots: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, keys and values: [slots, heads, context, head_dim]."""
        shape = (slots, self.heads, self.context, self.dim // self.heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.blocks]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)) * self.scale

    def prefill(
        self, tokens: Sequence[int], cache: list[tuple[torch.Tensor, torch.Tensor]], slot: int
    ) -> torch.Tensor:
        """Run the prompt through, fill the slot's cache; logits [VOCAB] of its last position."""
        ids = torch.tensor([list(tokens)])
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))[None]
        for block, (kc, vc) in zip(self._layers, cache, strict=True):
            x = block.prefill(x, kc, vc, slot)
        return self._logits(x[0, -1])

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int],
        cache: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:  # fmt: skip
        """One step for several sequences: token i at position i in slot i; logits [B, VOCAB]."""
        pos = torch.tensor(list(positions))
        slot_t = torch.tensor(list(slots))
        x = (self.tok(torch.tensor(list(tokens))) + self.pos(pos))[:, None]
        span = int(pos.max()) + 1
        mask = (torch.arange(span)[None, :] <= pos[:, None])[:, None, None, :]
        for block, (kc, vc) in zip(self._layers, cache, strict=True):
            x = block.decode(x, kc, vc, slot_t, pos, mask)
        return self._logits(x[:, 0])


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """One token from one row of logits: greedy at temperature 0, else sampled."""
    allowed = logits[_ALLOWED]
    if temperature <= 0:
        return _ALLOWED[int(allowed.argmax())]
    probs = torch.softmax(allowed / temperature, dim=0)
    return _ALLOWED[int(torch.multinomial(probs, 1, generator=generator))]
