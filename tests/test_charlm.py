"""The character-level LSTM: text loading and windows, the vocabulary, sampling (temperature,
top-k, seeds), the unigram baselines, learning a text it can learn, and the train -> export ->
Serve path with its request checks."""

import math

import pytest
import requests
import torch
from pydantic import ValidationError

from conftest import train_in_process

from genray.config import ConfigError, build_config
from genray.data import DataError
from genray.data.text import (TextDataConfig, TextWindows, code_points, load_text, read_text, unigram_cross_entropy,
                              unigram_entropy)
from genray.deploy.charlm import GenerateRequest, generate_text
from genray.deploy.common import BadRequest
from genray.families import get_family
from genray.families.charlm import UNKNOWN, CharLMConfig, next_char_probs

TEXT = "hello world. " * 80  # 1040 characters; a 13-character period an LSTM can learn


def small_lm(**overrides):
    return get_family("charlm")(CharLMConfig(embed=8, hidden=32, layers=1, **overrides))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# --- data ----------------------------------------------------------------------------------

def test_windows_of_a_text_file_overlap_and_shift_by_one(text_file):
    train, val = load_text(TextDataConfig(source=str(text_file), seq_len=16, stride=8, val_fraction=0.25))
    assert len(train.codes) == 780 and len(val.codes) == 260  # a contiguous split
    assert len(train) == (780 - 17) // 8 + 1 and len(val) == (260 - 17) // 16 + 1  # val windows tile
    x, y = train[1]
    assert x.shape == y.shape == (16,) and x.dtype == torch.int64
    assert "".join(map(chr, x.tolist())) == TEXT[8:24]  # the second window starts a stride later
    assert torch.equal(x[1:], y[:-1])  # y is x shifted by one character
    limited, _ = load_text(TextDataConfig(source=str(text_file), seq_len=16, limit=5))
    assert len(limited) == 5
    assert limited.starts[0] == 0 and limited.starts[-1] > 600  # spread over the whole text


def test_the_default_text_ships_with_python():
    text = read_text("pydoc")
    assert 400_000 < len(text) < 600_000
    assert read_text("pydoc") == text  # joined in a fixed order
    cfg = build_config("charlm")
    train, val = get_family("charlm").load_data(cfg.data)
    assert len(val) * cfg.data.seq_len <= 0.1 * len(text) + cfg.data.seq_len
    # The default vocabulary covers the default text: nothing is "unknown".
    family = get_family("charlm")(cfg.model)
    assert not family.unknown_chars(text)


def test_bad_text_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="no text at"):
        read_text(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not utf-8 text"):
        read_text(str(tmp_path / "latin1.txt"))
    assert read_text(str(tmp_path / "latin1.txt"), "latin-1") == "caf\xe9"
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(DataError, match="too short"):
        load_text(TextDataConfig(source=str(tmp_path / "short.txt"), seq_len=8))
    with pytest.raises(ConfigError, match="stride must be <= seq_len"):
        build_config("charlm", overrides=["data.seq_len=8", "data.stride=9"])
    with pytest.raises(ValidationError, match="distinct"):
        CharLMConfig(vocab="\nabca")


def test_unigram_entropy_is_exact():
    assert unigram_entropy("abab") == pytest.approx(1.0)
    assert unigram_entropy("aaaa") == 0.0
    assert unigram_entropy("abcd" * 3) == pytest.approx(2.0)
    # Held out under add-one smoothed frequencies: "aab" over the alphabet {a, b} -> p(a) = 3/5, p(b) = 2/5.
    assert unigram_cross_entropy("aab", "ab") == pytest.approx(-(math.log2(3 / 5) + math.log2(2 / 5)) / 2)


# --- vocabulary and sampling -----------------------------------------------------------------

def test_code_points_map_to_the_vocabulary_and_unknown_to_zero():
    family = small_lm(vocab="\nab…")
    idx = family.to_index(code_points("ab\n…zж"))
    assert idx.tolist() == [2, 3, 1, 4, UNKNOWN, UNKNOWN]
    assert family.decode([2, 3, 4]) == "ab…"
    assert family.unknown_chars("abzzж") == ["z", "ж"]
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\)"):
        family.encode("az")


