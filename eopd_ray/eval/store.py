"""Per-(checkpoint, benchmark) sample files: what makes an evaluation job resumable.

``output_dir/<checkpoint>/<benchmark>/samples.jsonl`` holds one JSON record per problem (see
``EvalActor.problem_record``), appended as soon as the problem is scored; ``meta.json`` beside it
holds the settings that decide the samples (checkpoint path, sampling, entropy measurement, the
reference teacher). A
job that finds the folder again skips the problems already in it, and refuses to mix samples
drawn with other settings. A last line cut short by a crash is ignored (that problem is redone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eopd_ray.config_io import ConfigError
from eopd_ray.eval.config import CheckpointSpec, EvalConfig


def sample_settings(config: EvalConfig, checkpoint: CheckpointSpec) -> dict[str, Any]:
    """The settings the samples of ``checkpoint`` depend on (compared on resume). The teacher
    spec only when set: folders measured without a teacher keep resuming as before, and adding,
    removing or changing the teacher is refused (records would mix teacher_ref blocks)."""
    settings = {
        "checkpoint": checkpoint.path,
        "dtype": checkpoint.dtype or config.dtype,
        "chat_template": checkpoint.chat_template or config.sampling.chat_template,
        "sampling": config.sampling.model_dump(mode="json"),
        "entropy": config.entropy.model_dump(mode="json", exclude={"chunk_size"}),
    }
    if config.teacher is not None:
        settings["teacher"] = config.teacher.model_dump(mode="json", exclude={"chunk_size"})
    return settings


class SampleStore:
    """The samples of one checkpoint on one benchmark."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.path = folder / "samples.jsonl"
        meta = folder / "meta.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old != settings:
                changed = sorted(k for k in old.keys() | settings if old.get(k) != settings.get(k))
                raise ConfigError(
                    f"{folder} holds samples drawn with other settings ({', '.join(changed)}); "
                    "use another output_dir or delete that folder"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(settings, indent=2) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every complete record on disk, the last one per problem id."""
        if not self.path.is_file():
            return []
        by_id: dict[str, dict[str, Any]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: redo that problem
                continue
            by_id[record["id"]] = record
        return list(by_id.values())

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records()}

    def _ends_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def append(self, records: list[dict[str, Any]]) -> None:
        """Add records and flush them to disk."""
        # A previous crash may have left a partial line without its newline.
        broken = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_newline()
        with self.path.open("a", encoding="utf-8") as f:
            if broken:
                f.write("\n")
            for record in records:
                f.write(json.dumps(record) + "\n")
            f.flush()
