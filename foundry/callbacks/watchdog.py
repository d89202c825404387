"""A hang watchdog: notice a rank that makes no progress, dump every rank's Python stacks, end the job.

A stuck collective, a stuck data loader or a dead peer otherwise holds every rank until the
collective timeout (`dist_timeout`, 10 minutes by default) and then ends in a wall of tracebacks
that do not say which rank was the cause. With `watchdog.timeout_s` set, each rank runs a thread that:

* records progress: every Composer event (data fetched, forward, loss, backward, optimizer step,
  end of batch, checkpoint, evaluation) moves the rank's position (batch, event);
* publishes a heartbeat with that position every few seconds to the job's rendezvous store (the
  TCP key-value store every rank already talks to; no collective, so it works while they hang);
* when its rank has made no progress for `timeout_s`, claims the hang (the first rank to do so),
  and names the culprit from the heartbeats: a rank whose heartbeat stopped (its process or node is
  gone), else, among the ranks whose main thread is not waiting inside torch.distributed (the
  others wait for a peer in a collective), the one furthest behind;
* on the claim, every rank writes its Python stacks, all threads (faulthandler), to
  `{run_folder}/hang-<time>/rank<N>.txt` and publishes where its main thread is;
* global rank 0 prints one line naming the culprit rank and what it was doing (the same line is in
  `summary.txt` beside the stacks), and every rank exits: local ranks 0 with `watchdog.exit_code`,
  the others by SIGKILL, which Composer's launcher treats as its own kill (it prints the whole log of
  a rank that exits with a status).

`FOUNDRY_STALL=<rank>:<batch>` (tests) makes that rank's data loader stall while fetching that batch.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Optional

from composer.core import Callback, Event, State
from composer.loggers import Logger

log = logging.getLogger(__name__)

STALL_ENV = 'FOUNDRY_STALL'

# Position of each event inside one batch, after Composer has counted the previous batch: the
# timestamp's batch k goes up at BATCH_END of batch k-1, so (k, BATCH_END) comes before (k, AFTER_DATALOADER).
_ORDER = {e: i for i, e in enumerate([
    Event.FIT_START, Event.EPOCH_START, Event.BATCH_END, Event.BATCH_CHECKPOINT, Event.EPOCH_END,
    Event.EPOCH_CHECKPOINT, Event.AFTER_DATALOADER, Event.BATCH_START, Event.BEFORE_TRAIN_BATCH,
    Event.BEFORE_FORWARD, Event.AFTER_FORWARD, Event.BEFORE_LOSS, Event.AFTER_LOSS, Event.BEFORE_BACKWARD,
    Event.AFTER_BACKWARD, Event.AFTER_TRAIN_BATCH])}

_DOING = {
    Event.FIT_START: 'fetching batch {b} from the data loader',
    Event.EPOCH_START: 'fetching batch {b} from the data loader',
    Event.BATCH_END: 'in the end-of-batch work after batch {p} (callbacks, evaluation)',
    Event.BATCH_CHECKPOINT: 'after batch {p}',
    Event.EPOCH_END: 'ending the epoch after batch {p}',
    Event.EPOCH_CHECKPOINT: 'after batch {p}',
    Event.AFTER_DATALOADER: 'starting batch {b}',
    Event.BATCH_START: 'starting batch {b}',
    Event.BEFORE_TRAIN_BATCH: 'in the forward pass of batch {b}',
    Event.BEFORE_FORWARD: 'in the forward pass of batch {b}',
    Event.AFTER_FORWARD: 'computing the loss of batch {b}',
    Event.BEFORE_LOSS: 'computing the loss of batch {b}',
    Event.AFTER_LOSS: 'in the backward pass of batch {b}',
    Event.BEFORE_BACKWARD: 'in the backward pass of batch {b}',
    Event.AFTER_BACKWARD: 'between the backward pass and the optimizer step of batch {b}',
    Event.AFTER_TRAIN_BATCH: 'in the optimizer step of batch {b}',
}


def main_thread_where() -> str:
    """`path:line in function` of the innermost frame the main thread is running (site-packages and the
    working directory stripped from the path)."""
    return main_thread_activity()['where']


def main_thread_activity() -> dict[str, Any]:
    """Where the main thread is, and what that says: waiting in a collective, loading data, saving a checkpoint."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return {'where': 'an unknown place (no main thread)', 'waiting': False, 'stage': None}
    stack = traceback.extract_stack(frame)
    last = stack[-1]
    files = [f.filename.replace(os.sep, '/') for f in stack]
    # Innermost frames in torch.distributed: this rank waits for its peers (a collective, FSDP's gather).
    waiting = any('torch/distributed/' in f for f in files[-3:])
    stage = None
    if any('/checkpoint' in f for f in files):
        stage = 'checkpoint'
    elif any(m in f for f in files for m in ('torch/utils/data/', 'streaming/', 'foundry/data/')):
        stage = 'data'
    return {'where': f'{_short(last.filename)}:{last.lineno} in {last.name}', 'waiting': waiting, 'stage': stage}