def test_temperature_must_be_positive_and_finite():
    logits = torch.randn(5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            next_char_probs(logits, bad)
        with pytest.raises(ValueError, match="temperature"):
            small_lm().generate("a", 3, temperature=bad)
    with pytest.raises(ValidationError, match="temperature"):
        GenerateRequest(temperature=0)


def test_probabilities_follow_the_temperature_and_top_k():
    logits = torch.tensor([5.0, 1.0, 2.0, 0.0, 3.0])  # index 0 is UNKNOWN: never sampled
    p = next_char_probs(logits, 1.0)
    assert p[0] == 0 and p.sum().item() == pytest.approx(1.0)
    expected = torch.softmax(torch.tensor([1.0, 2.0, 0.0, 3.0]), 0)
    assert torch.allclose(p[1:], expected)
    assert torch.allclose(next_char_probs(logits, 2.0)[1:], torch.softmax(torch.tensor([1.0, 2.0, 0.0, 3.0]) / 2, 0))
    assert next_char_probs(logits, 1e-3)[4].item() == pytest.approx(1.0)  # T -> 0: the argmax
    top2 = next_char_probs(logits, 1.0, top_k=2)
    assert (top2 > 0).nonzero().flatten().tolist() == [2, 4]
    assert top2[4] / top2[2] == pytest.approx(math.e)  # renormalised among the two, ratios kept
    assert torch.equal(next_char_probs(logits, 1.0, top_k=4), p)  # k >= vocabulary: no cut


def test_sampling_is_deterministic_under_a_seed_and_respects_top_k():
    torch.manual_seed(0)
    family = small_lm()
    family.eval()
    a = family.generate("The ", 60, temperature=1.0, seed=7)
    assert len(a) == 60 and a == family.generate("The ", 60, temperature=1.0, seed=7)
    assert a != family.generate("The ", 60, temperature=1.0, seed=8)
    assert len(family.generate("", 5, seed=0)) == 5  # an empty prompt starts from a newline
    # top_k=1 is greedy: the same text whatever the seed or temperature.
    greedy = family.generate("The ", 30, top_k=1, seed=1)
    assert greedy == family.generate("The ", 30, top_k=1, seed=2, temperature=5.0)
    with pytest.raises(ValueError, match="top_k"):
        family.generate("a", 3, top_k=10_000)


def test_learns_a_periodic_text_far_below_its_unigram_entropy(text_file):
    """Bits per character on held-out text fall from about log2(V) to far below the unigram
    entropy (3.0 bits) once the LSTM has learned the 13-character period."""
    torch.manual_seed(0)
    family = small_lm(lr=1e-2)
    train, val = load_text(TextDataConfig(source=str(text_file), seq_len=24, stride=4, val_fraction=0.25))
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)

    def val_bpc():
        family.eval()
        batch = next(iter(torch.utils.data.DataLoader(val, batch_size=len(val))))
        out = family.eval_batch(batch)["val_bits_per_char"] / len(val)
        family.train()
        return out

    before = val_bpc()
    for _ in range(12):
        for batch in loader:
            family.train_step(batch, 0.0)
    after = val_bpc()
    entropy = unigram_entropy(TEXT)
    assert before > 6.0 and after < 0.5 * entropy, (before, after, entropy)
    family.eval()
    assert family.generate("hello w", 18, top_k=1, seed=0) == "orld. hello world."


# --- the deployment's math, and the whole path on Ray ----------------------------------------

def test_generate_request_checks_without_http():
    family = small_lm(vocab="\nabc ")
    family.eval()
    out = generate_text(family, GenerateRequest(prompt="ab", n=5, seed=3))
    assert len(out["text"]) == 5 and set(out["text"]) <= set("\nabc ")
    with pytest.raises(BadRequest, match=r"prompt: characters not in the model's vocabulary: 'x' \(U\+0078\)"):
        generate_text(family, GenerateRequest(prompt="abx", n=5))
    with pytest.raises(BadRequest, match="top_k: must be <= 5"):
        generate_text(family, GenerateRequest(prompt="ab", n=5, top_k=6))
    for bad in ({"n": 0}, {"n": 10**6}, {"prompt": "a" * 10**5}, {"temperature": float("inf")}, {"top_k": 0}):
        with pytest.raises(ValidationError):
            GenerateRequest(**bad)


# Trained in-process: the run folder is the one Ray Train would fill, and the Ray Train path of
# in-memory data is the other families' (tests/test_deploy.py, test_reliability.py, test_tune.py).
@pytest.mark.ray
def test_trains_exports_and_serves(serve_url, tmp_path, text_file):
    from ray import serve

    from genray.deploy import build_app
    from genray.store import export

    cfg = build_config("charlm", overrides=[
        f"storage={tmp_path / 'runs'}", "name=lm", "train.epochs=2", "train.batch_size=16",
        f"data.source={text_file}", "data.seq_len=24", "data.stride=6", "model.hidden=32", "model.layers=1",
        "model.lr=0.01", "train.quality_every=0",
    ])
    run = train_in_process(cfg)
    bpc = [h["val_bits_per_char"] for h in run.history()]
    assert len(bpc) == 2 and bpc[1] < bpc[0] < math.log2(len(cfg.model.vocab) + 1) + 1
    model = export(run, tmp_path / "models" / "charlm")

    app = build_app({"model": str(model)})
    app = app._bound_deployment.options(ray_actor_options={"num_cpus": 0}).bind(*app._bound_deployment.init_args)
    serve.run(app, name="charlm-test", route_prefix="/charlm-test")
    url = f"{serve_url}/charlm-test"
    try:
        info = requests.get(url + "/", timeout=60).json()
        assert info["family"] == "charlm" and info["metrics"]["val_bits_per_char"] == pytest.approx(min(bpc))
        body = {"prompt": "hello ", "n": 40, "temperature": 0.7, "top_k": 10, "seed": 4}
        first = requests.post(url + "/generate", json=body, timeout=60)
        assert first.status_code == 200, first.text
        assert len(first.json()["text"]) == 40
        assert requests.post(url + "/generate", json=body, timeout=60).json()["text"] == first.json()["text"]
        unknown = requests.post(url + "/generate", json={"prompt": "the ЖУК§"}, timeout=60)
        assert unknown.status_code == 422 and "'Ж' (U+0416)" in unknown.json()["error"], unknown.text
        assert "'§' (U+00A7)" in unknown.json()["error"]
        cold = requests.post(url + "/generate", json={"temperature": 0}, timeout=60)
        assert cold.status_code == 422 and "temperature" in cold.json()["error"]
        score = requests.post(url + "/score", json={"text": "hello world."}, timeout=60)
        assert score.status_code == 200 and 0 < score.json()["bits_per_char"] < 8
    finally:
        serve.delete("charlm-test")
