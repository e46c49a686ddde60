"""Schedule math of contextual DDIM — the package's only implementation.

Everything here follows ``shared/docs/contextdiff-method.md`` ("the method doc"); section numbers below
refer to it. Tables are built once, in float64, on the host (:class:`Schedule`). Per-step coefficients are
plain Python floats (:class:`StepCoefficients`), so the array functions at the bottom use nothing but
arithmetic operators and ``.clip``: they run unchanged on NumPy, CuPy and torch arrays, keep the array's
dtype and device, and never copy between host and device.

The config fields and their meanings are those of diffusers' ``DDIMScheduler`` (a Stable Diffusion
``scheduler_config.json`` loads unchanged), plus ``shift_schedule`` for the contextual shift k(ᾱ).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import numpy as np

from runtime.errors import ConfigError, InvalidArgumentError

logger = logging.getLogger(__name__)

Array = Any  # numpy.ndarray, cupy.ndarray or torch.Tensor: anything with arithmetic operators and .clip

_E = TypeVar("_E", bound=enum.Enum)


class BetaSchedule(str, enum.Enum):
    LINEAR = "linear"
    SCALED_LINEAR = "scaled_linear"
    SQUAREDCOS_CAP_V2 = "squaredcos_cap_v2"


class PredictionType(str, enum.Enum):
    EPSILON = "epsilon"
    SAMPLE = "sample"
    V_PREDICTION = "v_prediction"


class TimestepSpacing(str, enum.Enum):
    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


class ShiftSchedule(str, enum.Enum):
    QUADRATIC = "quadratic"  # k(ᾱ) = √ᾱ (1 − √ᾱ)
    LINEAR = "linear"  # k(ᾱ) = 1 − √ᾱ
    NONE = "none"  # k ≡ 0: plain DDIM


class ContextualGuidance(str, enum.Enum):
    """How classifier-free guidance meets the adapter's shift (method doc §5, "Guidance and the shift")."""

    CONDITIONAL = "conditional"  # one adapter call on the conditional text, after guidance (§5 steps 3–6 as written)
    GUIDED = "guided"  # the adapter on both texts, r = r^u + w (r^c − r^u) at t and at s


# Keys of diffusers' DDIMScheduler config that we accept only at their "off" value.
_UNSUPPORTED_UNLESS = {"thresholding": False}
# Keys that only matter for features above (or for other scheduler classes) and are ignored silently.
_IGNORED_KEYS = {"dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps"}


