"""Text for the character-level language model: a text, split once, cut into windows.

The default text ships with CPython: the pydoc topics (`pydoc_data.topics`, about 465k
characters of the language reference), joined in key order, so it needs no download. Any
text file or s3:// object is read the same way (`source: /path/to/book.txt`).

The first (1 - val_fraction) of the text trains, the rest validates: a contiguous split, so
no validation character is ever inside a training window. Training windows overlap (stride <
seq_len); validation windows tile the held-out text without overlap, so the mean over them is
the bits per character of that text. Items are Unicode code points, (x, y) = (window[:-1],
window[1:]), each (seq_len,) int64; the model maps code points to its own vocabulary.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from genray.storage import Location, ObjectNotFound
from genray.data.images import DataError

PYDOC = "pydoc"


class TextDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "pydoc" (CPython's bundled pydoc_data topics) or a text file path / s3:// URI.
    source: str = PYDOC
    encoding: str = "utf-8"
    seq_len: int = Field(64, ge=2, le=8192)  # characters a window predicts
    # Start-to-start distance of training windows; None: seq_len // 2 (each character is seen twice).
    stride: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # At most this many training / validation windows (spread evenly over the text): smoke tests.
    limit: int | None = Field(None, ge=1)
    val_limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _stride_fits(self) -> "TextDataConfig":
        if self.stride is not None and self.stride > self.seq_len:
            raise ValueError(f"stride must be <= seq_len = {self.seq_len} (windows must cover the text), "
                             f"got {self.stride}")
        return self

    @property
    def train_stride(self) -> int:
        return self.stride or max(1, self.seq_len // 2)


def read_text(source: str, encoding: str = "utf-8") -> str:
    """The whole text of `source`: "pydoc", a local file or an s3:// object."""
    if source == PYDOC:
        from pydoc_data import topics

        return "".join(topics.topics[key] for key in sorted(topics.topics))
    try:
        raw = Location(source).read_bytes()
    except ObjectNotFound as err:
        raise DataError(f"data.source: no text at {source} ({err}); give a text file, an s3:// object "
                        f"or {PYDOC!r}") from None
    except IsADirectoryError:
        raise DataError(f"data.source: {source} is a folder; give a text file") from None
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError) as err:
        raise DataError(f"data.source: {source} is not {encoding} text ({err}); set data.encoding") from None


def code_points(text: str) -> torch.Tensor:
    """Text -> (len,) int64 Unicode code points."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))


class TextWindows(Dataset):
    """Windows of seq_len + 1 characters of `codes`, starting every `stride` characters."""

    def __init__(self, codes: torch.Tensor, seq_len: int, stride: int, limit: int | None = None):
        self.codes, self.seq_len = codes, seq_len
        count = (len(codes) - seq_len - 1) // stride + 1
        if count < 1:
            raise DataError(f"a text of {len(codes)} characters is too short for one window of "
                            f"seq_len + 1 = {seq_len + 1}; lower data.seq_len or data.val_fraction")
        starts = torch.arange(count) * stride
        if limit is not None and limit < count:  # spread over the whole text, not its beginning
            starts = starts[torch.linspace(0, count - 1, limit).round().long()]
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        window = self.codes[s : s + self.seq_len + 1]
        return window[:-1], window[1:]


def split_codes(codes: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(round(len(codes) * (1.0 - val_fraction)))
    return codes[:cut], codes[cut:]


def load_text(cfg: TextDataConfig) -> tuple[TextWindows, TextWindows]:
    """(train, val) windows of the configured text."""
    text = read_text(cfg.source, cfg.encoding)
    if not text:
        raise DataError(f"data.source: {cfg.source} is empty")
    train, val = split_codes(code_points(text), cfg.val_fraction)
    return (TextWindows(train, cfg.seq_len, cfg.train_stride, cfg.limit),
            TextWindows(val, cfg.seq_len, cfg.seq_len, cfg.val_limit))


def unigram_entropy(text: str) -> float:
    """Entropy of the text's character frequencies, in bits per character: what a model that
    knows only how often each character occurs (no context) needs on average."""
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def unigram_cross_entropy(train: str, val: str) -> float:
    """Bits per character of `val` under `train`'s character frequencies (add-one smoothing over
    the characters of both): the honest held-out unigram baseline."""
    counts = Counter(train)
    alphabet = set(train) | set(val)
    total = len(train) + len(alphabet)
    val_counts = Counter(val)
    return -sum(n * math.log2((counts.get(ch, 0) + 1) / total) for ch, n in val_counts.items()) / len(val)
