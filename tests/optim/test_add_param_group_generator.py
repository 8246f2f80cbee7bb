"""add_param_group takes a generator of parameters, as torch.optim's does
(``opt.add_param_group({"params": model.head.parameters()})``)."""

from __future__ import annotations

import torch

import torchopt_survey as ts


def test_add_param_group_accepts_a_generator() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    opt = ts.Adam(model[0].parameters(), lr=0.1)
    reference = torch.optim.Adam(model[0].parameters(), lr=0.1)
    opt.add_param_group({"params": model[1].parameters(), "lr": 0.01})
    reference.add_param_group({"params": model[1].parameters(), "lr": 0.01})
    assert [list(g["params"]) for g in opt.param_groups] == [
        list(g["params"]) for g in reference.param_groups]
    assert opt.param_groups[1]["lr"] == 0.01
