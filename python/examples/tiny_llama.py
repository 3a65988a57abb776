"""A tiny Llama-shaped transformer (RMSNorm, rotary positions, grouped-query
attention, SwiGLU) with seeded random weights, and a plain unpaged reference
decoder for it. Optionally some layers attend over a sliding window only
(Gemma-2/3, gpt-oss, Mistral style): sliding_window tokens back, the
query's own included.

Numerics are part of the model's definition, so that a paged engine and the
reference can be compared token for token:
  * everything is computed in float64, one token at a time (vector-matrix
    products of the same shapes in every caller), so a token's activations do
    not depend on which other tokens share its batch;
  * K and V are stored in float16 (as kvrt's cache holds them): the model
    rounds them before attention, so a value read back from the cache equals
    the one the reference keeps.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Config:
    vocab: int = 96
    dim: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    ffn: int = 128
    rope_theta: float = 10000.0
    eps: float = 1e-5
    sliding_window: int = 0       # 0: every layer attends to the whole context
    window_layers: tuple = ()     # the layers that attend over the window only

    def window_of(self, layer):
        """Tokens a query of `layer` reads back (itself included); 0: all."""
        return self.sliding_window if layer in self.window_layers else 0


class TinyLlama:
    def __init__(self, config=Config(), seed=0, device="cpu"):
        self.cfg = c = config
        self.device = device
        g = torch.Generator().manual_seed(seed)

        def w(*shape, scale=1.0):
            t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale / shape[0] ** 0.5
            return t.to(device)

        self.embed = w(c.vocab, c.dim, scale=c.vocab ** 0.5)
        self.blocks = []
        for _ in range(c.layers):
            self.blocks.append(dict(
                attn_norm=torch.ones(c.dim, dtype=torch.float64, device=device),
                wq=w(c.dim, c.heads * c.head_dim), wk=w(c.dim, c.kv_heads * c.head_dim),
                wv=w(c.dim, c.kv_heads * c.head_dim), wo=w(c.heads * c.head_dim, c.dim),
                mlp_norm=torch.ones(c.dim, dtype=torch.float64, device=device),
                w_gate=w(c.dim, c.ffn), w_up=w(c.dim, c.ffn), w_down=w(c.ffn, c.dim)))
        self.final_norm = torch.ones(c.dim, dtype=torch.float64, device=device)
        # A sharp head makes greedy choices decisive (no near-ties).
        self.lm_head = w(c.dim, c.vocab, scale=4.0)
        half = c.head_dim // 2
        self.inv_freq = 1.0 / c.rope_theta ** (
            torch.arange(half, dtype=torch.float64, device=device) / half)

    # ---- per-token pieces, shared by the paged engine and the reference ----
    def rms_norm(self, x, weight):
        return x * torch.rsqrt((x * x).mean() + self.cfg.eps) * weight

    def rope(self, x, pos):
        """Rotary embedding of x [n_heads, head_dim] at position pos."""
        half = self.cfg.head_dim // 2
        angle = pos * self.inv_freq
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = x[:, :half], x[:, half:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=1)

    def embed_token(self, token):
        return self.embed[int(token)].clone()

    def qkv(self, layer, x, pos):
        """Query [heads, hd] (float64), key and value [kv_heads, hd] (float16,
        as stored in the KV cache)."""
        c, blk = self.cfg, self.blocks[layer]
        h = self.rms_norm(x, blk["attn_norm"])
        q = self.rope((h @ blk["wq"]).view(c.heads, c.head_dim), pos)
        k = self.rope((h @ blk["wk"]).view(c.kv_heads, c.head_dim), pos)
        v = (h @ blk["wv"]).view(c.kv_heads, c.head_dim)
        return q, k.to(torch.float16), v.to(torch.float16)

    def attend(self, q, keys, values):
        """Attention of one query over keys/values [n, kv_heads, hd] (the
        token's own position last)."""
        c = self.cfg
        group = c.heads // c.kv_heads
        k = keys.to(torch.float64).repeat_interleave(group, dim=1)    # [n, heads, hd]
        v = values.to(torch.float64).repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q, k) / c.head_dim ** 0.5
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("hn,nhd->hd", weights, v).reshape(-1)

    def finish_layer(self, layer, x, attn):
        blk = self.blocks[layer]
        x = x + attn @ blk["wo"]
        h = self.rms_norm(x, blk["mlp_norm"])
        gate = torch.nn.functional.silu(h @ blk["w_gate"])
        return x + (gate * (h @ blk["w_up"])) @ blk["w_down"]

    def next_token(self, x):
        return int(torch.argmax(self.rms_norm(x, self.final_norm) @ self.lm_head))


def reference_generate(model, prompt, max_new_tokens, stop_tokens=(), windows=True):
    """Greedy decoding with a plain contiguous KV cache: no pages, no
    batching, no cache sharing. Returns the output tokens. windows=False
    lets every layer read the whole context (what the sliding window
    changes)."""
    c = model.cfg
    keys = [torch.empty(0, c.kv_heads, c.head_dim, dtype=torch.float16, device=model.device)
            for _ in range(c.layers)]
    values = [k.clone() for k in keys]
    tokens = list(prompt)
    output = []
    pos = 0
    while True:
        x = model.embed_token(tokens[pos])
        for layer in range(c.layers):
            q, k, v = model.qkv(layer, x, pos)
            keys[layer] = torch.cat([keys[layer], k[None]])
            values[layer] = torch.cat([values[layer], v[None]])
            w = c.window_of(layer) if windows else 0
            lo = max(0, pos + 1 - w) if w else 0
            x = model.finish_layer(layer, x, model.attend(q, keys[layer][lo:],
                                                          values[layer][lo:]))
        pos += 1
        if pos < len(tokens):
            continue
        token = model.next_token(x)
        output.append(token)
        tokens.append(token)
        if len(output) == max_new_tokens or token in stop_tokens:
            return output
