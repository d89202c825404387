"""`foundry generate SRC --prompt TEXT`: try a checkpoint without writing code.

SRC is a Composer checkpoint (sharded folder, .pt, latest-rank0.pt; local or s3://, with its run's
hf_meta/ beside it) or a Hugging Face MPT folder. Sampling flags are transformers' `generate()`
names (greedy unless --do_sample); the text is streamed to the terminal as it is produced.

An ALiBi model runs past the length it was trained at (ALiBi's bias is computed for the actual
distance, nothing is sized by max_seq_len); a model with learned position embeddings has no
positions past max_seq_len, so a prompt plus --max_new_tokens longer than that is refused.
"""

from __future__ import annotations

import argparse
import sys

from foundry.config.errors import ConfigError


def add_generate_parser(sub) -> None:
    parser = sub.add_parser('generate', help='sample text from a checkpoint or HF folder, streamed to the terminal')
    parser.add_argument('src', help='Composer checkpoint (sharded folder, .pt, latest-rank0.pt; local or s3://) or HF folder')
    parser.add_argument('--prompt', required=True, help='the text to continue')
    parser.add_argument('--max_new_tokens', type=int, default=64)
    parser.add_argument('--do_sample', action='store_true', help='sample (default: greedy)')
    parser.add_argument('--temperature', type=float, default=None)
    parser.add_argument('--top_p', type=float, default=None)
    parser.add_argument('--top_k', type=int, default=None)
    parser.add_argument('--repetition_penalty', type=float, default=None)
    parser.add_argument('--seed', type=int, default=None, help='seeds torch before sampling')
    parser.add_argument('--meta', default=None, help='config + tokenizer folder for a checkpoint (default: its hf_meta)')
    parser.add_argument('--device', choices=['cpu', 'gpu'], default=None, help='default: gpu when CUDA is available')
    parser.set_defaults(func=cmd_generate)


def check_length(config, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a length the model has no positions for (learned position embeddings only)."""
    total = prompt_tokens + max_new_tokens
    if config.learned_pos_emb and total > config.max_seq_len:
        raise ConfigError(f'the prompt ({prompt_tokens} tokens) plus --max_new_tokens {max_new_tokens} is {total} tokens, '
                          f'past max_seq_len {config.max_seq_len}: this model uses learned position embeddings, which '
                          f'have no positions beyond it; shorten the prompt or lower --max_new_tokens')


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from foundry.eval.cli import load_model

    for name in ('max_new_tokens', 'top_k'):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f'--{name} must be a positive integer, got {value}')
    sampling = {k: getattr(args, k) for k in ('temperature', 'top_p', 'top_k', 'repetition_penalty')
                if getattr(args, k) is not None}
    if sampling.keys() - {'repetition_penalty'} and not args.do_sample:
        raise ConfigError(f'--{sorted(sampling.keys() - {"repetition_penalty"})[0]} applies only when sampling: '
                          f'add --do_sample (without it, generation is greedy)')
    device_kind = args.device or ('gpu' if torch.cuda.is_available() else 'cpu')
    if device_kind == 'gpu' and not torch.cuda.is_available():
        raise ConfigError('--device gpu, but torch sees no CUDA device; use --device cpu')
    model, tokenizer = load_model(args.src, args.meta)
    device = torch.device('cuda' if device_kind == 'gpu' else 'cpu')
    model.to(device).eval()
    encoded = tokenizer(args.prompt, return_tensors='pt')
    # Only what the model takes: a tokenizer saved by plain transformers 4.x also returns token_type_ids.
    inputs = {k: encoded[k].to(device) for k in ('input_ids', 'attention_mask') if k in encoded}
    prompt_tokens = inputs['input_ids'].shape[1]
    if prompt_tokens == 0:
        raise ConfigError('--prompt encodes to no tokens; give some text')
    config = model.config
    check_length(config, prompt_tokens, args.max_new_tokens)
    if prompt_tokens + args.max_new_tokens > config.max_seq_len:
        print(f'foundry: note: {prompt_tokens + args.max_new_tokens} tokens is past the training length '
              f'{config.max_seq_len}; ALiBi extrapolates, quality may drop', file=sys.stderr)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = TextStreamer(tokenizer)  # prints the prompt, then each piece of text as it is decoded
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, streamer=streamer, **sampling)
    new = out.shape[1] - prompt_tokens
    print(f'[{new} new tokens; prompt {prompt_tokens} tokens; {"sampled" if args.do_sample else "greedy"}]',
          file=sys.stderr)
    return 0
