"""Composer checkpoint or Hugging Face MPT folder -> one GGUF file that llama.cpp runs as `mpt`.

    foundry export gguf SRC OUT.gguf --outtype f32|f16|bf16|q8_0

Written with the `gguf` package (ggml's own writer). The metadata is what llama.cpp's MPT loader
reads, from the model's real config: feed-forward width `d_model * expansion_ratio` and the norm
epsilon (llama.cpp's own converter writes 4 * d_model and 1e-5 whatever the config says), head
counts (GQA/MQA), `max_alibi_bias` (0 without ALiBi), `clamp_kqv` (clip_qkv). Optional tensors
llama.cpp reads when present: biases (no_bias: false), a learned position table, an untied output
matrix. The tokenizer goes in as llama.cpp's byte-level BPE ("gpt2"): tokens, types, merges,
special ids, the chat template. What llama.cpp would compute differently is refused before the
file is opened (gguf_checks.py).

Tensors are written as they are read: the header and tensor index first (shapes come from the
checkpoint's index), then each tensor, so a sharded checkpoint converts a group of tensors at a time.
Like llama.cpp's converter, 1-D tensors, norms, biases and the position table stay f32, and a
matrix whose rows do not split into q8_0 blocks of 32 is written f16.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from foundry.config.errors import ConfigError

OUTTYPES = ('f32', 'f16', 'bf16', 'q8_0')


@dataclass
class _Source:
    config: object  # MPTConfig
    tokenizer_dir: str
    shapes: dict  # HF tensor name -> (shape, torch dtype), in reading order
    groups: Callable[[], Iterator[dict]]  # yields {HF name: tensor} groups


def export_gguf(src: str, out_path: str, outtype: str = 'f16', meta_dir: Optional[str] = None) -> str:
    """Write `out_path`; a remote checkpoint is downloaded to a temporary folder, removed after."""
    if outtype not in OUTTYPES:
        raise ConfigError(f'--outtype {outtype}: choose one of {", ".join(OUTTYPES)}')
    _check_out_path(out_path)
    if '://' not in src:
        return _export(src, _open_source(src, src, meta_dir), out_path, outtype)
    from foundry.checkpoint.remote import download_checkpoint
    from foundry.user_errors import runtime_fault

    with tempfile.TemporaryDirectory(prefix='foundry-export-') as tmp:
        try:
            local = download_checkpoint(src, tmp)
        except ConfigError:
            raise
        except Exception as e:  # credentials, a missing bucket or key: one line naming the checkpoint
            message = runtime_fault(e)
            if message is None:
                raise
            raise ConfigError(f'{src}: {message}') from e
        return _export(src, _open_source(src, local, meta_dir), out_path, outtype)


def _check_out_path(out_path: str) -> None:
    if os.path.isdir(out_path):
        raise ConfigError(f'OUT {out_path} is a folder; give the path of the .gguf file to write')
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise ConfigError(f'OUT {out_path}: its parent folder {parent} does not exist')


def _open_source(given: str, local: str, meta_dir: Optional[str]) -> _Source:
    from foundry.models.mpt.configuration import MPTConfig

    if os.path.isdir(local) and os.path.isfile(os.path.join(local, 'config.json')):
        from foundry.models.mpt.foreign_keys import folder_has_split_qkv, fuse_split_qkv, read_folder_tensors

        config = MPTConfig.from_pretrained(local)
        _refuse(config, meta_dir or local)
        tensors = read_folder_tensors(local)
        if folder_has_split_qkv(local):
            tensors = fuse_split_qkv(tensors)
        return _Source(config, meta_dir or local, {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()},
                       lambda: iter([tensors]))
    # The one place this module reads Composer checkpoints (foundry's checkpoint readers).
    from foundry.checkpoint.meta import find_run_meta
    from foundry.checkpoint.reader import iter_model_tensors, model_tensor_names, resolve_local_checkpoint
    from foundry.export.hf import check_whole_checkpoint

    path = resolve_local_checkpoint(local)
    check_whole_checkpoint(given, path)
    meta = meta_dir or find_run_meta(path)
    config = MPTConfig.from_pretrained(meta)
    _refuse(config, meta)  # before reading any weights
    shapes = {k: (tuple(shape), dtype) for k, (shape, dtype) in model_tensor_names(path).items()}
    return _Source(config, meta, shapes, lambda: iter_model_tensors(path))


def _refuse(config, tokenizer_dir: str) -> None:
    from foundry.export.gguf_checks import model_problems, tokenizer_problems

    problems = model_problems(config) + tokenizer_problems(tokenizer_dir, config.vocab_size)
    if problems:
        raise ConfigError(f'cannot export to GGUF: {"; ".join(problems)}')


@dataclass
class _Planned:
    hf_name: str
    gguf_name: str
    qtype: object  # gguf.GGMLQuantizationType
    shape: tuple


def _plan(source: _Source, outtype: str) -> list[_Planned]:
    """Each written tensor's GGUF name and type, in reading order; names llama.cpp's MPT graph does not read are refused."""
    import gguf

    config = source.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MPT, config.n_layers)
    wanted = {'f32': gguf.GGMLQuantizationType.F32, 'f16': gguf.GGMLQuantizationType.F16,
              'bf16': gguf.GGMLQuantizationType.BF16, 'q8_0': gguf.GGMLQuantizationType.Q8_0}[outtype]
    planned = []
    for hf_name, (shape, _) in source.shapes.items():
        if hf_name == 'lm_head.weight' and config.tie_word_embeddings:
            continue  # tied: llama.cpp uses token_embd when the file has no output matrix
        if hf_name == 'transformer.wpe.weight' and not config.learned_pos_emb:
            continue  # MPT-7B-style checkpoints carry a table ALiBi models never add
        gguf_name = names.get_name(hf_name, try_suffixes=('.weight', '.bias'))
        if gguf_name is None:
            raise ConfigError(f'cannot export to GGUF: tensor {hf_name} has no place in llama.cpp\'s MPT graph')
        if len(shape) < 2 or not gguf_name.endswith('.weight') or gguf_name.endswith('_norm.weight') \
                or gguf_name.startswith('position_embd'):
            qtype = gguf.GGMLQuantizationType.F32  # what llama.cpp's converter keeps in f32
        else:
            qtype = wanted
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            if shape[-1] % block:
                qtype = gguf.GGMLQuantizationType.F16
        planned.append(_Planned(hf_name, gguf_name, qtype, tuple(shape)))
    return planned


def _encode(tensor, qtype) -> np.ndarray:
    import gguf

    data = tensor.detach().to('cpu').float().numpy()
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    return gguf.quants.quantize(data, qtype)


def _export(given: str, source: _Source, out_path: str, outtype: str) -> str:
    import gguf

    planned = _plan(source, outtype)
    partial = out_path + '.partial'
    writer = gguf.GGUFWriter(partial, 'mpt')
    try:
        _write_metadata(writer, source, outtype, '/'.join(given.rstrip('/').split('/')[-2:]))
        for p in planned:
            if p.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                dtype = np.float32 if p.qtype == gguf.GGMLQuantizationType.F32 else np.float16
                nbytes = int(np.prod(p.shape)) * np.dtype(dtype).itemsize
                writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(dtype), nbytes)
            else:
                byte_shape = gguf.quant_shape_to_byte_shape(p.shape, p.qtype)
                writer.add_tensor_info(p.gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                       raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        order = list(planned)
        wanted = {p.hf_name for p in planned}
        pending: dict = {}
        total = 0
        for group in source.groups():
            pending.update({k: v for k, v in group.items() if k in wanted})
            while order and order[0].hf_name in pending:
                p = order.pop(0)
                data = _encode(pending.pop(p.hf_name), p.qtype)
                writer.write_tensor_data(data)
                total += data.nbytes
            del group
        if order:
            raise ConfigError(f'{given}: tensor {order[0].hf_name} is in the checkpoint index but was not read')
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        if os.path.exists(partial):
            os.remove(partial)  # a refused or interrupted export leaves no file behind
        raise
    config = source.config
    context = (f'context up to max_seq_len {config.max_seq_len} (learned positions)' if config.learned_pos_emb
               else f'trained at {config.max_seq_len} tokens; ALiBi runs past it (set n_ctx)'
               if config.attn_config['alibi'] else f'trained at {config.max_seq_len} tokens')
    print(f'exported {len(planned)} tensors ({total / 2**20:.1f} MiB, {outtype}) from {given} to {out_path}; {context}')
    return out_path


def _write_metadata(writer, source: _Source, outtype: str, name: str) -> None:
    import gguf

    c = source.config
    attn = c.attn_config
    writer.add_name(name)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.ffn_hidden_size)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(attn['kv_n_heads'])
    writer.add_layer_norm_eps(c.norm_eps)
    writer.add_max_alibi_bias(float(attn['alibi_bias_max']) if attn['alibi'] else 0.0)
    if attn['clip_qkv']:
        writer.add_clamp_kqv(float(attn['clip_qkv']))
    writer.add_file_type({'f32': gguf.LlamaFileType.ALL_F32, 'f16': gguf.LlamaFileType.MOSTLY_F16,
                          'bf16': gguf.LlamaFileType.MOSTLY_BF16, 'q8_0': gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(writer, source.tokenizer_dir, c.vocab_size)


def _write_tokenizer(writer, tokenizer_dir: str, vocab_size: int) -> None:
    """llama.cpp's "gpt2" vocabulary: byte-level tokens (ids past the tokenizer padded as unused), merges, specials."""
    import gguf
    from transformers import PreTrainedTokenizerFast

    with open(os.path.join(tokenizer_dir, 'tokenizer.json'), encoding='utf-8') as f:
        spec = json.load(f)
    by_id = {i: t for t, i in spec['model']['vocab'].items()}
    added = {t['id']: t for t in spec.get('added_tokens') or []}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]['content'])
            types.append(gguf.TokenType.CONTROL if added[i].get('special') else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # the embedding is padded past the tokenizer (e.g. 50432 rows for GPT-NeoX's 50277 ids)
            tokens.append(f'[PAD{i}]')
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model('gpt2')
    writer.add_tokenizer_pre('gpt-2')  # the GPT-2 split pattern (gguf_checks refuses any other)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = spec['model'].get('merges') or []
    writer.add_token_merges([m if isinstance(m, str) else ' '.join(m) for m in merges])

    # Not AutoTokenizer: it reads the folder's config.json too, and transformers' MptConfig refuses GQA there.
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    for kind in ('bos', 'eos', 'unk', 'pad'):
        token_id = getattr(tok, f'{kind}_token_id', None)
        if token_id is not None:
            getattr(writer, f'add_{kind}_token_id')(int(token_id))
    plain = tok('a', add_special_tokens=False)['input_ids']
    full = tok('a')['input_ids']
    writer.add_add_bos_token(bool(tok.bos_token_id is not None and full[:1] == [tok.bos_token_id] != plain[:1]))
    writer.add_add_eos_token(bool(tok.eos_token_id is not None and full[-1:] == [tok.eos_token_id] != plain[-1:]))
    template = getattr(tok, 'chat_template', None)
    if template:
        writer.add_chat_template(template)
