"""``eopd-ray compare``: variants x seeds on the same data, one evaluation, a report with the noise.

``plan`` (which runs, configs checked up front), ``runner`` (resumable jobs, the launcher
interface a cluster back-end implements), ``table`` / ``aggregate`` (numbers per column, variant
and seed; mean ± std, differences), ``report`` (report.md / report.json), ``figures`` (PNG),
``command`` (the CLI entry: ``add_compare_parser``, ``cmd_compare``).
"""
