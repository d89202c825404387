"""`save_async: true`: sharded checkpoints written in the background while training goes on.

Composer's CheckpointSaver writes a checkpoint on the training thread: every rank serialises and
writes its shard (and rank 0 the index) before the next batch starts. `AsyncCheckpointSaver` is that
saver (same names, interval, rotation and Trainer wiring, so autoresume and the preemption stop see
an ordinary CheckpointSaver) with one change in `_save_checkpoint`: the state dict Composer would
save is handed to torch.distributed.checkpoint's `async_save`, which copies every tensor into a CPU
staging buffer (the only part the training thread waits for) and writes the files from a thread.

When a checkpoint counts as saved:

* torch writes the `.metadata` index last, on the coordinator, after every rank reported its
  files written, and the background thread finishes on every rank only after that; so when rank 0's
  write has finished, the checkpoint is complete everywhere;
* only then does rank 0 move `latest-rank0.pt` (atomically: a new link renamed over the old one)
  and rotate old checkpoints. A run killed while a write is in the background leaves a folder
  without `.metadata`, which autoresume moves aside, and `latest-rank0.pt` on the previous one.

Finished writes are noticed at each batch end; a new save first waits for the previous write (one
in flight at a time), and the end of training waits for the last one. The background thread's
collectives run on a gloo group of their own (never the training thread's group, and on NCCL
jobs a CPU backend is what async_save requires). The staging buffer is kept between saves (no
allocation per save): it costs host memory the size of this rank's model and optimizer shards.

Object-store save folders are refused for now (config error): their uploads would need the same
ordering (pointer object after every shard landed), which Composer's uploader only provides for
its synchronous saves.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Optional

import torch
from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger

log = logging.getLogger(__name__)

__all__ = ['AsyncCheckpointSaver', 'build_async_saver']


class AsyncCheckpointSaver(CheckpointSaver):
    """Composer's CheckpointSaver with sharded checkpoints written by a background thread (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._group = (None, None)  # gloo groups for the background thread's collectives (fit_start)
        self._writer = None  # one FileSystemWriter, so its staging buffer is reused
        self._pending: Optional[dict[str, Any]] = None
        self.stall_seconds: list[float] = []  # time the training thread spent in each save

    def fit_start(self, state: State, logger: Logger) -> None:
        super().fit_start(state, logger)
        if self._group == (None, None):
            self._group = _background_group(state)

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        if not state.fsdp_sharded_state_dict_enabled:  # refused by the config check; kept for direct use
            return super()._save_checkpoint(state, logger)
        import torch.distributed.checkpoint as dcp
        from composer.utils import checkpoint, dist
        from torch.distributed.checkpoint import DefaultSavePlanner

        started = time.perf_counter()
        self._finish_pending(wait=True)  # one write in flight at a time
        self.last_checkpoint_batch = state.timestamp.batch
        save_filename = checkpoint.get_save_filename(state, self.filename.format(state, keep_placeholders=True))
        self.all_saved_checkpoints_to_timestamp[save_filename] = state.timestamp
        folder = os.path.dirname(save_filename)
        os.makedirs(folder, exist_ok=True)
        writes, group = _writes_and_group(state, self._group)
        future = None
        if writes:
            if self._writer is None:
                self._writer = _staging_writer(folder)
            future = dcp.async_save(_state_dict(state, self.weights_only, self.ignore_keys), checkpoint_id=folder,
                                    storage_writer=self._writer,
                                    planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True), process_group=group)
        self.rank_saves_symlinks = dist.get_global_rank() == 0
        self._pending = {'future': future, 'file': save_filename, 'folder': folder, 'batch': int(state.timestamp.batch),
                         'started': time.perf_counter()}
        stall = time.perf_counter() - started
        self.stall_seconds.append(stall)
        logger.log_metrics({'checkpoint/stall_s': stall})
        log.debug('checkpoint %s: staged in %.3f s, writing in the background', folder, stall)

    def batch_end(self, state: State, logger: Logger) -> None:
        super().batch_end(state, logger)
        self._finish_pending(wait=False)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._finish_pending(wait=True)
        super().fit_end(state, logger)

    def post_close(self) -> None:
        try:
            self._finish_pending(wait=True)
        finally:
            if self._writer is not None and hasattr(self._writer, 'close'):
                self._writer.close()  # frees the staging buffer
            super().post_close()

    def _finish_pending(self, wait: bool) -> None:
        """Once this rank's background write has finished: point latest at it (rank 0) and rotate."""
        pending = self._pending
        if pending is None:
            return
        future = pending['future']
        if future is not None:
            if not wait and not future.done():
                return
            try:
                future.result()
            except Exception as e:
                self._pending = None
                raise RuntimeError(f'checkpoint {pending["folder"]} could not be written in the background '
                                   f'({type(e).__name__}: {e}); latest-rank0.pt still names the previous one') from e
        self._pending = None
        if self.rank_saves_symlinks:
            from foundry.checkpoint.layout import local_checkpoint_problem

            problem = local_checkpoint_problem(pending['folder'])
            if problem is not None:  # not expected: torch wrote .metadata before the write finished
                raise RuntimeError(f'checkpoint {pending["folder"]} is not whole after its write finished: {problem}')
            if self.latest_filename is not None and self.num_checkpoints_to_keep != 0:
                _point(_latest_path(self, pending['folder']), pending['folder'])
            log.info('checkpoint %s written in the background (%.1f s after it was staged)%s', pending['folder'],
                     time.perf_counter() - pending['started'],
                     '; latest-rank0.pt points to it' if self.latest_filename is not None else '')
        self.saved_checkpoints.append(pending['file'])
        if self.num_checkpoints_to_keep >= 0:
            self._rotate_checkpoints(sharding_enabled=True)


