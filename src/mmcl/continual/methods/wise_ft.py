"""WiSE-FT (Wortsman et al. 2022): interpolate fine-tuned weights with the initial model.

After each task, theta <- (1 - alpha) * theta_0 + alpha * theta, where theta_0 are the weights
before any continual training. alpha = 1 is plain fine-tuning, alpha = 0 the zero-shot model;
the paper's default is 0.5.
"""

import torch

from mmcl.continual.methods.base import Method


class WiseFT(Method):
    name = "wise_ft"
    takes_captions = True

    def __init__(self, alpha: float = 0.5):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"wise_ft: alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha

    def after_task(self, task, model, run) -> None:
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if value.is_floating_point():
                    initial = run.initial_state[name].to(value.device, value.dtype)
                    value.copy_(torch.lerp(initial, value, self.alpha))

    def __repr__(self) -> str:
        return f"WiseFT(alpha={self.alpha})"
