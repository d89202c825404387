"""Capacity planning: will a training YAML fit on a cluster, how fast, and at what cost.

    foundry plan yamls/pretrain/mpt-7b.yaml --gpus 440 --gpu a100-40gb
    python -m foundry.plan yamls/pretrain/mpt-7b.yaml --gpus 8 --gpu h100 --mfu 0.45
"""

from foundry.plan.cli import add_plan_parser
from foundry.plan.hardware import GPUS, Assumptions
from foundry.plan.planner import Plan, plan
from foundry.plan.report import format_plan, plan_to_dict

__all__ = ['GPUS', 'Assumptions', 'Plan', 'add_plan_parser', 'format_plan', 'plan', 'plan_to_dict']