def _enum_value(cls: type[_E], name: str, value: Any) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"scheduler config: {name}={value!r} is not supported; allowed: {allowed}") from None


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler settings (method doc §2); field names and meanings as in diffusers' DDIMScheduler."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: BetaSchedule = BetaSchedule.LINEAR
    trained_betas: tuple[float, ...] | None = None
    prediction_type: PredictionType = PredictionType.EPSILON
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: TimestepSpacing = TimestepSpacing.LEADING
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False  # zero terminal SNR (Lin et al. 2024; method doc §5, "Terminal signal")
    shift_schedule: ShiftSchedule = ShiftSchedule.QUADRATIC
    contextual_guidance: ContextualGuidance = ContextualGuidance.CONDITIONAL  # the sampler's default (§5); per call overridable

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("beta_schedule", _enum_value(BetaSchedule, "beta_schedule", self.beta_schedule))
        set_("prediction_type", _enum_value(PredictionType, "prediction_type", self.prediction_type))
        set_("timestep_spacing", _enum_value(TimestepSpacing, "timestep_spacing", self.timestep_spacing))
        set_("shift_schedule", _enum_value(ShiftSchedule, "shift_schedule", self.shift_schedule))
        set_("contextual_guidance", _enum_value(ContextualGuidance, "contextual_guidance", self.contextual_guidance))
        for name in ("num_train_timesteps", "steps_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"scheduler config: {name}={value!r} must be an integer")
        if self.num_train_timesteps < 1:
            raise ConfigError(f"scheduler config: num_train_timesteps={self.num_train_timesteps} must be >= 1")
        if self.steps_offset < 0:
            raise ConfigError(f"scheduler config: steps_offset={self.steps_offset} must be >= 0")
        for name in ("set_alpha_to_one", "clip_sample", "rescale_betas_zero_snr"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"scheduler config: {name}={getattr(self, name)!r} must be true or false")
        if self.rescale_betas_zero_snr and self.prediction_type is PredictionType.EPSILON:
            raise ConfigError("scheduler config: rescale_betas_zero_snr=true with prediction_type='epsilon': at zero terminal SNR "
                              "(ᾱ_T = 0) x̂_0 cannot be recovered from ε; use 'v_prediction' (as Lin et al. do) or 'sample'")  # fmt: skip
        for name in ("beta_start", "beta_end", "clip_sample_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"scheduler config: {name}={value!r} must be a positive finite number")
            set_(name, float(value))
        if self.trained_betas is not None:
            betas = tuple(float(b) for b in self.trained_betas)
            if len(betas) != self.num_train_timesteps:
                raise ConfigError(
                    f"scheduler config: trained_betas has {len(betas)} values, "
                    f"num_train_timesteps={self.num_train_timesteps} needs that many"
                )
            set_("trained_betas", betas)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> SchedulerConfig:
        """Build from a diffusers-style ``scheduler_config.json`` dict.

        Keys starting with ``_`` are metadata. Keys of other scheduler classes are ignored with a log line;
        DDIM features this package does not implement (thresholding) raise.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"scheduler config must be a JSON object, got {type(config).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        ignored = []
        for key, value in config.items():
            if key.startswith("_") or key in _IGNORED_KEYS:
                continue
            if key in _UNSUPPORTED_UNLESS:
                if value != _UNSUPPORTED_UNLESS[key]:
                    raise ConfigError(f"scheduler config: {key}={value!r} is not supported (only {_UNSUPPORTED_UNLESS[key]!r})")
                continue
            if key in fields:
                kwargs[key] = value
            else:
                ignored.append(key)
        if ignored:
            logger.info("scheduler config: ignoring keys DDIM does not use: %s", ", ".join(sorted(ignored)))
        return cls(**kwargs)

    def with_zero_terminal_snr(self) -> SchedulerConfig:
        """This schedule made to reach zero signal (method doc §5, "Terminal signal"; Lin et al. 2024): betas rescaled
        (``rescale_betas_zero_snr``), "trailing" spacing so sampling starts at ᾱ_T = 0, and ε-prediction replaced by
        v-prediction (x̂_0 cannot come from ε where ᾱ = 0). A model's weights do not match it until fine-tuned on it.
        Raises InvalidArgumentError naming ``zero_terminal_snr`` where the betas cannot be rescaled."""
        changed = dataclasses.replace(self, rescale_betas_zero_snr=True, timestep_spacing=TimestepSpacing.TRAILING,
                                      prediction_type=PredictionType.V_PREDICTION if self.prediction_type is PredictionType.EPSILON else self.prediction_type)  # fmt: skip
        try:
            make_betas(changed)
        except ConfigError as exc:
            raise InvalidArgumentError("zero_terminal_snr", True, f"a scheduler config whose betas can be rescaled ({exc})") from None
        if changed.prediction_type is not self.prediction_type:
            logger.info("zero terminal SNR: prediction_type %s -> %s (fine-tuning adapts the model)", self.prediction_type.value, changed.prediction_type.value)
        return changed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict that both :meth:`from_dict` and diffusers' ``DDIMScheduler`` can read."""
        out: dict[str, Any] = {"_class_name": "DDIMScheduler"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else (list(value) if isinstance(value, tuple) else value)
        return out


def make_betas(config: SchedulerConfig) -> np.ndarray:
    """β_t for t = 0 .. T−1 in float64 (method doc §2; the formulas of diffusers' DDIMScheduler)."""
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float64)
    elif config.beta_schedule is BetaSchedule.LINEAR:
        betas = np.linspace(config.beta_start, config.beta_end, T, dtype=np.float64)
    elif config.beta_schedule is BetaSchedule.SCALED_LINEAR:
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=np.float64) ** 2
    else:  # squaredcos_cap_v2: the cosine ᾱ(t) of Nichol & Dhariwal, betas capped at 0.999
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)
    if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas > 1):
        raise ConfigError("scheduler config: every beta must lie in (0, 1]; check beta_start/beta_end/trained_betas")
    return rescale_zero_terminal_snr(betas) if config.rescale_betas_zero_snr else betas


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose √ᾱ is shifted and scaled so that √ᾱ_0 is kept and √ᾱ_{T−1} = 0 exactly (Lin et al. 2024, Algorithm
    1; diffusers' ``rescale_betas_zero_snr``). float64.

    1. √ᾱ_t from the betas; 2. √ᾱ ← (√ᾱ − √ᾱ_{T−1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T−1}); 3. back to betas:
    β_0 = 1 − ᾱ_0, β_t = 1 − ᾱ_t / ᾱ_{t−1} (so β_{T−1} = 1)."""
    root = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))  # 1.
    first, last = root[0], root[-1]
    if not first > last:
        raise ConfigError("scheduler config: rescale_betas_zero_snr=true needs a schedule whose signal falls (√ᾱ_0 > √ᾱ_T)")
    root = (root - last) * first / (first - last)  # 2.
    alpha_bar = root**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # 3.
    return 1.0 - alphas


def shift_coefficient(alpha_bar: np.ndarray | float, schedule: ShiftSchedule) -> np.ndarray:
    """k(ᾱ), the weight of the adapter's shift (method doc §2). float64."""
    root = np.sqrt(np.asarray(alpha_bar, dtype=np.float64))
    if schedule is ShiftSchedule.QUADRATIC:
        return root * (1.0 - root)
    if schedule is ShiftSchedule.LINEAR:
        return 1.0 - root
    return np.zeros_like(root)


@dataclass(frozen=True)
class StepCoefficients:
    """Scalars of one reverse step from ``timestep`` t to ``prev_timestep`` s (method doc §5)."""

    timestep: int
    prev_timestep: int  # −1 after the last sampled timestep: ᾱ_s is then the "final alpha"
    sqrt_alpha_bar_t: float  # √ᾱ_t
    sqrt_one_minus_alpha_bar_t: float  # √(1 − ᾱ_t)
    shift_t: float  # k_t
    sqrt_alpha_bar_s: float  # √ᾱ_s
    shift_s: float  # k_s
    sigma: float  # σ (step 5)
    direction: float  # √(1 − ᾱ_s − σ²) (step 6)

    @property
    def adapter_prev_timestep(self) -> int:
        """Timestep at which the adapter evaluates r_s: max(s, 0) (step 3)."""
        return max(self.prev_timestep, 0)


@dataclass(frozen=True)
class SamplingPlan:
    """Everything the sampler needs about the schedule for one call: built on the host, once."""

    prediction_type: PredictionType
    clip_sample_range: float | None  # None: no clipping of x̂_0
    steps: tuple[StepCoefficients, ...]

    @property
    def timesteps(self) -> np.ndarray:
        return np.array([c.timestep for c in self.steps], dtype=np.int64)


@dataclass(frozen=True)
class InversionStep:
    """One step of contextual DDIM inversion from ``timestep`` s up to ``next_timestep`` t > s (method doc §7)."""

    timestep: int  # s; −1 for the first step, which starts from x_0 with the "final alpha"
    next_timestep: int  # t: the model is evaluated here, as diffusers' DDIMInverseScheduler and null-text inversion do
    coefficients: StepCoefficients  # the deterministic step s -> t in the sampler's terms: its "t" fields hold s, its "s" fields t

    @property
    def adapter_timestep(self) -> int:
        """Timestep at which the adapter evaluates r_s: max(s, 0) (§7 step 2; k_s = 0 where ᾱ_s = 1)."""
        return max(self.timestep, 0)


@dataclass(frozen=True)
class InversionPlan:
    """Everything the inversion loop needs about the schedule for one call: the sampling sequence reversed."""

    prediction_type: PredictionType
    clip_sample_range: float | None
    steps: tuple[InversionStep, ...]

    @property
    def timesteps(self) -> np.ndarray:
        """The timesteps the model is evaluated at, ascending (diffusers' ``DDIMInverseScheduler.timesteps``)."""
        return np.array([c.next_timestep for c in self.steps], dtype=np.int64)


@dataclass(frozen=True)
class ForwardCoefficients:
    """Per-sample scalars of the forward process at timesteps t (B,), float64 (method doc §3)."""

    sqrt_alpha_bar: np.ndarray
    shift: np.ndarray
    sqrt_one_minus_alpha_bar: np.ndarray


class Schedule:
    """Float64 tables of one :class:`SchedulerConfig`, built once; read-only."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.betas = make_betas(config)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.final_alpha_cumprod = 1.0 if config.set_alpha_to_one else float(self.alphas_cumprod[0])
        self.shifts = shift_coefficient(self.alphas_cumprod, config.shift_schedule)
        for table in (self.betas, self.alphas_cumprod, self.shifts):
            table.setflags(write=False)

    def with_clip_sample(self, clip_sample: bool | None) -> Schedule:
        """This schedule with x̂_0 clipping forced on or off (``None``: as configured). Video editing turns it off by
        default: clipping makes DDIM inversion lossy (``VideoEditPipeline``, ``runtime.VideoEditor``)."""
        if clip_sample is None:
            return self
        if not isinstance(clip_sample, bool):
            raise InvalidArgumentError("clip_sample", clip_sample, "None, True or False")
        return Schedule(dataclasses.replace(self.config, clip_sample=clip_sample))

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t; for t < 0 the final alpha (method doc §5)."""
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def shift(self, t: int) -> float:
        """k_t = k(ᾱ_t); for t < 0, k of the final alpha."""
        return float(self.shifts[t]) if t >= 0 else float(shift_coefficient(self.final_alpha_cumprod, self.config.shift_schedule))

    def _check_steps(self, num_inference_steps: int) -> None:
        T = self.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= T:
            raise InvalidArgumentError("num_inference_steps", num_inference_steps, f"an integer from 1 to num_train_timesteps={T}")

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The sampled timesteps, descending, int64 — exactly diffusers' ``DDIMScheduler.set_timesteps``."""
        self._check_steps(num_inference_steps)
        T, n = self.num_train_timesteps, int(num_inference_steps)
        spacing = self.config.timestep_spacing
        if spacing is TimestepSpacing.LINSPACE:
            return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        if spacing is TimestepSpacing.LEADING:
            return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + self.config.steps_offset
        # trailing. np.arange's float step yields n + 1 values for 62 of the n in 1..1000 (61, 103, 121, ...), the last
        # one t = -1, which diffusers (same expression) then samples at; the first n are the schedule.
        return (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)[:n]

    def previous_timesteps(self, timesteps: np.ndarray) -> np.ndarray:
        """s for each t (method doc §5): t − T//n for leading/trailing (as diffusers), else the next sampled one.

        Any s < 0 is returned as −1: "after the last timestep", where ᾱ_s is the final alpha.
        """
        timesteps = np.asarray(timesteps, dtype=np.int64)
        if self.config.timestep_spacing is TimestepSpacing.LINSPACE:
            return np.append(timesteps[1:], -1)
        return np.maximum(timesteps - self.num_train_timesteps // len(timesteps), -1)

    def step_coefficients(self, t: int, s: int, eta: float) -> StepCoefficients:
        """Scalars of the step t -> s (method doc §5, steps 5–6), from the float64 tables."""
        ab_t, ab_s = self.alpha_bar(t), self.alpha_bar(s)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(max(1 - ab_t / ab_s, 0.0)) if eta > 0 else 0.0  # step 5
        return StepCoefficients(
            timestep=int(t),
            prev_timestep=int(s),
            sqrt_alpha_bar_t=math.sqrt(ab_t),
            sqrt_one_minus_alpha_bar_t=math.sqrt(1 - ab_t),
            shift_t=self.shift(t),
            sqrt_alpha_bar_s=math.sqrt(ab_s),
            shift_s=self.shift(s),
            sigma=sigma,
            direction=math.sqrt(max(1 - ab_s - sigma**2, 0.0)),  # step 6
        )

    def strength_steps(self, num_inference_steps: int, strength: float = 1.0) -> int:
        """How many of the ``num_inference_steps`` an edit of ``strength`` runs: min(⌊n · strength⌋, n), diffusers'
        image-to-image rule. Sampling runs the last that many steps of the schedule, inversion the first that many
        in reverse, so an inversion and a sampling run of equal strength meet at the same timestep; 1 is the whole
        schedule (method doc §7 as written: invert up to x_T)."""
        self._check_steps(num_inference_steps)
        n = int(num_inference_steps)
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0 or int(n * strength) < 1:
            raise InvalidArgumentError("strength", strength, f"a number in [1/num_inference_steps, 1] = [{1 / n:g}, 1] (1: invert up to x_T)")
        return min(int(n * strength), n)

    def plan(self, num_inference_steps: int, eta: float = 0.0, strength: float = 1.0) -> SamplingPlan:
        """All step coefficients for one sampling run of ``num_inference_steps`` with DDIM η = ``eta``; with
        ``strength`` < 1 only the last :meth:`strength_steps` of them (a run starting from a partly noised sample)."""
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
            raise InvalidArgumentError("eta", eta, "a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like)")
        k = self.strength_steps(num_inference_steps, strength)
        ts = self.timesteps(num_inference_steps)
        pairs = list(zip(ts.tolist(), self.previous_timesteps(ts).tolist()))[len(ts) - k :]
        steps = tuple(self.step_coefficients(t, s, float(eta)) for t, s in pairs)
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        return SamplingPlan(prediction_type=self.config.prediction_type, clip_sample_range=clip, steps=steps)

    def inversion_plan(self, num_inference_steps: int, strength: float = 1.0) -> InversionPlan:
        """The steps of contextual DDIM inversion (method doc §7): the sampling sequence of ``num_inference_steps``
        reversed, each step s -> t the deterministic DDIM step between them (σ = 0) — the sampler's step with the
        roles of s and t exchanged. With ``strength`` < 1 only the first :meth:`strength_steps`: it stops at the
        timestep where ``plan(num_inference_steps, strength=strength)`` starts."""
        k = self.strength_steps(num_inference_steps, strength)
        ts = self.timesteps(num_inference_steps)
        pairs = list(zip(ts[::-1].tolist(), self.previous_timesteps(ts)[::-1].tolist()))[:k]
        steps = [InversionStep(timestep=s, next_timestep=t, coefficients=self.step_coefficients(s, t, 0.0)) for t, s in pairs]
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        return InversionPlan(prediction_type=self.config.prediction_type, clip_sample_range=clip, steps=tuple(steps))

    def forward_coefficients(self, timesteps: np.ndarray) -> ForwardCoefficients:
        """√ᾱ_t, k_t, √(1 − ᾱ_t) for an array of train timesteps (method doc §3)."""
        t = np.asarray(timesteps, dtype=np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise InvalidArgumentError("timesteps", t, f"integers in [0, {self.num_train_timesteps - 1}]")
        ab = self.alphas_cumprod[t]
        return ForwardCoefficients(np.sqrt(ab), self.shifts[t], np.sqrt(1.0 - ab))


# ---------------------------------------------------------------------------------------------------------
# Array functions: operators only, so NumPy, CuPy and torch arrays all work (and autograd flows in torch).
# Scalars may be Python floats or arrays broadcastable to the samples (training passes (B, 1, 1, 1) arrays).


def forward_sample(x0: Array, shift: Array, noise: Array, sqrt_alpha_bar: Any, k: Any, sqrt_one_minus_alpha_bar: Any) -> Array:
    """x_t = √ᾱ_t x_0 + k_t r + √(1 − ᾱ_t) ε (method doc §3); ``shift`` is r_φ(x_0, c, t)."""
    return sqrt_alpha_bar * x0 + k * shift + sqrt_one_minus_alpha_bar * noise


def training_target(
    prediction_type: PredictionType, x0: Array, x_t: Array, sqrt_alpha_bar: Any, sqrt_one_minus_alpha_bar: Any
) -> Array:
    """The denoiser's regression target (method doc §4), with ε̃ = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    if prediction_type is PredictionType.SAMPLE:
        return x0
    eps_total = (x_t - sqrt_alpha_bar * x0) / sqrt_one_minus_alpha_bar
    if prediction_type is PredictionType.EPSILON:
        return eps_total
    return sqrt_alpha_bar * eps_total - sqrt_one_minus_alpha_bar * x0  # v_prediction


def predict_x0(model_output: Array, x_t: Array, c: StepCoefficients, plan: SamplingPlan | InversionPlan) -> tuple[Array, Array]:
    """Model output -> (x̂_0, ε̃̂) (method doc §4 and §5 step 2).

    x̂_0 is clipped to ±clip_sample_range when the plan asks for it. The total residual ε̃̂ is the one the
    model output implies (from the *unclipped* x̂_0), exactly as diffusers' DDIMScheduler does by default,
    and is computed without the cancellation that re-deriving it from x̂_0 would suffer at small t.
    """
    a, b = c.sqrt_alpha_bar_t, c.sqrt_one_minus_alpha_bar_t
    if plan.prediction_type is PredictionType.EPSILON:
        x0, eps_total = (x_t - b * model_output) / a, model_output
    elif plan.prediction_type is PredictionType.SAMPLE:
        x0, eps_total = model_output, (x_t - a * model_output) / b
    else:  # v_prediction
        x0, eps_total = a * x_t - b * model_output, a * model_output + b * x_t
    if plan.clip_sample_range is not None:
        x0 = x0.clip(-plan.clip_sample_range, plan.clip_sample_range)
    return x0, eps_total


def contextual_ddim_step(
    x_t: Array, x0: Array, eps_total: Array, r_t: Array | None, r_s: Array | None, c: StepCoefficients, noise: Array | None = None
) -> Array:
    """One contextual DDIM step t -> s (method doc §5, steps 4–6); r_t = r_s = None means r ≡ 0.

    ``noise`` is z ~ N(0, I) of x_t's shape; it is required when σ > 0 and ignored when σ = 0.
    """
    # 4. ε̂ = (x_t − √ᾱ_t x̂_0 − k_t r_t) / √(1 − ᾱ_t) = ε̃̂ − k_t r_t / √(1 − ᾱ_t); the term is 0 where k_t = 0 (also
    #    at ᾱ_t = 1, where inversion starts: §7 step 3)
    eps = eps_total if r_t is None or c.shift_t == 0 else eps_total - (c.shift_t / c.sqrt_one_minus_alpha_bar_t) * r_t
    # 6. x_s = √ᾱ_s x̂_0 + k_s r_s + √(1 − ᾱ_s − σ²) ε̂ + σ z
    x_s = c.sqrt_alpha_bar_s * x0 + c.direction * eps
    if r_s is not None:
        x_s = x_s + c.shift_s * r_s
    if c.sigma > 0:
        if noise is None:
            raise InvalidArgumentError("noise", None, f"an array like x_t: the step {c.timestep}->{c.prev_timestep} has sigma={c.sigma:.3g} > 0")
        x_s = x_s + c.sigma * noise
    return x_s
