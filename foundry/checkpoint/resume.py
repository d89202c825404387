"""Where a run starts: its own latest whole checkpoint, a given checkpoint, HF weights, or batch 0.

`train()` calls `prepare_checkpointing()` before building the Trainer and `finish_start()`
right after. Decisions are made on rank 0 (it reads the save folder) and broadcast, so all
ranks agree; every decision is logged in one line that says what actually happened.

Autoresume (on by default when `run_name` and `save_folder` are set; `autoresume: false`
turns it off) is done here rather than by Composer's `autoresume=True`, because Composer
trusts the `latest-rank0.pt` pointer:

* a kill between Composer's remove-symlink and create-symlink leaves no pointer, and Composer
  starts over from batch 0 (and, with full checkpoints, then refuses to save over the later
  files it finds);
* a kill during a save leaves a partial `ep*-ba*` checkpoint that a resumed run collides
  with (full: Composer's "may conflict with a future checkpoint" check; on an object store:
  "already exists" when the resumed run uploads the same names);
* with full checkpoints on an object store, Composer's autoresume looks only in loggers and
  never finds the run's checkpoints.

So: list the save folder, take the newest checkpoint that is whole (`layout.py`), move newer
broken ones aside (renamed `*.incomplete`, bytes kept), point `latest-rank0.pt` at the one
chosen, and hand Composer that path as `load_path`.

Two repairs to Composer's resumption are installed here as well:

* RNG: Composer restores the checkpoint's RNG state only when it replays the data loader or
  resumes at the start of an epoch. With a StreamingDataset it resumes mid-epoch without
  replaying, and the RNG state was silently dropped (dropout masks then differ from the
  uninterrupted run). `ResumeRNG` restores it right after the first batch is fetched, where
  the uninterrupted run had exactly that state.
* rotation: `save_num_checkpoints_to_keep` only counts checkpoints saved by the current
  process; the resumed run is told about the ones already on disk.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from composer.core import Callback, State
from composer.loggers import Logger

from foundry.checkpoint.layout import (CheckpointRef, LocalSaveFolder, SaveFolder, is_remote,
                                       local_checkpoint_problem)
from foundry.checkpoint.errors import CheckpointError
from foundry.config.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class StartPlan:
    """How this run starts (identical on every rank)."""

    autoresume: bool
    save_folder: Optional[str] = None  # formatted with the run name
    resume: Optional[CheckpointRef] = None  # the run's own checkpoint being resumed
    load_path: Optional[str] = None  # for Composer (full training state, or weights only)
    load_weights_only: bool = False
    weights: Optional[str] = None  # HF folder or other checkpoint, loaded by foundry after Trainer init
    lines: list[str] = field(default_factory=list)  # what to log, in order


class ResumeRNG(Callback):
    """Restore the checkpoint's RNG state after the first batch of a mid-epoch resume is fetched."""

    def __init__(self) -> None:
        self.pending: Optional[list[dict[str, Any]]] = None

    def after_dataloader(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if self.pending is None:
            return
        from composer.utils import reproducibility

        reproducibility.load_rng_state(self.pending)
        self.pending = None
        log.info('restored the checkpoint RNG state before batch %d', int(state.timestamp.batch))


class DataFingerprint(Callback):
    """`data/token_sum` and `data/token_sq_sum` of each global batch (all ranks), logged per batch.

    On when FOUNDRY_DATA_FINGERPRINT=1. Equal values for a batch in two runs mean they trained on
    the same samples there, however the samples were spread over ranks: that is how the elastic
    tests check that a resumed run on another number of processes keeps streaming's sample order.
    """

    ENV = 'FOUNDRY_DATA_FINGERPRINT'

    def after_dataloader(self, state: State, logger: Logger) -> None:
        import torch
        from composer.utils import dist

        ids = state.batch['input_ids'].to(torch.int64)
        sums = torch.stack([ids.sum(), (ids * ids).sum()])
        dist.all_reduce(sums, reduce_operation='SUM')
        logger.log_metrics({'data/token_sum': int(sums[0]), 'data/token_sq_sum': int(sums[1])})


@dataclass
class CheckpointSetup:
    start: StartPlan
    rng: ResumeRNG
    extra: list[Callback] = field(default_factory=list)
    publish_meta: Optional[Any] = None  # writes {save_folder}/hf_meta; called at the end of finish_start

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        # Composer's own autoresume stays off: the decision was made (and logged) in plan_start.
        return {'load_path': self.start.load_path, 'load_weights_only': self.start.load_weights_only,
                'autoresume': False}

    @property
    def callbacks(self) -> list[Callback]:
        return [self.rng, *self.extra]


def checkpoint_kind(cfg) -> str:
    """'sharded' or 'full': what this run writes and can resume (FSDP's state_dict_type; full without FSDP)."""
    return cfg.fsdp_config.state_dict_type if cfg.fsdp_config is not None else 'full'


def prepare_checkpointing(cfg, plan, mpt_config, tokenizer) -> CheckpointSetup:
    """Decide the start, publish the run's hf_meta, arm fault injection; before the Trainer exists."""
    from composer.utils import dist, format_name_with_dist

    from foundry.checkpoint import faults

    faults.install_from_env()
    save_folder = format_name_with_dist(cfg.save_folder, plan.run_name) if cfg.save_folder else None
    from foundry.checkpoint.start_checks import check_start

    # check_start: a finished run, or a checkpoint of another shape, is refused before any Trainer exists.
    start = _on_rank_zero(lambda: check_start(plan_start(cfg, plan.autoresume, save_folder, checkpoint_kind(cfg)),
                                              cfg, mpt_config))
    for line in start.lines:
        log.info('%s', line)
    extra = [DataFingerprint()] if os.environ.get(DataFingerprint.ENV) == '1' else []
    if cfg.save_folder and getattr(cfg, 'save_async', False):
        from foundry.checkpoint.async_save import build_async_saver

        extra.append(build_async_saver(cfg))  # the Trainer takes it as its checkpoint saver
    setup = CheckpointSetup(start=start, rng=ResumeRNG(), extra=extra)
    if save_folder and dist.get_global_rank() == 0:
        # Written by finish_start, once the Trainer (loggers, load_path) started: a refused run leaves no hf_meta.
        setup.publish_meta = lambda: publish_run_meta_logged(save_folder, mpt_config, tokenizer)
    return setup


def publish_run_meta_logged(save_folder: str, mpt_config, tokenizer) -> None:
    from foundry.checkpoint.meta import publish_run_meta

    where = publish_run_meta(save_folder, mpt_config, tokenizer)
    log.info('model config and tokenizer written to %s', where)


def finish_start(setup: CheckpointSetup, trainer) -> None:
    """After Trainer init: check the resumed position, arm the RNG repair, load foreign weights."""
    state = trainer.state
    start = setup.start
    if start.resume is not None:
        batch = int(state.timestamp.batch)
        if batch != start.resume.batch:
            raise CheckpointError(f'resumed {start.resume.location} but the trainer is at batch {batch}, '
                                  f'not {start.resume.batch}')
        data = ('the train loader continues from the checkpoint\'s data position (streaming state_dict; no batches '
                'replayed)') if 'train' in state.dataset_resumption else 'the train loader will be replayed to this position'
        log.info('autoresume: resumed at batch %d (epoch %d, sample %d of the epoch); %s', batch,
                 int(state.timestamp.epoch), int(state.timestamp.sample_in_epoch), data)
        _seed_rotation(trainer, start)
    elif start.load_path is not None:
        log.info('loaded %s from %s; training starts at batch %d',
                 'model weights' if start.load_weights_only else 'the full training state', start.load_path,
                 int(state.timestamp.batch))
    if start.load_path is not None and not start.load_weights_only:
        rng = getattr(trainer, '_rng_state', None)
        if rng is not None and int(state.timestamp.batch_in_epoch) > 0 and 'train' in state.dataset_resumption:
            setup.rng.pending = rng  # see ResumeRNG: Composer would never apply it on this path
            trainer._rng_state = None

    saver = getattr(trainer, '_checkpoint_saver', None)
    if saver is not None and getattr(saver, 'remote_uploader', None) is not None:
        from foundry.checkpoint.uploads import guard_checkpoint_uploads

        guard_checkpoint_uploads(saver, state.run_name, start.save_folder)  # retries, then one line naming the key
    poll = os.environ.get('FOUNDRY_UPLOAD_POLL_S')
    if saver is not None and poll:
        # How often Composer checks that a checkpoint's uploads landed before it moves the remote
        # latest-rank0.pt.symlink (Composer: every 30 s). Lower for short runs and tests.
        saver._symlink_upload_wait_before_next_try_in_seconds = float(poll)

    if start.weights is not None:
        from foundry.checkpoint.weights import load_weights, weights_source

        source = weights_source(start.weights)
        kind = 'Hugging Face folder' if type(source).__name__ == 'HFWeights' else 'checkpoint'
        count = load_weights(state.model.model, source, f'{kind} {start.weights}')
        log.info('loaded %d tensors from the %s %s (weights only; optimizer, schedule and data start fresh)', count,
                 kind, start.weights)
    if setup.publish_meta is not None:
        setup.publish_meta()


def plan_start(cfg, autoresume: bool, save_folder: Optional[str], kind: str) -> StartPlan:
    """The start decision (rank 0 only: reads and may tidy the save folder)."""
    start = StartPlan(autoresume=autoresume, save_folder=save_folder)
    folder = SaveFolder.open(save_folder) if save_folder else None
    if autoresume:
        assert folder is not None, 'plan_run refuses autoresume without save_folder'
        chosen, broken = folder.newest_whole()
        for ref, reason in broken:
            moved = folder.move_aside(ref)
            start.lines.append(f'autoresume: {ref.location} is incomplete ({reason}); moved aside to {moved}, '
                               f'its bytes kept')
        if chosen is not None:
            if chosen.kind != kind:
                raise ConfigError(f'autoresume: the newest checkpoint {chosen.location} is {chosen.kind} but this run '
                                  f'saves {kind} checkpoints (fsdp_config.state_dict_type); set it to {chosen.kind} '
                                  f'to resume')
            pointer = folder.latest_pointer()
            if pointer != chosen.name:
                folder.set_latest(chosen)
                start.lines.append(f'autoresume: latest-rank0.pt pointed to {pointer or "nothing"}; repointed to '
                                   f'{chosen.name}, the newest whole checkpoint')
            start.resume = chosen
            start.load_path = chosen.location
            ignored = f' (load_path {cfg.load_path} is ignored: this run resumes its own checkpoint)' if cfg.load_path else ''
            start.lines.append(f'autoresume: on; resuming from {chosen.location} (batch {chosen.batch}){ignored}')
            return start
        start.lines.append(f'autoresume: on; no checkpoint in {save_folder}, so this run starts at batch 0')
    else:
        existing = folder.checkpoints() if folder is not None else []
        if existing:
            newest = existing[-1].name
            if not cfg.save_overwrite:
                raise ConfigError(
                    f'save_folder {save_folder} already holds checkpoints (newest {newest}) and autoresume is off, so '
                    f'this run would start at batch 0 and overwrite them. Set autoresume=true to continue that run, '
                    f'save_overwrite=true to replace its checkpoints, or use another save_folder')
            if isinstance(folder, LocalSaveFolder):
                parked = folder.move_all_aside(existing)
                start.lines.append(f'save_overwrite: the earlier run\'s {len(existing)} checkpoint(s) were moved to '
                                   f'{parked} (delete it to free the space)')
            else:
                start.lines.append(f'save_overwrite: checkpoints in {save_folder} (newest {newest}) will be '
                                   f'overwritten as this run saves')
        reason = 'autoresume: false' if cfg.autoresume is False else 'run_name or save_folder not set'
        start.lines.append(f'autoresume: off ({reason}); this run starts at batch 0'
                           + (f' from {cfg.load_path}' if cfg.load_path else ''))
    pretrained = (getattr(cfg, 'model', None) or {}).get('pretrained_model_name_or_path')
    if cfg.load_path:
        _plan_load_path(cfg, start, kind)
        if pretrained:
            start.lines.append(f'model.pretrained_model_name_or_path: only its config is used; the weights come from '
                               f'load_path {cfg.load_path}')
    elif pretrained:
        from foundry.models.pretrained import local_weights_folder

        start.weights = local_weights_folder(str(pretrained))
        start.lines.append(f'model.pretrained_model_name_or_path: {pretrained}; its weights are loaded after the model '
                           f'is built, weights only')
    return start


def _plan_load_path(cfg, start: StartPlan, kind: str) -> None:
    from foundry.checkpoint.weights import is_hf_folder

    path = cfg.load_path
    if is_remote(path):
        try:
            local = _maybe_remote_hf_folder(path)
        except Exception as e:  # credentials, a missing bucket: one line naming load_path (foundry/user_errors.py)
            from foundry.user_errors import runtime_fault

            message = runtime_fault(e)
            if message is None:
                raise
            raise CheckpointError(f'load_path {path}: {message}') from e
        if local is not None:
            start.weights = local
            start.lines.append(f'load_path: {path} is a Hugging Face folder (downloaded to {local}); its weights are '
                               f'loaded after the model is built, weights only')
            return
        start.load_path, start.load_weights_only = path, cfg.load_weights_only
        return
    if not os.path.exists(path):
        raise CheckpointError(f'load_path {path} does not exist')
    if is_hf_folder(path):
        start.weights = path
        start.lines.append(f'load_path: {path} is a Hugging Face folder; its weights are loaded after the model is '
                           f'built, weights only')
        return
    real = os.path.realpath(path)
    problem = local_checkpoint_problem(real)
    if problem is not None:
        raise CheckpointError(f'load_path {path} is not a whole checkpoint: {problem}')
    found = 'sharded' if os.path.isdir(real) else 'full'
    if found != kind:
        if cfg.load_weights_only:
            start.weights = real
            start.lines.append(f'load_path: {path} is a {found} checkpoint and this run saves {kind} ones; its model '
                               f'weights are read by foundry instead of Composer')
            return
        raise ConfigError(f'load_path {path} is a {found} checkpoint but this run uses {kind} checkpoints '
                          f'(fsdp_config.state_dict_type); set fsdp_config.state_dict_type={found}, or '
                          f'load_weights_only=true to take only its weights')
    start.load_path, start.load_weights_only = real, cfg.load_weights_only


def _maybe_remote_hf_folder(uri: str) -> Optional[str]:
    """Download a remote Hugging Face folder (config.json + weights) and return its local path, else None."""
    import tempfile

    from foundry.checkpoint.store import download_prefix, object_store_for
    from foundry.checkpoint.weights import HF_WEIGHT_FILES

    store, key = object_store_for(uri)
    names = {k[len(key) + 1:] for k in store.list_objects(key + '/')}
    if 'config.json' not in names or not any(f in names for f in HF_WEIGHT_FILES):
        return None
    local = tempfile.mkdtemp(prefix='foundry-hf-')
    download_prefix(uri, local)
    return local


def _seed_rotation(trainer, start: StartPlan) -> None:
    from composer.utils import dist

    saver = getattr(trainer, '_checkpoint_saver', None)
    if (saver is None or saver.num_checkpoints_to_keep <= 0 or start.save_folder is None
            or is_remote(start.save_folder) or dist.get_global_rank() != 0):
        return
    older = [r for r in LocalSaveFolder(start.save_folder).checkpoints() if r.batch <= start.resume.batch]
    saved = [os.path.join(r.location, '__0_0.distcp') if r.kind == 'sharded' else r.location for r in older]
    saver.saved_checkpoints = saved + [p for p in saver.saved_checkpoints if p not in saved]


def _on_rank_zero(fn):
    """Run fn on rank 0 and broadcast its result (or its exception) to every rank."""
    from composer.utils import dist

    box: list[Any] = [None]
    if dist.get_global_rank() == 0:
        try:
            box[0] = ('ok', fn())
        except Exception as e:
            box[0] = ('error', e)
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == 'error':
        raise value
    return value
