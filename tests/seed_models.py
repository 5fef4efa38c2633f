"""The example models of the seed articles (../shared/seeds/), and more cases that tracing gets wrong."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ControlFlowModel(nn.Module):
    """Seed 001: the branch depends on the data."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear1 = nn.Linear(10, 5)
        self.linear2 = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear1(x))
        if x.mean() > 0.1:
            return self.linear2(x)
        else:
            return torch.zeros_like(self.linear2(x))


class DynamicLoopModel(nn.Module):
    """Seed 002, example 1: the number of iterations comes from the input's norm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = x
        num_iterations = int(torch.norm(x))
        for _ in range(num_iterations):
            output = self.linear(output)
        return output


class ListAppendingModel(nn.Module):
    """Seed 002, example 2: a Python loop over a dimension, appending to a list."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intermediate_results = []
        for i in range(x.shape[1]):
            out = self.linear(x[:, i, :])
            intermediate_results.append(out)
        output = torch.stack(intermediate_results, dim=1)
        return output


class StatefulModel(nn.Module):
    """Seed 002, example 3: a call counter changes what forward computes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.counter = 0
        self.linear = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter += 1
        if self.counter % 2 == 0:
            output = x + 1
        else:
            output = self.linear(x)
        return output


class ConditionalOp(nn.Module):
    """Seed 003: conditional_op(x, threshold) as a module."""

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > self.threshold:
            result = x * 2
        else:
            result = x + 1
        return result


class Gate(nn.Module):
    """Data-dependent, but scriptable."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.linear(x)
        return -x


class UnscriptableRoot(nn.Module):
    """The root uses NumPy (scripting the whole model fails); the hazard sits in a scriptable submodule."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate = Gate()
        self.scale = float(np.sqrt(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x) * float(np.sqrt(self.scale * self.scale))


class NoisyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 0.1 * torch.randn_like(x)


class UnscriptableControlFlow(nn.Module):
    """Data-dependent control flow in a root that cannot be scripted and has no submodule to script."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > float(np.float32(0.0)):
            return x * 2
        return x - 1


class HighThresholdOp(ConditionalOp):
    """Only inputs far larger than random samples take the first branch."""

    def __init__(self) -> None:
        super().__init__(threshold=100.0)
