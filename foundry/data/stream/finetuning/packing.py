"""Pack several finetuning examples into one sequence, and choose how many (``packing_ratio``).

With ``packing_ratio: r`` the loader reads ``ceil(r * device_batch_size)`` examples per batch;
the collator packs them (first-fit decreasing, with whatever did not fit last time) into bins
of at most ``max_seq_len`` tokens and emits the ``device_batch_size`` fullest; the rest wait
for the next batch. Each example keeps its own ``sequence_id``, so with
``attn_uses_sequence_id`` attention stays inside it, and since ALiBi's bias depends only on the
distance between tokens, every example sees the same positions it would alone.

``packing_ratio: auto`` replays that procedure on the data's real lengths for a range of ratios
and picks the one that wastes the least: padding in the emitted rows plus tokens still waiting
at the end (a ratio set too high makes the waiting list grow without bound).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

__all__ = ['first_fit_decreasing', 'choose_bins', 'simulate', 'auto_packing_ratio',
           'PackingReport', 'packing_report']


def first_fit_decreasing(lengths: Sequence[int], max_seq_len: int,
                         min_bins: int = 0) -> list[list[int]]:
    """Bins (lists of indices into ``lengths``) of total length <= max_seq_len each.

    The ``min_bins`` longest examples each open a bin first, so a batch with at least that many
    examples always fills that many rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = [[i] for i in order[:min_bins]]
    room: list[int] = [max_seq_len - lengths[i] for i in order[:min_bins]]
    for i in order[min_bins:]:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_seq_len - lengths[i])
    return bins


def choose_bins(lengths: Sequence[int], rows: int, max_seq_len: int
                ) -> tuple[list[list[int]], list[int]]:
    """The ``rows`` fullest bins (each in the examples' original order) and the leftover indices."""
    bins = first_fit_decreasing(lengths, max_seq_len, min_bins=rows)
    bins.sort(key=lambda b: -sum(lengths[i] for i in b))
    chosen = [sorted(b) for b in bins[:rows]]
    leftover = sorted(i for b in bins[rows:] for i in b)
    return chosen, leftover


@dataclass
class Simulation:
    ratio: float
    rows: int = 0
    tokens: int = 0              # real tokens in emitted rows
    waiting_tokens: int = 0      # tokens still waiting after the last batch
    max_seq_len: int = 0

    @property
    def padding(self) -> float:
        return 1 - self.tokens / max(1, self.rows * self.max_seq_len)

    @property
    def waste(self) -> float:
        slots = max(1, self.rows * self.max_seq_len)
        return (slots - self.tokens + self.waiting_tokens) / slots


def simulate(lengths: Sequence[int], rows: int, ratio: float, max_seq_len: int) -> Simulation:
    """What the packing collator would emit over ``lengths`` (in loader order) at ``ratio``."""
    per_batch = max(rows, math.ceil(ratio * rows))
    sim = Simulation(ratio=ratio, max_seq_len=max_seq_len)
    waiting: list[int] = []
    for start in range(0, len(lengths) - per_batch + 1, per_batch):  # drop_last, as training
        items = waiting + list(lengths[start:start + per_batch])
        chosen, leftover = choose_bins(items, rows, max_seq_len)
        sim.rows += len(chosen)
        sim.tokens += sum(items[i] for b in chosen for i in b)
        waiting = [items[i] for i in leftover]
    sim.waiting_tokens = sum(waiting)
    return sim


def auto_packing_ratio(lengths: Sequence[int], rows: int, max_seq_len: int, seed: int = 0,
                       max_examples: int = 4096) -> tuple[float, list[Simulation]]:
    """The candidate ratio (1 to ~1.5x max_seq_len / mean length) with the least waste."""
    lengths = list(lengths)
    if len(lengths) > max_examples:
        lengths = random.Random(seed).sample(lengths, max_examples)
    else:
        random.Random(seed).shuffle(lengths)  # the loader's order is shuffled too
    mean = sum(lengths) / max(1, len(lengths))
    top = max(1.0, min(max_seq_len / max(1.0, mean) * 1.5, len(lengths) / max(1, rows) / 4))
    candidates, r = [], 1.0
    while r <= top + 1e-9:
        candidates.append(round(r, 2))
        r += 0.25 if r < 8 else (1.0 if r < 16 else 4.0)
    sims = [simulate(lengths, rows, c, max_seq_len) for c in candidates]
    best = min(sims, key=lambda s: (round(s.waste, 4), s.ratio))
    return best.ratio, sims


@dataclass
class PackingReport:
    examples: int
    tokens: int
    max_seq_len: int
    ratio: float
    auto: bool
    rows_unpacked: int
    rows_packed: int
    padding_unpacked: float
    padding_packed: float
    waiting_tokens: int

    def lines(self) -> list[str]:
        how = 'auto' if self.auto else 'set'
        saved = 1 - self.rows_packed / max(1, self.rows_unpacked)
        return [
            f'packing: {self.examples:,} examples, {self.tokens:,} tokens, max_seq_len '
            f'{self.max_seq_len}, packing_ratio {self.ratio:g} ({how})',
            f'  without packing: {self.rows_unpacked:,} sequences, '
            f'{100 * self.padding_unpacked:.1f}% padding',
            f'  with packing   : {self.rows_packed:,} sequences, {100 * self.padding_packed:.1f}% '
            f'padding ({100 * saved:.1f}% fewer sequences; '
            f'{self.waiting_tokens:,} tokens still waiting at the end)',
        ]


def packing_report(lengths: Sequence[int], rows: int, max_seq_len: int, ratio: float,
                   auto: bool) -> PackingReport:
    """Padding with and without packing over one pass of ``lengths``."""
    lengths = list(lengths)
    tokens = sum(lengths)
    unpacked = len(lengths)
    packed = simulate(lengths, rows, ratio, max_seq_len)
    # Scale the emitted rows to the whole pass: simulate drops the last partial batch.
    per_batch = max(rows, math.ceil(ratio * rows))
    full = (len(lengths) // per_batch) * per_batch
    rows_packed = packed.rows + (math.ceil((len(lengths) - full) / per_batch * rows)
                                 if full < len(lengths) else 0)
    return PackingReport(examples=len(lengths), tokens=tokens, max_seq_len=max_seq_len,
                         ratio=ratio, auto=auto, rows_unpacked=unpacked, rows_packed=rows_packed,
                         padding_unpacked=1 - tokens / max(1, unpacked * max_seq_len),
                         padding_packed=packed.padding, waiting_tokens=packed.waiting_tokens)
