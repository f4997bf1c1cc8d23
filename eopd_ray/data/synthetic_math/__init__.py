"""Synthetic math task with branching solutions, for the offline tiny teacher/student preset.

Small integer problems (five families) whose gold answers are math-verify-compatible strings
(``7``, ``-2``, ``\\frac{3}{4}``) and whose solutions branch the way real reasoning does: each
solution is drawn from a small probabilistic grammar with choices of method, step order, optional
lines, equivalent forms and phrasing at decision points. A teacher trained on such text is uncertain
(next-token entropy above 0.8 nats) at the decision points and confident everywhere else, which is
the regime EOPD's entropy gate needs; ``branching.measure_branching`` checks that property on
token level.

Modules, each importing only the ones listed before it:

- ``grammar``: the probabilistic grammar (literals, sequences, weighted choices): sample, count,
  enumerate.
- ``problems``: ``Problem``, the five families' generators, operand ``DIFFICULTIES`` and
  ``generate_problems``.
- ``solutions``: each family's solution grammar; ``sample_solution`` and exact path counts and
  distributions.
- ``branching``: the ideal model's next-token entropy profile of the solutions under a tokenizer.
- ``corpus``: prompt text, training corpus texts and JSONL files.

``scripts/synthetic_math.py`` writes a JSONL file and prints the branching statistics.
"""