def build_async_saver(cfg) -> AsyncCheckpointSaver:
    """The saver the Trainer would build from `cfg`'s save_* keys, writing in the background."""
    return AsyncCheckpointSaver(folder=cfg.save_folder, filename='ep{epoch}-ba{batch}-rank{rank}.pt',
                                remote_file_name=None, latest_filename='latest-rank{rank}.pt',
                                latest_remote_file_name=None, overwrite=cfg.save_overwrite,
                                weights_only=cfg.save_weights_only, save_interval=cfg.save_interval,
                                num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep)


def _state_dict(state: State, weights_only: bool, ignore_keys) -> dict[str, Any]:
    """What Composer's sharded save writes (composer.utils.checkpoint._save_checkpoint)."""
    from composer.utils import dist, reproducibility
    from composer.utils.checkpoint import glob_filter

    if weights_only:
        state_dict = {'state': {'model': state.get_model_state_dict(),
                                'integrations': state._get_integrations_state_dict(),
                                'metadata': state._get_state_metadata()}}
    else:
        state_dict = {'state': state.state_dict(), 'rng': reproducibility.get_rng_state()}
    if ignore_keys:
        (ignore_keys if callable(ignore_keys) else glob_filter(ignore_keys))(state_dict)
        state_dict['state'] = state_dict.get('state', {})
    if not weights_only and dist.get_global_rank() > 0:
        state_dict.pop('rng')  # rank 0 saves the RNG state, as in Composer
    return state_dict


