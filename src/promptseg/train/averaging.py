"""Weight averaging while training: an exponential moving average of the weights ("ema"), or the uniform
mean of the weights after every optimiser step from some step on ("uniform": stochastic weight averaging,
Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization").

Both are one update, ``average ← average + t · (weights − average)``, with ``t = 1 − decay`` for "ema" and
``t = 1 / n`` at the n-th averaged step for "uniform". The average covers the weights *after* steps
``start + 1, start + 2, …``; parameters and floating-point buffers are averaged in float32, integer buffers
are the network's own. :class:`promptseg.train.trainer.Trainer` keeps one when the config's ``average`` is
set, stores it in its checkpoints (so a resumed run continues the same average) and exports it as the
run's ``model.safetensors`` (the optimiser's weights go to ``model_raw.safetensors``).

For averages of saved files after the fact (checkpoints of one run, the ends of several cycles: a "model
soup"), see :func:`promptseg.checkpoint.average_state_dicts` and ``promptseg average``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from promptseg.train.config import check_average


class WeightAverage:
    """A running average of ``network``'s floating-point state (see the module docstring).

    ``update(network, step)`` after each optimiser step; :meth:`averaged_state` gives a full state dict for
    ``network.load_state_dict``; :meth:`swapped_in` puts the average into the network for the time of a
    ``with`` block (to export or evaluate it) and restores the trained weights after."""

    def __init__(self, kind: str, decay: float = 0.999, start: int = 0) -> None:
        check_average(kind, decay, start)
        self.kind = kind
        self.decay = float(decay)
        self.start = int(start)
        self.count = 0  # steps averaged so far
        self.tensors: Dict[str, Tensor] = {}

    @staticmethod
    def _floating(network: nn.Module) -> Dict[str, Tensor]:
        return {k: v.detach() for k, v in network.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, network: nn.Module, step: int) -> None:
        """Fold in ``network``'s weights after optimiser step ``step`` (1-based); steps ≤ ``start`` are not
        averaged."""
        if step <= self.start:
            return
        current = self._floating(network)
        if not self.count:
            self.tensors = {k: v.float().clone() for k, v in current.items()}
        else:
            t = 1.0 / (self.count + 1) if self.kind == "uniform" else 1.0 - self.decay
            for key, avg in self.tensors.items():
                avg.lerp_(current[key].float(), t)
        self.count += 1

    def averaged_state(self, network: nn.Module) -> Dict[str, Tensor]:
        """``network.state_dict()`` with every floating-point entry replaced by its average (in the
        entry's own dtype). Raises ``RuntimeError`` before the first averaged step."""
        if not self.count:
            raise RuntimeError(f"no step averaged yet (averaging starts after step {self.start})")
        return {k: self.tensors[k].to(v.dtype) if k in self.tensors else v for k, v in network.state_dict().items()}

    @contextlib.contextmanager
    def swapped_in(self, network: nn.Module) -> Iterator[nn.Module]:
        """``network`` holding the averaged weights inside the block, its own weights again after it."""
        trained = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(self.averaged_state(network))
        try:
            yield network
        finally:
            network.load_state_dict(trained)

    # ---------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "decay": self.decay, "start": self.start, "count": self.count,
                "tensors": dict(self.tensors)}

    def load_state_dict(self, state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
        """Continue a saved average (its tensors moved to ``device``). Its kind, decay and start must be
        this one's: a run cannot change what its average means half-way (``ValueError`` naming the
        differing field)."""
        for key in ("kind", "decay", "start"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"the checkpoint's weight average has {key}={state.get(key)!r}, the config "
                    f"average{'' if key == 'kind' else '_' + key}={getattr(self, key)!r}: resume with the "
                    "run's own averaging settings"
                )
        self.count = int(state["count"])
        self.tensors = {k: v.to(device=device, dtype=torch.float32, copy=True) for k, v in state["tensors"].items()}
