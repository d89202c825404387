"""The `foundry` command: look at a config, a plan or a checkpoint without training.

    foundry info YAML [key=value ...]           parameters, FLOPs per token, data mixture
    foundry export hf CHECKPOINT OUT_DIR        a Composer checkpoint as a Hugging Face folder
    foundry export gguf SRC OUT.gguf            a checkpoint or HF folder as one GGUF file for llama.cpp
    foundry generate SRC --prompt TEXT          sample from a checkpoint or HF folder, streamed to the terminal
    foundry plan YAML --gpus N --gpu KIND       memory, speed and duration on a cluster, before paying for it
    foundry eval SRC TASKS.yaml                 ICL tasks, gauntlet, perplexity of a checkpoint or HF folder
    foundry plot RUN_FOLDER [RUN_FOLDER ...]    loss, tokens/s, learning rate and eval scores as one PNG
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from foundry.config.errors import ConfigError
from foundry.data.errors import DataError


def cmd_info(args: argparse.Namespace) -> int:
    from foundry.config.load import load_config
    from foundry.models import count_parameters
    from foundry.models.flops import flops_per_token
    from foundry.models.pretrained import model_config_from_section

    from foundry.config.rules import check_environment

    cfg = load_config(args.yaml, args.overrides)  # the pass training runs before launch: any error exits 2
    check_environment(cfg)
    model_cfg = {k: v for k, v in cfg.model.items() if k not in ('name', 'loss_fn')}
    mpt_config = model_config_from_section(model_cfg)
    n_params = count_parameters(mpt_config)
    seq_len = (cfg.train_loader.get('dataset') or {}).get('max_seq_len') or mpt_config.max_seq_len
    tokens_per_batch = cfg.global_train_batch_size * seq_len

    print(f'config: {args.yaml}')
    print(f'model: {cfg.model["name"]}  d_model={mpt_config.d_model} n_layers={mpt_config.n_layers} '
          f'n_heads={mpt_config.n_heads} vocab_size={mpt_config.vocab_size} max_seq_len={mpt_config.max_seq_len}')
    print(f'parameters: {n_params:,} ({_human(n_params)})')
    print(f'training FLOPs per token at seq {seq_len}: {flops_per_token(mpt_config, seq_len):.4g}')
    print(f'global batch: {cfg.global_train_batch_size} x {seq_len} = {tokens_per_batch:,} tokens; '
          f'max_duration: {cfg.max_duration}')
    for label, loader in (('train_loader', cfg.train_loader), ('eval_loader', cfg.eval_loader)):
        if loader is not None:
            duration = cfg.max_duration if label == 'train_loader' else None
            _print_streams(label, loader, duration, cfg.global_train_batch_size, seq_len)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from foundry.export.hf import export_hf

    export_hf(args.checkpoint, args.out_dir, dtype=args.dtype, meta_dir=args.meta)
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from foundry.export.gguf import export_gguf

    export_gguf(args.src, args.out, outtype=args.outtype, meta_dir=args.meta)
    return 0


def _print_streams(label: str, loader: dict, max_duration, global_batch_size: int,
                  seq_len: int) -> None:
    """Weight, size (where the index is reachable) and run epochs of every stream."""
    from foundry.data.stream.mixture import describe_mixture, format_mixture

    if loader.get('name') == 'finetuning':  # prompt/response or chat data, not a stream mixture
        from foundry.data.stream.finetuning.settings import describe_finetuning

        print('\n'.join(describe_finetuning(label, loader)))
        return

    report = describe_mixture(label, loader, max_duration=max_duration,
                              global_batch_size=global_batch_size, seq_len=seq_len)
    print(format_mixture(report, global_batch_size, seq_len, max_duration))


def _human(n: int) -> str:
    for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.2f}{unit}'
    return str(n)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's usage-plus-error on a bad argument, as one line (its subcommands' parsers inherit it)."""

    def error(self, message: str):
        from foundry.user_errors import argparse_error

        argparse_error(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog='foundry', description='Pretrain MPT-style language models.')
    sub = parser.add_subparsers(dest='command', required=True)
    info = sub.add_parser('info', help='parameters, FLOPs per token and data streams of a training YAML')
    info.add_argument('yaml')
    info.add_argument('overrides', nargs='*', help='key=value overrides, as for training')
    info.set_defaults(func=cmd_info)
    export = sub.add_parser('export', help='convert a checkpoint for other tools')
    export_sub = export.add_subparsers(dest='format', required=True)
    hf = export_sub.add_parser('hf', help='Hugging Face folder: config.json, safetensors, tokenizer')
    hf.add_argument('checkpoint', help='sharded checkpoint folder, full .pt file, or latest-rank0.pt.symlink; local or s3://')
    hf.add_argument('out_dir')
    hf.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default=None, help='cast floating weights')
    hf.add_argument('--meta', default=None, help='folder with the model config.json and tokenizer (default: the run\'s hf_meta)')
    hf.set_defaults(func=cmd_export_hf)
    gguf = export_sub.add_parser('gguf', help='one GGUF file for llama.cpp (and llama-cpp-python, Ollama, LM Studio)')
    gguf.add_argument('src', help='Composer checkpoint (sharded folder, .pt, latest-rank0.pt; local or s3://) or HF MPT folder')
    gguf.add_argument('out', help='the .gguf file to write')
    gguf.add_argument('--outtype', choices=['f32', 'f16', 'bf16', 'q8_0'], default='f16',
                      help='matrices\' type (norms, biases and positions stay f32)')
    gguf.add_argument('--meta', default=None, help='folder with the model config.json and tokenizer (default: the run\'s hf_meta)')
    gguf.set_defaults(func=cmd_export_gguf)
    from foundry.plan import add_plan_parser

    add_plan_parser(sub)
    from foundry.eval.cli import add_eval_parser
    from foundry.plot import add_plot_parser

    add_eval_parser(sub)
    add_plot_parser(sub)
    from foundry.generate import add_generate_parser

    add_generate_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        kind = 'config error' if isinstance(e, ConfigError) else 'data error'
        print(f'foundry: {kind}: {" ".join(str(e).split())}', file=sys.stderr)
        return 2
    except Exception as e:  # an object store refusing, say: one line naming the fix (foundry/user_errors.py)
        from foundry.user_errors import runtime_fault

        message = runtime_fault(e)
        if message is None:
            raise
        print(f'foundry: {message}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
