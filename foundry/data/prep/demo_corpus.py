"""The embedded default corpus behind `make demo`, built from this machine's Python install.

Every machine that runs foundry has the Python standard library, so the demo needs no
downloads: an English stream made of stdlib docstrings (read with ``ast``, so no module is
imported and nothing runs) and a code stream made of stdlib ``.py`` sources. File lists are
sorted and then shuffled with a fixed seed, so a given Python version always yields the same
corpus while the byte budget still samples across the whole library rather than a-to-c.

Layout under ``out_root``::

    corpus/english.jsonl, corpus/code.jsonl   {"text", "source", "split"} per document
    tokenizer.json                            byte-level BPE, <|endoftext|> = id 0 = eos
    english/{train,val}/, code/{train,val}/   MDS token samples of seq_len tokens
    manifest.json                             what was built from what (for skipping)

Each step records the parameters it was built from in manifest.json and is skipped when they
match, so rerunning is nearly free; outputs are written to temporary names and renamed, so an
interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import ast
import gc
import json
import os
import random
import shutil
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from foundry.data.errors import DataError

__all__ = ['build_demo_data', 'train_demo_tokenizer', 'write_demo_corpus', 'DemoData',
           'STREAMS', 'EOS_TOKEN']

EOS_TOKEN = '<|endoftext|>'
STREAMS = ('english', 'code')
_FORMAT_VERSION = 1
_SEED = 1234
# ~4 samples of 2048 tokens at ~5 bytes/token (an under-estimate for an 8k byte-level BPE).
_MIN_VAL_BYTES = 40_000
_SKIP_DIRS = {'site-packages', 'dist-packages', '__pycache__', 'test', 'tests', 'idle_test',
              '_bundled'}


@dataclass
class DemoData:
    """Where build_demo_data put things."""
    out_root: str
    tokenizer: str
    streams: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> split -> dir
    seconds: float = 0.0


def build_demo_data(out_root: str, tokenizer_path: str | None = None, seq_len: int = 512,
                    max_bytes_per_stream: int = 3_000_000, vocab_size: int = 8192,
                    val_fraction: float = 0.05, verbose: bool = True) -> DemoData:
    """Build (or reuse) the demo corpus, tokenizer, and MDS datasets under ``out_root``.

    Args:
        out_root: folder for everything (created).
        tokenizer_path: use this tokenizer instead of training one on the corpus.
        seq_len: tokens per MDS sample; match the training max_seq_len.
        max_bytes_per_stream: UTF-8 bytes of text per stream (bounds time and disk).
        vocab_size: size of the trained BPE (ignored with tokenizer_path).
        val_fraction: share of each stream's bytes held out as whole documents for val.
    """
    start = time.perf_counter()
    if seq_len < 1 or max_bytes_per_stream < 1:
        raise DataError('seq_len and max_bytes_per_stream must be positive.')
    out_root = os.path.abspath(os.path.expanduser(out_root))
    os.makedirs(out_root, exist_ok=True)
    manifest_path = os.path.join(out_root, 'manifest.json')
    manifest = _read_json(manifest_path)
    say = print if verbose else (lambda *a, **k: None)

    corpus_dir = os.path.join(out_root, 'corpus')
    corpus_key = {'format': _FORMAT_VERSION, 'python': sys.version.split()[0],
                  'stdlib': _stdlib_dir(), 'max_bytes': max_bytes_per_stream,
                  'val_fraction': val_fraction}
    jsonl = {name: os.path.join(corpus_dir, f'{name}.jsonl') for name in STREAMS}
    if manifest.get('corpus') != corpus_key or not all(map(os.path.isfile, jsonl.values())):
        say(f'[demo data] collecting {max_bytes_per_stream / 1e6:.1f} MB per stream from '
            f'{_stdlib_dir()}', flush=True)
        write_demo_corpus(corpus_dir, max_bytes_per_stream, val_fraction)
        manifest = {'corpus': corpus_key}  # everything downstream is stale
        _write_json(manifest_path, manifest)

    if tokenizer_path is None:
        tokenizer_path = os.path.join(out_root, 'tokenizer.json')
        tok_key = {'corpus': corpus_key, 'vocab_size': vocab_size}
        if manifest.get('tokenizer') != tok_key or not os.path.isfile(tokenizer_path):
            say(f'[demo data] training a {vocab_size}-token byte-level BPE', flush=True)
            train_demo_tokenizer(list(jsonl.values()), vocab_size, tokenizer_path)
            manifest = {'corpus': corpus_key, 'tokenizer': tok_key}
            _write_json(manifest_path, manifest)
    else:
        tokenizer_path = os.path.abspath(os.path.expanduser(tokenizer_path))
        tok_key = {'path': tokenizer_path, 'mtime': _mtime(tokenizer_path)}

    mds_key = {'corpus': corpus_key, 'tokenizer': tok_key, 'seq_len': seq_len}
    splits = {name: {s: os.path.join(out_root, name, s) for s in ('train', 'val')}
              for name in STREAMS}
    result = DemoData(out_root=out_root, tokenizer=tokenizer_path, streams=splits)
    done = all(os.path.isfile(os.path.join(d, 'index.json'))
               for per in splits.values() for d in per.values())
    if manifest.get('mds') != mds_key or not done:
        # Imported here so that an up-to-date rerun does not pay for transformers/streaming.
        from foundry.data.prep.convert import convert_documents
        from foundry.data.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(tokenizer_path)
        for name in STREAMS:
            for split, final in splits[name].items():
                tmp = f'{final}.tmp-{os.getpid()}'
                shutil.rmtree(tmp, ignore_errors=True)
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')  # eos/wrap notes are for user data
                    summary = convert_documents(_texts(jsonl[name], split), tmp, tokenizer,
                                                seq_len, progress=False, verbose=False)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                summary.out_root = final
                say(f'[demo data] {name}/{split}: {summary}', flush=True)
        manifest['tokenizer'] = tok_key
        manifest['mds'] = mds_key
        _write_json(manifest_path, manifest)
    result.seconds = time.perf_counter() - start
    say(f'[demo data] ready in {result.seconds:.1f}s under {out_root}', flush=True)
    return result


def write_demo_corpus(corpus_dir: str, max_bytes_per_stream: int,
                      val_fraction: float = 0.05) -> dict[str, str]:
    """Write ``english.jsonl`` and ``code.jsonl`` under ``corpus_dir``; return their paths.

    Whole documents from the end of each stream's (shuffled) order go to ``val`` until they
    hold ``val_fraction`` of its bytes, and at least ``_MIN_VAL_BYTES`` (a few long samples)
    so small test corpora still get a usable val split.
    """
    os.makedirs(corpus_dir, exist_ok=True)
    files = _stdlib_files()
    makers = {'english': _docstring_documents, 'code': _source_documents}
    paths = {}
    for name in STREAMS:
        docs = list(_take_bytes(makers[name](files), max_bytes_per_stream))
        if len(docs) < 2:
            raise DataError(f'found too little {name} text in {_stdlib_dir()} for a train/val '
                            'split; raise max_bytes_per_stream.')
        total = sum(len(text.encode()) for _, text in docs)
        want_val = min(max(val_fraction * total, _MIN_VAL_BYTES), total / 2)
        n_val, val_bytes = 0, 0
        while val_bytes < want_val and n_val < len(docs) - 1:
            n_val += 1
            val_bytes += len(docs[-n_val][1].encode())
        paths[name] = os.path.join(corpus_dir, f'{name}.jsonl')
        tmp = f'{paths[name]}.tmp-{os.getpid()}'
        with open(tmp, 'w', encoding='utf-8') as f:
            for i, (source, text) in enumerate(docs):
                split = 'val' if i >= len(docs) - n_val else 'train'
                f.write(json.dumps({'text': text, 'source': source, 'split': split}) + '\n')
        os.replace(tmp, paths[name])
    return paths


def train_demo_tokenizer(files: Sequence[str], vocab_size: int = 8192,
                         out_path: str = 'tokenizer.json') -> str:
    """Train a byte-level BPE on ``files`` and save it as a tokenizer.json at ``out_path``.

    ``.jsonl`` files contribute their records' ``text`` fields (training on raw JSON would
    learn escape sequences); other files contribute their whole contents. ``<|endoftext|>``
    is id 0 and is what build_tokenizer picks as eos (and pad).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 257:
        raise DataError(f'vocab_size {vocab_size} is too small: a byte-level BPE needs 256 '
                        'byte tokens plus <|endoftext|>.')
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f'tokenizer training file {path!r} does not exist.')
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_training_texts(files), trainer=trainer)
    if tokenizer.token_to_id(EOS_TOKEN) != 0:
        raise DataError(f'internal error: {EOS_TOKEN} did not get id 0.')
    out_path = os.path.abspath(os.path.expanduser(out_path))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = f'{out_path}.tmp-{os.getpid()}'
    tokenizer.save(tmp)
    os.replace(tmp, out_path)
    return out_path


