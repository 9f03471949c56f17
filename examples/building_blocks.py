"""The two building blocks on their own: find the dead units, remove them, read the report.

No training: a few units of ``MyNet`` are killed by hand (BatchNorm scale 0, negative shift),
then ``find_dead_units`` finds them on a probe and ``remove_units`` takes them out of the model
and of the optimizer's state, verified exact; the report says what went and why anything
dead stayed. Run:

    python examples/building_blocks.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import demp
from plain_loop import MyNet, digits


def main() -> dict:
    torch.manual_seed(0)
    x_train, y_train, _, _ = digits()
    model = MyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    F.cross_entropy(model(x_train[:64]), y_train[:64]).backward()
    opt.step()                                               # the optimizer now holds state to slice
    with torch.no_grad():                                    # kill 8 units of each concatenated branch
        for bn in (model.left[1], model.right[1]):
            bn.weight[:8] = 0.0
            bn.bias[:8] = -1.0
    model.eval()
    batches, example_inputs = [x_train[:512]], x_train[:2]
    with torch.no_grad():
        before = model(x_train[:512])

    dead = demp.find_dead_units(model, batches)      # {site name: BoolTensor[units]}, True = dead on every batch
    report = demp.remove_units(model, dead, example_inputs, optimizer=opt)   # in place, verified
    print(report.units_removed, report.params_before, report.params_after)
    for site, r in report.sites.items():             # per-site detail, incl. dead units kept and why
        print(site, r.width_before, r.removed, r.kept_dead, r.reasons)

    with torch.no_grad():
        change = float((model(x_train[:512]) - before).abs().max())
    return {"units_removed": report.units_removed, "output_change": change,
            "optimizer_follows": {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}}


if __name__ == "__main__":
    print(main())
