"""DDPM and DDIM noise schedulers (Ho et al. 2020, arXiv:2006.11239; Song et al. 2021, arXiv:2010.02502).

Written here so robotrain needs no `diffusers`; the math and the settings are those LeRobot uses through diffusers'
DDPMScheduler / DDIMScheduler, so a policy trained with either samples the same way:
    betas       linear, scaled_linear, or squaredcos_cap_v2 (Nichol & Dhariwal's cosine, each beta capped at 0.999)
    ᾱ_t         cumulative product of (1 - beta), float32
    add_noise   x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε
    timesteps   "leading" spacing: t_i = i * (T // n) for i = n-1 ... 0 (no offset)
    DDPM step   x_0 estimate (clipped), posterior mean, plus sqrt(fixed_small variance) ε while t > 0
    DDIM step   eta = 0 (deterministic); ᾱ before the first step is 1 (set_alpha_to_one)
Every per-step coefficient is computed once per (scheduler, num_inference_steps) as diffusers computes it (float32
scalars), so sampling runs no scheduler arithmetic on tensors beyond two multiply-adds per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

SCHEDULER_TYPES = ("DDPM", "DDIM")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample")


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               max_beta: float = 0.999) -> torch.Tensor:
    """The noise variances beta_1..beta_T of a schedule, float32 like diffusers'."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")


def leading_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """Diffusers' default "leading" spacing, noisiest first: [(n-1)*r, ..., r, 0] with r = T // n."""
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio for i in reversed(range(num_inference_steps))]


class NoiseScheduler(nn.Module):
    """Forward noising for training and one reverse (denoising) step for sampling; DDPM or DDIM.

    The ᾱ tables are non-persistent buffers: they follow the model to its device but are not saved (they are a
    function of the config).
    """

    def __init__(self, kind: str = "DDPM", num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 beta_start: float = 1e-4, beta_end: float = 0.02, prediction_type: str = "epsilon",
                 clip_sample: bool = True, clip_sample_range: float = 1.0):
        super().__init__()
        if kind not in SCHEDULER_TYPES:
            raise ValueError(f"unknown noise scheduler {kind!r}; expected one of {SCHEDULER_TYPES}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.kind, self.prediction_type = kind, prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.clip_range = clip_sample_range if clip_sample else None
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.register_buffer("sqrt_alphas_cumprod", self.alphas_cumprod**0.5, persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - self.alphas_cumprod) ** 0.5, persistent=False)
        self._plans: dict[int, list[tuple[int, tuple[float, ...]]]] = {}

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, one timestep per batch element."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        scale = self.sqrt_alphas_cumprod[timesteps].view(shape)
        sigma = self.sqrt_one_minus_alphas_cumprod[timesteps].view(shape)
        return torch.addcmul(scale * x0, sigma, noise)

    def timesteps(self, num_inference_steps: int) -> list[int]:
        """The timesteps a sampler with `num_inference_steps` steps visits, noisiest first."""
        return [t for t, _ in self._plan(num_inference_steps)]

    def _plan(self, num_inference_steps: int) -> list[tuple[int, tuple[float, ...]]]:
        if num_inference_steps not in self._plans:
            if not 1 <= num_inference_steps <= self.num_train_timesteps:
                raise ValueError(f"num_inference_steps={num_inference_steps} is not in [1, {self.num_train_timesteps}]")
            ratio = self.num_train_timesteps // num_inference_steps
            coefs = self._ddpm_coefs if self.kind == "DDPM" else self._ddim_coefs
            self._plans[num_inference_steps] = [
                (t, coefs(t, t - ratio)) for t in leading_timesteps(self.num_train_timesteps, num_inference_steps)]
        return self._plans[num_inference_steps]

    def _alpha_prod(self, t: int, first: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else first

    def _ddpm_coefs(self, t: int, prev: int) -> tuple[float, ...]:
        """(x0 from eps: 1/sqrt(ᾱ_t), sqrt(1-ᾱ_t)), posterior mean coefficients of x0 and x_t, noise std."""
        a_t = self.alphas_cumprod[t]
        a_prev = self._alpha_prod(prev, torch.tensor(1.0))
        b_t, b_prev = 1 - a_t, 1 - a_prev
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        coef_x0 = a_prev**0.5 * beta_t / b_t
        coef_xt = alpha_t**0.5 * b_prev / b_t
        std = torch.clamp(b_prev / b_t * beta_t, min=1e-20) ** 0.5 if t > 0 else torch.tensor(0.0)
        return tuple(float(v) for v in (a_t**0.5, b_t**0.5, coef_x0, coef_xt, std))

    def _ddim_coefs(self, t: int, prev: int) -> tuple[float, ...]:
        """(sqrt(ᾱ_t), sqrt(1-ᾱ_t)), sqrt(ᾱ_prev) for x0 and sqrt(1-ᾱ_prev) for eps (eta = 0), no noise."""
        a_t = self.alphas_cumprod[t]
        a_prev = self._alpha_prod(prev, torch.tensor(1.0))  # set_alpha_to_one
        return tuple(float(v) for v in (a_t**0.5, (1 - a_t) ** 0.5, a_prev**0.5, (1 - a_prev) ** 0.5, 0.0))

    def step(self, model_output: torch.Tensor, t: int, sample: torch.Tensor, num_inference_steps: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_{t - T//n} of a sampler with `num_inference_steps` steps."""
        plan = dict(self._plan(num_inference_steps))
        return self._step(model_output, sample, plan[t], generator)

    def _step(self, model_output: torch.Tensor, sample: torch.Tensor, coefs: tuple[float, ...],
              generator: torch.Generator | None) -> torch.Tensor:
        sqrt_a, sqrt_b, c_x0, c_other, std = coefs
        if self.prediction_type == "epsilon":
            x0 = (sample - sqrt_b * model_output) / sqrt_a
            eps = model_output
        else:
            x0 = model_output
            eps = (sample - sqrt_a * x0) / sqrt_b if self.kind == "DDIM" else None
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        if self.kind == "DDIM":  # eps is the model's (unclipped) estimate, as diffusers' default
            return c_x0 * x0 + c_other * eps
        prev = c_x0 * x0 + c_other * sample
        if std > 0:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev = prev + std * noise
        return prev

    def sample(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
               num_inference_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the reverse process from `noise`; `denoise(x_t, t_batch)` is the network's prediction."""
        x = noise
        t_batch = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for t, coefs in self._plan(num_inference_steps):
            x = self._step(denoise(x, t_batch.fill_(t)), x, coefs, generator)
        return x
