"""Evaluation metrics: unbiased Pass@k, Avg@k and the per-benchmark summary.

``pass_at_k(n, c, k)`` is the unbiased estimator of Chen et al. (2021): with ``n`` samples of which
``c`` are correct, the probability that a random ``k``-subset holds at least one correct sample,
``1 - C(n - c, k) / C(n, k)``, computed as the product ``Π_{i = n-c+1}^{n} (1 - k / i)`` so that no
huge binomial coefficient is formed. ``avg_at_k`` is the mean per-sample accuracy (the paper's
Avg@8). ``summarize`` turns a benchmark's scored problems into the numbers of ``results.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# Entropy (nats) from which a token counts as high-entropy in the paper's Figure 3 numbers.
HIGH_ENTROPY_NATS = 1.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem with ``n`` samples, ``c`` of them correct (``k <= n``)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_k(correct: Sequence[bool] | Sequence[int]) -> float:
    """Mean accuracy of one problem's samples (Avg@k with k = len(correct))."""
    if len(correct) == 0:
        raise ValueError("avg_at_k needs at least one sample")
    return float(np.mean(np.asarray(correct, dtype=np.float64)))


def default_ks(n: int) -> list[int]:
    """The k of the Pass@k curve: 1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    if ks[-1] != n:
        ks.append(n)
    return ks


def entropy_edges(bin_width: float, max_nats: float) -> np.ndarray:
    """Histogram bin edges ``0, w, 2w, ... max``; the last bin also takes everything above."""
    num_bins = round(max_nats / bin_width)
    return np.linspace(0.0, num_bins * bin_width, num_bins + 1)


def entropy_histogram(entropy: Iterable[float], edges: np.ndarray) -> list[int]:
    """Counts of token entropies per bin of ``edges`` (values above the last edge go last)."""
    values = np.clip(np.asarray(list(entropy), dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(values, bins=edges)
    return [int(c) for c in counts]


def summarize(records: Sequence[dict[str, Any]], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of one (checkpoint, benchmark) from its scored problem records.

    Each record has ``correct`` (a list of booleans, one per sample), ``lengths`` (response
    tokens per sample) and, when the entropy was measured, ``entropy_counts`` (histogram counts)
    and ``entropy_tokens``. Records with ``skipped`` set are counted, not scored. Pass@k is
    reported for every k in ``ks`` (default :func:`default_ks`) with k <= n.
    """
    scored = [r for r in records if not r.get("skipped")]
    out: dict[str, Any] = {
        "problems": len(scored),
        "skipped": len(records) - len(scored),
    }
    if not scored:
        return out
    sizes = {len(r["correct"]) for r in scored}
    if len(sizes) != 1:
        raise ValueError(f"problems have different numbers of samples: {sorted(sizes)}")
    n = sizes.pop()
    counts = [int(sum(r["correct"])) for r in scored]
    wanted = [k for k in (ks or default_ks(n)) if k <= n]
    lengths = [length for r in scored for length in r["lengths"]]
    out.update(
        samples=n,
        avg_at_k=float(np.mean([avg_at_k(r["correct"]) for r in scored])),
        pass_at_k={str(k): float(np.mean([pass_at_k(n, c, k) for c in counts])) for k in wanted},
        mean_response_tokens=float(np.mean(lengths)),
        truncated=float(np.mean([f == "length" for r in scored for f in r["finish_reasons"]])),
    )
    hist = [r["entropy_counts"] for r in scored if r.get("entropy_counts")]
    if hist:
        total = np.sum(np.asarray(hist, dtype=np.int64), axis=0)
        out["entropy_counts"] = [int(c) for c in total]
        out["entropy_tokens"] = int(total.sum())
        out["high_entropy_fraction"] = float(
            sum(r["entropy_high"] for r in scored if r.get("entropy_counts")) / max(total.sum(), 1)
        )
    return out