def _staging_writer(folder: str):
    """A FileSystemWriter whose staging copy of the tensors is kept between saves, in pinned memory
    only where CUDA is (torch's own `cache_staged_state_dict=True` always pins, which needs a driver).

    The cache holds the tensors only, keyed by their path in the state dict. Composer's state dict also
    holds values that change shape from one save to the next (the saver's own list of checkpoints
    grows by one each time); caching the whole dict, as torch does, would miss on every save and
    allocate and copy everything twice. Non-tensor values are small and copied afresh each time.
    """
    from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
    from torch.distributed.checkpoint import FileSystemWriter

    class StagingWriter(FileSystemWriter):
        def stage(self, state_dict):
            tensors: dict[tuple, torch.Tensor] = {}
            skeleton = _split_tensors(state_dict, (), tensors)
            if self.state_dict_cache is not None:
                try:
                    staged = _copy_state_dict(tensors, self.state_dict_cache, type_check=False)
                    return _fill_tensors(skeleton, staged)
                except Exception:  # another set of tensors (a new key, another shape): stage afresh
                    self.state_dict_cache = None
            self.state_dict_cache = _create_cpu_state_dict(tensors, pin_memory=torch.cuda.is_available())
            return _fill_tensors(skeleton, _copy_state_dict(tensors, self.state_dict_cache, type_check=False))

    return StagingWriter(folder)


class _TensorSlot:
    __slots__ = ('path',)

    def __init__(self, path: tuple) -> None:
        self.path = path


def _split_tensors(obj: Any, path: tuple, tensors: dict) -> Any:
    """`obj` with every tensor in its dicts and lists replaced by a slot named by its path (the
    tensors collected into `tensors`), and every other value copied, so later changes to the live
    state cannot reach the checkpoint being written."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return _TensorSlot(path)
    if type(obj) is dict:
        return {k: _split_tensors(v, path + (k,), tensors) for k, v in obj.items()}
    if type(obj) is list:
        return [_split_tensors(v, path + (i,), tensors) for i, v in enumerate(obj)]
    return copy.deepcopy(obj)


def _fill_tensors(obj: Any, staged: dict) -> Any:
    if isinstance(obj, _TensorSlot):
        return staged[obj.path]
    if type(obj) is dict:
        return {k: _fill_tensors(v, staged) for k, v in obj.items()}
    if type(obj) is list:
        return [_fill_tensors(v, staged) for v in obj]
    return obj


def _writes_and_group(state: State, groups):
    """(whether this rank writes files, the gloo group the write coordinates on)."""
    whole, first_replica = groups
    mesh = state.device_mesh
    if mesh is not None and mesh.mesh_dim_names is not None and 'data_parallel_replicate' in mesh.mesh_dim_names:
        # HSDP: only the first replica writes (as in Composer), coordinated among its own ranks.
        index = mesh.mesh_dim_names.index('data_parallel_replicate')
        return mesh.get_local_rank(mesh_dim=index) == 0, first_replica
    return True, whole


def _background_group(state: State):
    """(a gloo group of all ranks, a gloo group of HSDP's first replica or None); every rank calls this."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return None, None
    whole = tdist.new_group(backend='gloo')
    first_replica = None
    mesh = state.device_mesh
    if mesh is not None and mesh.mesh_dim_names is not None and 'data_parallel_replicate' in mesh.mesh_dim_names:
        index = mesh.mesh_dim_names.index('data_parallel_replicate')
        ranks = mesh.mesh.select(index, 0).reshape(-1).tolist()
        first_replica = tdist.new_group(ranks=ranks, backend='gloo')
    return whole, first_replica


def _latest_path(saver: CheckpointSaver, checkpoint_folder: str) -> str:
    # latest_filename is '{save_folder}/latest-rank{rank}.pt' with the run name and rank still to fill in;
    # the checkpoint's folder sits in the same save folder.
    from composer.utils import format_name_with_dist

    return os.path.join(os.path.dirname(checkpoint_folder),
                        format_name_with_dist(os.path.basename(saver.latest_filename.filename), 'unused'))


def _point(link: str, target: str) -> None:
    """Make `link` a relative symlink to `target` in one rename (never a moment without a pointer)."""
    tmp = f'{link}.tmp-{os.getpid()}'
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass
    os.symlink(os.path.relpath(target, os.path.dirname(link)), tmp)
    os.replace(tmp, link)
