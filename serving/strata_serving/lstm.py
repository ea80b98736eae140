"""The request-rate LSTM: one layer of 16 units and a linear head writing every horizon step at once.

About 1.2 thousand LSTM weights plus 17 per step of the head: small enough to train on the recent history on one
CPU core within a bounded time, which is the point (it is refitted as the load changes, not trained once).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class RateLSTM(nn.Module):
    def __init__(self, horizon: int, hidden: int = 16) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(windows.unsqueeze(-1))
        result: torch.Tensor = self.head(out[:, -1])
        return result


def train_lstm(
    series: np.ndarray, input_bins: int, horizon: int, epochs: int, budget_s: float, generator: torch.Generator
) -> RateLSTM:
    """Fit on every (``input_bins`` in, ``horizon`` out) window of ``series`` (already scaled to mean ~1).

    Each window is divided by its own mean, as at prediction. Full-batch Adam for ``epochs`` epochs or until
    ``budget_s`` has passed, whichever is first; the initial weights come from ``generator``.
    """
    count = len(series) - input_bins - horizon + 1
    if count < 8:
        raise ValueError(f"{len(series)} bins make {count} training windows; need 8")
    index = np.arange(count)[:, None]
    inputs = series[index + np.arange(input_bins)]
    targets = series[index + input_bins + np.arange(horizon)]
    scale = np.maximum(inputs.mean(axis=1, keepdims=True), 1e-9)
    x = torch.tensor(inputs / scale, dtype=torch.float32)
    target = torch.tensor(targets / scale, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        model = RateLSTM(horizon)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    deadline = time.monotonic() + budget_s
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = nn.functional.l1_loss(model(x), target)
        torch.autograd.backward(loss)
        optimiser.step()
        if time.monotonic() > deadline:
            break
    return model.eval()


def predict_lstm(model: RateLSTM, windows: np.ndarray) -> np.ndarray:
    """The model's paths for windows already divided by their own mean."""
    with torch.no_grad():
        out: np.ndarray = model(torch.tensor(windows, dtype=torch.float32)).numpy().astype(float)
    return out