def _short(path: str) -> str:
    marker = 'site-packages' + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    return path[len(cwd):] if path.startswith(cwd) else path


class Watchdog(Callback):
    def __init__(self, timeout_s: float, exit_code: int, run_folder: str) -> None:
        self.timeout_s = timeout_s
        self.exit_code = exit_code
        self.run_folder = run_folder
        self.interval = max(0.2, min(timeout_s / 4, 10.0))
        self._position = (time.monotonic(), 0, Event.FIT_START)
        self._stop = threading.Event()
        self._ending = False
        self._thread: Optional[threading.Thread] = None
        self._store = None
        self.rank, self.world, self.local_rank = 0, 1, 0

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        del logger  # unused
        if event not in _ORDER and event not in (Event.FIT_END, Event.INIT) and not event.value.startswith('eval'):
            return
        self._position = (time.monotonic(), int(state.timestamp.batch), event)
        if event == Event.FIT_START and self._thread is None:
            self._start()
        elif event == Event.FIT_END:
            self._stop.set()

    def close(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._stop.set()

    def _start(self) -> None:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            from torch.distributed.distributed_c10d import _get_default_store

            self.rank, self.world = tdist.get_rank(), tdist.get_world_size()
            self.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
            self._store = tdist.PrefixStore(f'foundry-watchdog/{os.environ.get("MASTER_PORT", "")}/', _get_default_store())
        self._thread = threading.Thread(target=self._loop, name='foundry-watchdog', daemon=True)
        self._thread.start()
        log.info('watchdog: a rank with no progress for %gs ends the job with every rank\'s stacks in %s',
                 self.timeout_s, self.run_folder)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                if self._store is not None and self._store.check(['hang']):
                    return self._end(json.loads(self._store.get('hang')))
                if self._idle() > self.timeout_s and not self._stop.is_set():
                    return self._claim()
            except Exception as e:  # noqa: BLE001 - the store may be gone (its node died): act alone
                if self._stop.is_set():
                    return
                log.warning('watchdog: rendezvous store unreachable (%s); acting on this rank alone', e)
                self._store = None

    def _beat(self) -> None:
        if self._store is None:
            return
        since, batch, event = self._position
        self._store.set(f'hb/{self.rank}', json.dumps({'batch': batch, 'event': event.value, 'wall': time.time(),
                                                        'idle': self._idle(), **main_thread_activity()}))

    def _idle(self) -> float:
        return time.monotonic() - self._position[0]

    def _claim(self) -> None:
        stamp = time.strftime('%Y%m%d-%H%M%S')
        if self._store is None:
            since, batch, event = self._position
            return self._end({'culprit': self.rank, 'stamp': stamp,
                              'why': _describe(batch, event, main_thread_activity(), self._idle())})
        if self._store.add('claim', 1) == 1:
            culprit, why = self._find_culprit()
            self._store.set('hang', json.dumps({'culprit': culprit, 'why': why, 'stamp': stamp}))
        deadline = time.monotonic() + 30
        while not self._store.check(['hang']):
            if time.monotonic() > deadline:
                raise RuntimeError('another rank claimed the hang but published nothing')
            time.sleep(0.1)
        self._end(json.loads(self._store.get('hang')))

    def _find_culprit(self) -> tuple[int, str]:
        beats: dict[int, Optional[dict[str, Any]]] = {}
        for r in range(self.world):
            key = f'hb/{r}'
            beats[r] = json.loads(self._store.get(key)) if self._store.check([key]) else None
        now = time.time()
        gone = [r for r, b in beats.items() if b is None or now - b['wall'] > max(3 * self.interval, 5.0)]
        if gone:
            r = gone[0]
            b = beats[r]
            if b is None:
                return r, 'sent no heartbeat at all (its process or node is gone?)'
            return r, (f'sent no heartbeat for {now - b["wall"]:.0f}s (its process or node is gone?); it was last '
                       + _describe(b['batch'], Event(b['event']), b))
        # Ranks waiting in a collective wait for the others: the culprit is a rank that is not, the one
        # furthest behind among them.
        live = {r: b for r, b in beats.items() if b is not None}
        candidates = [r for r, b in live.items() if not b['waiting']] or list(live)
        behind = min(candidates, key=lambda r: (live[r]['batch'], _ORDER.get(Event(live[r]['event']), 99)))
        b = live[behind]
        return behind, _describe(b['batch'], Event(b['event']), b, b['idle'] + (now - b['wall']))

    def _end(self, hang: dict[str, Any]) -> None:
        """Dump this rank's stacks, publish where it is, and leave (global rank 0 prints the one line)."""
        if self._ending:
            return
        self._ending = True
        folder = os.path.join(self.run_folder, f'hang-{hang["stamp"]}')
        line = f'foundry: hang: rank {hang["culprit"]} {hang["why"]}; ending the job (exit status {self.exit_code})'
        try:
            os.makedirs(folder, exist_ok=True)
            since, batch, event = self._position
            activity = main_thread_activity()
            with open(os.path.join(folder, f'rank{self.rank}.txt'), 'w') as f:
                f.write(f'rank {self.rank} (pid {os.getpid()}): batch {batch}, last event {event.value} '
                        f'{self._idle():.0f}s ago; main thread in {activity["where"]}\n\n')
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
            line = (f'foundry: hang: rank {hang["culprit"]} {hang["why"]}; every rank\'s Python stacks are in '
                    f'{folder}/; ending the job (exit status {self.exit_code})')
            if self._store is not None:
                self._store.set(f'dumped/{self.rank}', '1')
            if self.rank == 0 and self._store is not None:
                # Rank 0 hosts the store: it stays until every rank has dumped (a dead one never will).
                deadline = time.monotonic() + max(5.0, 3 * self.interval)
                while time.monotonic() < deadline and not self._store.check([f'dumped/{r}' for r in range(self.world)]):
                    time.sleep(0.1)
            if self.rank == 0 or self._store is None:
                with open(os.path.join(folder, 'summary.txt'), 'w') as f:
                    f.write(line + '\n')
                if self._store is not None:
                    self._store.set('summary', line)
            elif self.local_rank == 0:
                line = self._wait_for('summary', 10) or line
        except Exception as e:  # noqa: BLE001 - leave anyway
            log.warning('watchdog: could not write every stack dump (%s)', e)
        if self.local_rank == 0:
            print(line, file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(self.exit_code)
        time.sleep(2)  # let local rank 0 exit first: the launcher reports the first rank to end
        os.kill(os.getpid(), signal.SIGKILL)

    def _wait_for(self, key: str, seconds: float) -> Optional[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._store.check([key]):
                return self._store.get(key).decode()
            time.sleep(0.1)
        return None


def _describe(batch: int, event: Event, activity: dict[str, Any], idle: Optional[float] = None) -> str:
    if activity.get('stage') == 'data':
        doing = f'fetching batch {batch} from the data loader'
    elif activity.get('stage') == 'checkpoint':
        doing = f'saving the checkpoint of batch {batch}'
    else:
        doing = _DOING.get(event, f'in {event.value} (batch {{b}})').format(b=batch, p=batch - 1)
    if activity.get('waiting'):
        doing += ', waiting for the other ranks'
    doing += f' (at {activity["where"]})'
    return f'made no progress for {idle:.0f}s, {doing}' if idle is not None else doing


class Stall(Callback):
    """Test fault (FOUNDRY_STALL=<rank>:<batch>): that rank's data loader never returns that batch."""

    def __init__(self, spec: str) -> None:
        rank, _, batch = spec.partition(':')
        if not (rank.isdigit() and batch.isdigit()):
            raise ValueError(f'{STALL_ENV}={spec!r}: expected <rank>:<batch>')
        self.rank, self.batch = int(rank), int(batch)

    def fit_start(self, state: State, logger: Logger) -> None:
        from composer.utils import dist

        if dist.get_global_rank() != self.rank:
            return
        loader = state.dataloader
        collate = loader.collate_fn
        calls = [int(state.timestamp.batch)]
        target = self.batch

        def stalled_collate(samples):
            if calls[0] == target:
                log.warning('fault injection (%s): stalling the data loader at batch %d', STALL_ENV, target)
                while True:
                    time.sleep(3600)
            calls[0] += 1
            return collate(samples)

        loader.collate_fn = stalled_collate


def watchdog_callbacks(cfg, run_folder: str) -> list[Callback]:
    callbacks: list[Callback] = []
    if os.environ.get(STALL_ENV):
        callbacks.append(Stall(os.environ[STALL_ENV]))
    if cfg.watchdog.timeout_s is not None:
        callbacks.append(Watchdog(cfg.watchdog.timeout_s, cfg.watchdog.exit_code, run_folder))
    return callbacks