def _training_texts(files: Sequence[str]) -> Iterator[str]:
    for path in files:
        if path.endswith('.jsonl'):
            yield from _texts(path, None)
        else:
            with open(path, encoding='utf-8') as f:
                yield f.read()


def _texts(jsonl: str, split: str | None) -> Iterator[str]:
    with open(jsonl, encoding='utf-8') as f:
        for line in f:
            record = json.loads(line)
            if split is None or record['split'] == split:
                yield record['text']


def _stdlib_dir() -> str:
    return sysconfig.get_paths()['stdlib']


def _stdlib_files() -> list[tuple[str, str]]:
    """(relative path, absolute path) of stdlib .py files, in a fixed pseudo-random order."""
    root = _stdlib_dir()
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(('.', 'config-')))
        for name in files:
            if name.endswith('.py') and not name.startswith('test_'):
                full = os.path.join(dirpath, name)
                found.append((os.path.relpath(full, root), full))
    if not found:
        raise DataError(f'no Python sources found under {root}; the demo corpus needs the '
                        'standard library sources (some minimal images strip them).')
    found.sort()
    random.Random(_SEED).shuffle(found)
    return found


def _read_source(path: str) -> str | None:
    import tokenize
    try:
        with tokenize.open(path) as f:  # honours PEP 263 encoding cookies
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _source_documents(files: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for rel, full in files:
        text = _read_source(full)
        if text and text.strip():
            yield rel, text


def _parse(text: str) -> ast.Module:
    """ast.parse with the garbage collector paused.

    CPython 3.11's AST constructor counts its recursion depth and raises SystemError ("AST
    constructor recursion depth mismatch") when Python code runs in the middle of it and leaves the
    count unbalanced; a collection that finalises an object with a __del__ (an abandoned Composer
    Trainer closing its loggers, in a test process) does exactly that.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(text)
    finally:
        if enabled:
            gc.enable()


def _docstring_documents(files: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """One document per module: its docstrings, module first, in source order."""
    for rel, full in files:
        text = _read_source(full)
        if not text:
            continue
        try:
            tree = _parse(text)
        except (SyntaxError, ValueError):
            continue
        docs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) > 40:  # skip one-liners like "Return self."
                    docs.append((getattr(node, 'lineno', 0), doc))
        if docs:
            yield rel, '\n\n'.join(doc for _, doc in sorted(docs, key=lambda d: d[0]))


def _take_bytes(docs: Iterable[tuple[str, str]], budget: int) -> Iterator[tuple[str, str]]:
    """Documents until ``budget`` UTF-8 bytes; the last one is cut at a line boundary."""
    used = 0
    for source, text in docs:
        size = len(text.encode())
        if used + size > budget:
            room = budget - used
            cut = text.encode()[:room].decode('utf-8', 'ignore').rsplit('\n', 1)[0]
            if len(cut) > 200:
                yield source, cut
            return
        used += size
        yield source, text


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, data: dict) -> None:
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        raise DataError(f'tokenizer {path!r} does not exist.') from None
