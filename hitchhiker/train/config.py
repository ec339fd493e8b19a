"""Training configuration: one dataclass per algorithm, defaults that run the demo on CPU."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ADVANTAGE_COLUMNS = ("advantage", "advantage_drgrpo", "advantage_self")
PI_OLD = ("proximal", "behaviour")
IS_MODES = ("token_truncate", "sequence_truncate", "none")


@dataclass
class FinetuneConfig:
    """What is trained: a peft LoRA adapter (default) or every weight of the model."""

    finetune: str = "lora"  # 'lora' | 'full'
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # 'all-linear' = every linear layer but the output head (peft's meaning); or a list of module names
    lora_target_modules: str | list[str] = "all-linear"

    def check(self) -> None:
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune {self.finetune!r} is not 'lora' or 'full'")


@dataclass
class GRPOConfig(FinetuneConfig):
    """GRPO over stored groups. Names follow TRL's GRPOConfig where the meaning is the same."""

    reward_spec: str | None = None  # None = the rewards stage's default spec
    advantage_column: str = "advantage"  # 'advantage' = (r - mean)/(std + eps); 'advantage_drgrpo' = r - mean;
    # 'advantage_self' = (r - mean of the group's own 'self' rows)/(std + eps): for groups split across teachers
    loss_type: str = "dr_grpo"  # aggregation: grpo (per-sequence mean), bnpo/dapo (per token), dr_grpo (sum / (B * L))
    # Dr. GRPO divides by a constant completion length; None = the longest completion in the run's plan.
    max_completion_length: int | None = None
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0  # KL(pi || ref) weight, k3 estimator; ref = base model (LoRA: the adapter disabled)
    # pi_old in the clipped ratio: 'behaviour' = the stored sampler log-probs (classic PPO on the stored data);
    # 'proximal' = the model at the start of the step, times a truncated importance weight
    # min(pi_prox / pi_behaviour, is_cap), which is TRL's correction for a sampler that is not the trainer (and here,
    # for rollouts sampled by an older checkpoint, days ago).
    pi_old: str = "proximal"
    # 'none': no importance weight, every row is trained on as if the student had sampled it: for a teacher's rows
    # (issue 21) the teacher's confidence (pi_student / pi_teacher ~ 0.5 on a deciding token) would shrink exactly
    # the right answers the student has to learn; off-policy by design, so keep 'token_truncate' for stale samples
    is_mode: str = "token_truncate"
    is_cap: float = 3.0
    learning_rate: float = 3e-4
    lr_scheduler: str = "constant"  # 'constant' | 'cosine'
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    groups_per_step: int = 8  # groups in one optimizer step
    groups_per_micro_batch: int = 8  # forward/backward chunk; accumulation steps = groups_per_step / this
    share_prompts: bool = True  # encode each group's prompt once (KV cache shared by its completions)
    max_steps: int | None = None  # None = until the plan is consumed
    save_every_steps: int = 0  # 0 = only at the end of the run
    shuffle_seed: int = 0
    seed: int = 0
    bf16: bool = True  # only on CUDA; CPU trains in float32
    logging_dir: str | None = None  # TensorBoard; default <run_dir>/tensorboard

    def check(self) -> None:
        super().check()
        for name, value, allowed in (
            ("loss_type", self.loss_type, LOSS_TYPES),
            ("advantage_column", self.advantage_column, ADVANTAGE_COLUMNS),
            ("pi_old", self.pi_old, PI_OLD),
            ("is_mode", self.is_mode, IS_MODES),
            ("lr_scheduler", self.lr_scheduler, ("constant", "cosine")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {allowed}")
        if self.groups_per_step < 1 or self.groups_per_micro_batch < 1:
            raise ValueError("groups_per_step and groups_per_micro_batch must be >= 1")
        if self.groups_per_step % self.groups_per_micro_batch:
            raise ValueError(
                f"groups_per_step ({self.groups_per_step}) must be a multiple of groups_per_micro_batch ({self.groups_per_micro_batch})"
            )

    @property
    def accumulation_steps(self) -> int:
        return self.groups_per_step // self.groups_per_micro_batch


@dataclass
class PreferenceConfig(FinetuneConfig):
    """Training on the buffer's preference pairs (best vs worst valid completion of a group): DPO's and ORPO's."""

    reward_spec: str | None = None
    margin_usd: float = 0.0  # a pair needs reward(best) - reward(worst) > margin_usd
    beta: float = 0.1
    learning_rate: float = 1e-4
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int = -1
    seed: int = 0
    extra: dict = field(default_factory=dict)  # passed through to TRL's config (trl.DPOConfig, ORPOConfig)


@dataclass
class DPOConfig(PreferenceConfig):
    """DPO: beta weighs the implicit reward log(pi / pi_ref) (the reference: the parent, or the base model)."""


@dataclass
class ORPOConfig(PreferenceConfig):
    """ORPO (odds-ratio preference optimization): the chosen answer's NLL plus beta (the paper's lambda) times
    -log sigmoid(log odds(chosen) - log odds(rejected)); no reference model."""


PREFERENCE_CONFIGS = {"dpo": DPOConfig, "orpo": ORPOConfig}


def as_dict(config) -> dict:
    return asdict(config)
