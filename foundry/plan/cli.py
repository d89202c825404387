"""`foundry plan YAML [key=value ...] --gpus N --gpu KIND`: the command line of the planner."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from foundry.plan.hardware import GPUS, Assumptions


class _IntermixedParser(argparse.ArgumentParser):
    """Lets key=value overrides follow the options too (`--gpus 8 --gpu h100 optimizer.lr=1e-4`).

    Plain argparse stops filling a positional list once an option has been seen.
    """

    _intermixing = False

    def error(self, message: str):
        from foundry.user_errors import argparse_error

        argparse_error(self.prog, message)

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Assumptions()
    parser.add_argument('yaml', help='training YAML')
    parser.add_argument('overrides', nargs='*', help='key=value overrides, as for training')
    parser.add_argument('--gpus', type=int, required=True, help='total number of GPUs')
    parser.add_argument('--gpu', required=True, choices=sorted(GPUS), type=str.lower, help='GPU kind')
    parser.add_argument('--mfu', type=float, default=None,
                        help="model-FLOPs utilisation, 0-1 (default: llm-foundry's published figure for the "
                             f'nearest size and GPU, else {d.fallback_mfu})')
    parser.add_argument('--gpus-per-node', type=int, default=8, help='GPUs per node (default 8)')
    parser.add_argument('--micro-batch', type=int, default=None,
                        help='micro-batch to estimate memory for (default: device_train_microbatch_size)')
    parser.add_argument('--reserved-gib', type=float, default=d.reserved_gib,
                        help=f'device memory outside the allocator per GPU (default {d.reserved_gib})')
    parser.add_argument('--ckpt-node-gbps', type=float, default=d.ckpt_node_gbps,
                        help=f'checkpoint write rate per node, GB/s (default {d.ckpt_node_gbps})')
    parser.add_argument('--ckpt-storage-gbps', type=float, default=d.ckpt_storage_gbps,
                        help=f'checkpoint storage cap, GB/s (default {d.ckpt_storage_gbps})')
    parser.add_argument('--restart-s', type=float, default=d.restart_overhead_s,
                        help=f'restart overhead after a failure, seconds (default {d.restart_overhead_s:g})')
    parser.add_argument('--json', action='store_true', help='print the plan as JSON')


def cmd_plan(args: argparse.Namespace) -> int:
    from foundry.config.load import load_config
    from foundry.plan.planner import plan
    from foundry.plan.report import format_plan, plan_to_json

    check_plan_arguments(args)
    assumptions = Assumptions(reserved_gib=args.reserved_gib, ckpt_node_gbps=args.ckpt_node_gbps,
                              ckpt_storage_gbps=args.ckpt_storage_gbps, restart_overhead_s=args.restart_s)
    cfg = load_config(args.yaml, args.overrides)
    result = plan(cfg, args.gpus, args.gpu, args.mfu, gpus_per_node=args.gpus_per_node,
                  micro_batch=args.micro_batch, assumptions=assumptions)
    print(plan_to_json(result) if args.json else format_plan(result, args.yaml))
    return 0


def check_plan_arguments(args: argparse.Namespace) -> None:
    """Ranges argparse's types do not check: a negative micro-batch would plan negative memory and time."""
    from foundry.config.errors import ConfigError

    positive = {'--gpus': args.gpus, '--gpus-per-node': args.gpus_per_node, '--micro-batch': args.micro_batch,
                '--ckpt-node-gbps': args.ckpt_node_gbps, '--ckpt-storage-gbps': args.ckpt_storage_gbps}
    for flag, value in positive.items():
        if value is not None and not value > 0:
            raise ConfigError(f'{flag} is {value:g}; it must be greater than zero')
    for flag, value in {'--reserved-gib': args.reserved_gib, '--restart-s': args.restart_s}.items():
        if not value >= 0:
            raise ConfigError(f'{flag} is {value:g}; it must be zero or more')
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise ConfigError(f'--mfu is {args.mfu:g}; give the model-FLOPs utilisation as a fraction in (0, 1], e.g. 0.4')


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Add `plan` to a `foundry` subparsers object; the parser calls `args.func(args)`."""
    parser = subparsers.add_parser(
        'plan', help='memory, throughput, duration and checkpoint cost of a YAML on a cluster',
        description='Estimate per-GPU memory, the largest micro-batch, tokens/s, time to max_duration '
                    'and checkpoint/failure costs, without building the model.')
    if not isinstance(parser, _IntermixedParser):
        parser.__class__ = _IntermixedParser  # adds behaviour only, no state
    add_arguments(parser)
    parser.set_defaults(func=cmd_plan)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from foundry.config.errors import ConfigError

    parser = _IntermixedParser(prog='foundry plan', description='Plan a training run.')
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_plan(args)
    except ConfigError as e:
        print(f'foundry: config error: {e}', file=sys.stderr)
        return 2
