"""The toy categorical experiment of §3.2 / Table 1 (Figures 1 and 6) of the EOPD paper.

One context, a vocabulary of ``V = 80`` tokens. The teacher's logits are drawn from N(0, 1) and
five of them (at random distinct positions) are overwritten by 1.7, 1.9, 2.1, 2.3 and 2.5; the
teacher distribution is ``P_te = softmax(logits / T)`` with ``T = 0.3`` (the paper's low-entropy
scenario) or ``T = 1.0`` (high-entropy). The student's logits ``s`` are drawn from N(0, 1), and
it learns by on-policy distillation (reverse KL), with or without EOPD's forward-KL term.

The same config always gives the same ``results.json``. The package's public API is below;
its modules:

* ``config`` — ``ToyConfig`` (validated settings; why the defaults) and the constants.
* ``simulate`` — the update rule, the objectives, the randomness: one run per call.
* ``summary`` — the metrics of ``results.json`` and the terminal table.
* ``figures`` — Figure 1 (top-10 change rate) and Figure 6 (final distributions).
* ``run`` — ``compute_results`` (every run) and ``run_toy`` (writes the outputs).
"""

from eopd_ray.toy.config import OBJECTIVES, SCENARIOS, TEACHER_TOP_LOGITS, ToyConfig
from eopd_ray.toy.run import compute_results, run_toy
from eopd_ray.toy.simulate import (
    count_top1_changes,
    entropy,
    fkl_loss_and_grad,
    jaccard_distance,
    make_teacher_logits,
    simulate,
    teacher_probs,
    top_k_mask,
    topk_change_rates,
)
from eopd_ray.toy.summary import PAPER_REFERENCE, format_summary

__all__ = [
    "OBJECTIVES",
    "PAPER_REFERENCE",
    "SCENARIOS",
    "TEACHER_TOP_LOGITS",
    "ToyConfig",
    "compute_results",
    "count_top1_changes",
    "entropy",
    "fkl_loss_and_grad",
    "format_summary",
    "jaccard_distance",
    "make_teacher_logits",
    "run_toy",
    "simulate",
    "teacher_probs",
    "top_k_mask",
    "topk_change_rates",
]
