"""Character-level language model: a stacked LSTM over character embeddings, a linear head
over the vocabulary (the course's text-generation lecture; Karpathy's char-rnn).

The vocabulary is part of the model config (`vocab`, the characters in order), so a checkpoint
describes itself: a deployment rebuilds the encoder from it. Index 0 is reserved for every
character outside the vocabulary; the model learns how often such characters occur but never
generates one. The default vocabulary covers the default text (CPython's pydoc topics):
tab, newline, printable ASCII and the nine other characters it uses (quotes, dashes, ...).

Loss: cross-entropy of the next character, in nats per character. Validation reports bits per
character (`val_bits_per_char` = nats / ln 2) over the held-out end of the text.
Sampling: softmax(logits / T), optionally only the k most likely characters, seeded.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from genray.data.text import TextDataConfig, load_text
from genray.families.base import Family, seeded_generator, StepMetrics

UNKNOWN = 0  # the index of every character outside the vocabulary
DEFAULT_VOCAB = "\t\n" + "".join(chr(c) for c in range(32, 127)) + "‘’“”–—…°ß"
START = "\n"  # what an empty prompt is conditioned on: the model's "start of a paragraph"


class CharLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab: str = Field(DEFAULT_VOCAB, min_length=1, max_length=100_000)
    embed: int = Field(32, ge=1, le=4096)
    hidden: int = Field(128, ge=1, le=8192)
    layers: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # between LSTM layers
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)  # LSTMs' gradients spike; clip their global norm

    @field_validator("vocab")
    @classmethod
    def _distinct(cls, value: str) -> str:
        repeated = sorted(c for c, k in Counter(value).items() if k > 1)
        if repeated:
            raise ValueError(f"vocab characters must be distinct; repeated: {repeated!r}")
        if START not in value:
            raise ValueError("vocab must contain the newline character (an empty prompt starts from it)")
        return value


class CharLSTM(nn.Module):
    def __init__(self, cfg: CharLMConfig):
        super().__init__()
        classes = len(cfg.vocab) + 1  # + UNKNOWN
        self.embed = nn.Embedding(classes, cfg.embed)
        self.lstm = nn.LSTM(cfg.embed, cfg.hidden, cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, classes)

    def forward(self, idx: torch.Tensor, state=None):
        """idx (B, T) -> logits (B, T, V + 1) of the next character, and the LSTM state (h, c)."""
        out, state = self.lstm(self.embed(idx), state)
        return self.head(out), state


def check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r} "
                         f"(1 samples the model's own distribution; < 1 is more conservative)")


def next_char_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Logits (..., V + 1) -> sampling probabilities: softmax(logits / T) over the k most likely
    characters (all when top_k is None), never the UNKNOWN index."""
    check_temperature(temperature)
    logits = logits.float() / temperature
    logits[..., UNKNOWN] = -math.inf
    if top_k is not None:
        known = logits.shape[-1] - 1
        if not 1 <= top_k:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < known:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest
            logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.softmax(logits, dim=-1)


class CharLMFamily(Family):
    name = "charlm"
    Config = CharLMConfig
    DataConfig = TextDataConfig
    metric = "val_bits_per_char"
    mode = "min"

    @classmethod
    def load_data(cls, data_cfg: TextDataConfig):
        return load_text(data_cfg)

    def __init__(self, cfg, device="cpu", spec=None):
        super().__init__(cfg, device, spec)
        # Code point -> index by binary search over the sorted vocabulary (any code point range).
        order = sorted(range(len(self.cfg.vocab)), key=lambda i: ord(self.cfg.vocab[i]))
        self.sorted_codes = torch.tensor([ord(self.cfg.vocab[i]) for i in order], device=self.device)
        self.sorted_index = torch.tensor(order, device=self.device) + 1  # 0 is UNKNOWN
        self.index_of = {ch: i + 1 for i, ch in enumerate(self.cfg.vocab)}

    def build(self) -> dict[str, nn.Module]:
        return {"lstm": CharLSTM(self.cfg)}

    def make_optimizers(self):
        return {"lstm": torch.optim.Adam(self.nets["lstm"].parameters(), lr=self.cfg.lr)}

    @property
    def classes(self) -> int:
        return len(self.cfg.vocab) + 1

    def to_index(self, codes: torch.Tensor) -> torch.Tensor:
        """Code points (any shape) -> vocabulary indices, UNKNOWN for characters outside it."""
        pos = torch.searchsorted(self.sorted_codes, codes).clamp(max=len(self.sorted_codes) - 1)
        return torch.where(self.sorted_codes[pos] == codes, self.sorted_index[pos], UNKNOWN)

    def train_step(self, batch, epoch: float) -> StepMetrics:
        x, y = (self.to_index(t) for t in batch)  # (B, T) each
        logits, _ = self.train_nets["lstm"](x)
        loss = F.cross_entropy(logits.reshape(-1, self.classes), y.reshape(-1))  # nats per character
        self.optimizer_step(loss, "lstm", clip_norm=self.cfg.grad_clip)
        return {"loss": loss.detach(), "bits_per_char": loss.detach() / math.log(2)}

    @torch.no_grad()
    def eval_batch(self, batch) -> dict[str, float]:
        x, y = (self.to_index(t) for t in batch)
        logits, _ = self.nets["lstm"](x)
        nats = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
        # Windows have equal length, so the mean of per-window means is the per-character mean.
        return {
            "val_bits_per_char": (nats.mean(1) / math.log(2)).sum().item(),
            "val_unknown_frac": (y == UNKNOWN).float().mean(1).sum().item(),  # vocab coverage
        }

    # --- inference (used by the deployment; plain values in, plain values out) --------------
    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index_of))

    def encode(self, text: str) -> torch.Tensor:
        unknown = self.unknown_chars(text)
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {describe_chars(unknown)}")
        return torch.tensor([self.index_of[c] for c in text], dtype=torch.long)

    def decode(self, idx) -> str:
        return "".join(self.cfg.vocab[i - 1] for i in idx)

    @torch.no_grad()
    def generate(self, prompt: str, n: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """`n` characters that follow `prompt`, drawn one at a time from softmax(logits / T) over
        the top_k most likely; the same seed gives the same text."""
        check_temperature(temperature)
        if top_k is not None and not 1 <= top_k <= len(self.cfg.vocab):
            raise ValueError(f"top_k must be between 1 and the vocabulary size {len(self.cfg.vocab)}, got {top_k}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        idx = self.encode(prompt or START).to(self.device)
        gen = seeded_generator(seed)
        lstm = self.nets["lstm"]
        logits, state = lstm(idx[None])  # reads the whole prompt at once
        out: list[int] = []
        for _ in range(n):
            probs = next_char_probs(logits[0, -1].cpu(), temperature, top_k)  # (V + 1,)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
            out.append(nxt)
            logits, state = lstm(torch.tensor([[nxt]], device=self.device), state)
        return self.decode(out)

    @torch.no_grad()
    def bits_per_char(self, text: str) -> float:
        """Bits per character the model needs for `text` (each character given the ones before)."""
        idx = self.encode(START + text).to(self.device)
        logits, _ = self.nets["lstm"](idx[None, :-1])
        return F.cross_entropy(logits[0], idx[1:]).item() / math.log(2)


def describe_chars(chars: list[str], most: int = 10) -> str:
    """['ж', '\\x07'] -> "'ж' (U+0436), '\\x07' (U+0007)"."""
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:most])
    return shown + (f" and {len(chars) - most} more" if len(chars) > most else "")
