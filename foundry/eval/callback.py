"""ICL evaluation during training: a Composer callback that runs at `eval_interval` and at the end.

Every rank takes part with the model as it trains (sharded under FSDP2): the examples are split
across ranks and the results gathered (runner.py). The model's top-level FSDP unit (the
embedding and final norm) is gathered once around the evaluation, because the passes call the
Hugging Face model directly (they need an attention mask and a KV cache, which the Composer
wrapper's forward does not take); each block still gathers itself as in training.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger

from foundry.eval.gauntlet import GauntletConfig, compute_gauntlet
from foundry.eval.report import metrics_for_logger, summary_line
from foundry.eval.runner import EvalSettings, composer_collectives, evaluate, load_tasks
from foundry.eval.scoring import ModelRunner
from foundry.eval.tasks import ICLTaskConfig

log = logging.getLogger(__name__)


class ICLEvaluator(Callback):
    def __init__(self, tasks: list[ICLTaskConfig], tokenizer, interval: Any, settings: EvalSettings,
                 gauntlet: Optional[GauntletConfig] = None):
        from composer.utils.misc import create_interval_scheduler

        self.tasks = tasks
        self.tokenizer = tokenizer
        self.settings = settings
        self.gauntlet = gauntlet
        self._due = create_interval_scheduler(interval, checkpoint_events=False, final_events={Event.FIT_END})
        self._loaded = None
        self.last_results: Optional[dict] = None

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START and self._loaded is None:
            self._loaded = load_tasks(self.tasks)
        elif event in (Event.BATCH_END, Event.EPOCH_END, Event.FIT_END) and self._due(state, event):
            self.evaluate(state, logger)

    def evaluate(self, state: State, logger: Logger) -> dict:
        if self._loaded is None:
            self._loaded = load_tasks(self.tasks)
        start = time.perf_counter()
        composer_model = state.model
        hf_model = composer_model.model
        was_training = composer_model.training
        composer_model.eval()
        try:
            with _root_gathered(composer_model):
                runner = ModelRunner(hf_model, _device_of(hf_model), lambda: _precision(state, composer_model),
                                     pad_id=_pad_id(self.tokenizer))
                results = evaluate(runner, self.tokenizer, self._loaded, self.settings, composer_collectives())
        finally:
            composer_model.train(was_training)
        gauntlet = compute_gauntlet(self.gauntlet, results) if self.gauntlet is not None else None
        seconds = time.perf_counter() - start
        logger.log_metrics(metrics_for_logger(results, gauntlet, seconds))
        log.info('icl eval at batch %d (%.1fs): %s', int(state.timestamp.batch), seconds, summary_line(results, gauntlet))
        self.last_results = {'results': results, 'gauntlet': gauntlet}
        return self.last_results


@contextlib.contextmanager
def _root_gathered(module: torch.nn.Module):
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        FSDPModule = ()
    if isinstance(module, FSDPModule):
        module.unshard()
        try:
            yield
        finally:
            module.reshard()
    else:
        yield


def _precision(state: State, composer_model) -> contextlib.AbstractContextManager:
    from composer.core.precision import get_precision_context

    stack = contextlib.ExitStack()
    stack.enter_context(get_precision_context(state.precision))
    dtype = getattr(composer_model, 'cpu_autocast_dtype', None)
    if dtype is not None and state.device.name == 'cpu':
        stack.enter_context(torch.autocast('cpu', dtype=dtype))
    return stack


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters())
    return param.device


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def build_icl_evaluator(cfg, tokenizer, device_eval_batch_size: int, model_max_seq_len: int) -> Optional[ICLEvaluator]:
    """The callback for a TrainConfig's icl_tasks / eval_gauntlet keys (None without icl_tasks)."""
    from foundry.eval.gauntlet import parse_gauntlet
    from foundry.eval.tasks import parse_icl_tasks

    tasks = parse_icl_tasks(cfg.icl_tasks)
    if not tasks:
        return None
    settings = EvalSettings(batch_size=device_eval_batch_size, max_seq_len=cfg.icl_seq_len or model_max_seq_len,
                            subset_num_batches=cfg.icl_subset_num_batches)
    return ICLEvaluator(tasks, tokenizer, cfg.eval_interval, settings, parse_gauntlet(cfg.eval_gauntlet))
