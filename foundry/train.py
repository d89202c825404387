"""YAML -> config objects -> builders -> Trainer.fit(), top to bottom.

`launch/train.py` (what `composer launch/train.py YAML key=value ...` runs) calls
`load_config` then `train`. Everything a run needs is validated by `load_config` before
this module creates a process group or a tensor.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from foundry.config.errors import ConfigError
from foundry.data.errors import DataError
from foundry.config.schema import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Decisions derived from the config and the launch environment, made before any tensor exists."""

    device: str  # 'gpu' or 'cpu'
    precision: str
    run_name: str
    run_folder: str
    world_size: int
    local_world_size: int
    device_train_batch_size: int
    device_train_microbatch_size: int | str
    device_eval_batch_size: int
    autoresume: bool
    # amp_bf16 on CPU: Composer runs fp32 and the model runs its forward under torch.autocast
    # ('cpu', bfloat16) itself (fp32 weights, gradients and optimizer state, as amp_bf16 on a GPU).
    cpu_bf16_autocast: bool = False
    # amp_fp8: Composer runs amp_bf16 and the blocks' Linear layers become torchao float8 linears
    # with this recipe (foundry/fp8.py). None = no float8.
    fp8_recipe: Optional[str] = None


def plan_run(cfg: TrainConfig) -> RunPlan:
    import torch
    from composer.utils import dist

    device = 'gpu' if torch.cuda.is_available() else 'cpu'
    precision = cfg.precision
    cpu_bf16_autocast = False
    fp8_recipe = None
    if precision == 'amp_fp8':
        from foundry.fp8 import DEFAULT_RECIPE, check_fp8_environment

        check_fp8_environment()  # one-line ConfigError on a CPU, a pre-Ada GPU, or without a usable torchao
        # Composer's amp_fp8 means TransformerEngine; torchao's float8 linears run inside bf16 autocast.
        precision = 'amp_bf16'
        fp8_recipe = cfg.fp8_config.recipe if cfg.fp8_config is not None else DEFAULT_RECIPE
    if device == 'cpu' and precision == 'amp_bf16':
        # Composer refuses AMP on CPU. bf16 autocast pays on CPUs with bf16 matmuls (AVX512-BF16/AMX):
        # launch/bench/cpu_step_bench.py measures it. Composer runs fp32; the model autocasts itself.
        log.info('precision amp_bf16 on CPU: Composer runs fp32, the model runs under torch.autocast(cpu, bfloat16)')
        precision, cpu_bf16_autocast = 'fp32', True
    elif device == 'cpu' and precision != 'fp32':
        # Composer refuses AMP on CPU; an llm-foundry YAML should still run here.
        warnings.warn(f'precision {precision!r} needs a GPU; this CPU run uses fp32')
        precision = 'fp32'

    world_size = dist.get_world_size()
    if cfg.global_train_batch_size % world_size != 0:
        raise ConfigError(f'`global_train_batch_size` ({cfg.global_train_batch_size}) must be divisible by the number of '
                          f'processes ({world_size})')
    device_batch = cfg.global_train_batch_size // world_size
    microbatch = cfg.device_train_microbatch_size
    if microbatch == 'auto' and device == 'cpu':
        microbatch = device_batch  # Composer's automatic microbatching searches by catching CUDA OOMs.
    if isinstance(microbatch, int) and microbatch > device_batch:
        microbatch = device_batch

    run_name = cfg.run_name or os.environ.get('RUN_NAME') or 'foundry-run'
    run_folder = cfg.run_folder.format(run_name=run_name)
    autoresume = cfg.autoresume
    if autoresume is None:
        autoresume = bool(cfg.run_name and cfg.save_folder)
    if autoresume and not cfg.save_folder:
        raise ConfigError('`autoresume: true` needs `save_folder` (where to look for the latest checkpoint)')
    return RunPlan(
        device=device,
        precision=precision,
        run_name=run_name,
        run_folder=run_folder,
        world_size=world_size,
        local_world_size=dist.get_local_world_size(),
        device_train_batch_size=device_batch,
        device_train_microbatch_size=microbatch,
        device_eval_batch_size=cfg.device_eval_batch_size or device_batch,
        autoresume=autoresume,
        cpu_bf16_autocast=cpu_bf16_autocast,
        fp8_recipe=fp8_recipe,
    )


def train(cfg: TrainConfig):
    """Train as configured; returns the fitted Composer Trainer."""
    import torch
    from composer import Trainer
    from composer.algorithms import GradientClipping
    from composer.utils import dist, reproducibility

    from foundry.callbacks import build_callbacks
    from foundry.callbacks.long_runs import LongRun
    from foundry.checkpoint.resume import finish_start, prepare_checkpointing
    from foundry.data.stream.text_loader import build_text_dataloader
    from foundry.data.tokenizer import build_tokenizer
    from foundry.distributed.fsdp import build_fsdp2_config, describe_layout, local_shard_fingerprint
    from foundry.distributed.materialize import materialize_meta_model
    from foundry.loggers import build_loggers
    from foundry.loggers.jsonl import JSONLinesLogger
    from foundry.models import MODELS
    from foundry.optim.builders import build_optimizer, build_scheduler
    from foundry.startup import look_up_composers_commit_once, read_cpu_model_without_a_subprocess

    plan = plan_run(cfg)
    # SIGTERM/SIGUSR1/Ctrl-C stop after the batch with a checkpoint; loss guard; hang watchdog.
    long_run = LongRun(cfg, plan)
    read_cpu_model_without_a_subprocess()  # 1.1 s off every rank's start (foundry/startup.py)
    look_up_composers_commit_once()  # 30 ms off every checkpoint
    logging.basicConfig(format='%(asctime)s: rank%(rank)s[%(process)d] %(levelname)s %(name)s: %(message)s'
                        .replace('%(rank)s', str(dist.get_global_rank())))
    logging.getLogger('foundry').setLevel((cfg.python_log_level or 'info').upper())
    reproducibility.seed_all(cfg.seed)
    dist.initialize_dist(plan.device, timeout=cfg.dist_timeout)

    tokenizer = build_tokenizer(cfg.tokenizer.name, cfg.tokenizer.kwargs)

    model_cfg = {k: v for k, v in cfg.model.items() if k != 'name'}
    model = MODELS[cfg.model['name']](model_cfg, tokenizer)
    if cfg.fsdp_config is None or plan.device == 'cpu':
        # Composer's FSDP2 meta-init materialises on CUDA only; on CPU (and without FSDP) we do it here.
        materialize_meta_model(model, 'cuda' if plan.device == 'gpu' else 'cpu')
    if plan.cpu_bf16_autocast:
        model.cpu_autocast_dtype = torch.bfloat16
    if plan.fp8_recipe is not None:
        from foundry.fp8 import convert_to_fp8

        converted = convert_to_fp8(model, plan.fp8_recipe)  # before FSDP, compile and the optimizer
        log.info('amp_fp8: %d Linear layers run in float8 (torchao, %s scaling)', len(converted), plan.fp8_recipe)
    if cfg.compile_config is not None:
        from foundry.distributed.compile import apply_compile

        n_compiled = apply_compile(model, cfg.compile_config)
        log.info('compile_config: torch.compile on each of %d transformer blocks (%s)', n_compiled, cfg.compile_config)

    optimizer = build_optimizer(model, cfg.optimizer['name'], _without_name(cfg.optimizer))
    scheduler = build_scheduler(cfg.scheduler['name'], _without_name(cfg.scheduler))

    train_loader = build_text_dataloader(cfg.train_loader, tokenizer, plan.device_train_batch_size)
    eval_loader = None
    if cfg.eval_loader is not None:
        from composer.core import Evaluator

        eval_spec = build_text_dataloader(cfg.eval_loader, tokenizer, plan.device_eval_batch_size)
        eval_loader = Evaluator(label='eval', dataloader=eval_spec, metric_names=list(model.get_metrics(is_train=False)))

    os.makedirs(plan.run_folder, exist_ok=True)
    # Where this run starts (its own newest whole checkpoint, load_path, HF weights, or batch 0), decided and
    # logged here; and the model config + tokenizer written to {save_folder}/hf_meta (local or remote).
    checkpointing = prepare_checkpointing(cfg, plan, model.model.config, tokenizer)
    loggers = build_loggers(cfg.loggers) + [JSONLinesLogger(os.path.join(plan.run_folder, 'metrics.jsonl'))]
    callbacks = build_callbacks(cfg.callbacks) + checkpointing.callbacks + long_run.callbacks()
    if cfg.icl_tasks:
        from foundry.eval.callback import build_icl_evaluator

        # ICL tasks and the gauntlet at eval_interval, on every rank with the model as sharded (foundry/eval/).
        callbacks.append(build_icl_evaluator(cfg, tokenizer, plan.device_eval_batch_size, model.config.max_seq_len))
    algorithms = []
    if cfg.algorithms.gradient_clipping is not None:
        clip = cfg.algorithms.gradient_clipping
        algorithms.append(GradientClipping(clipping_type=clip.clipping_type, clipping_threshold=clip.clipping_threshold))

    parallelism = None
    if cfg.fsdp_config is not None:
        # Also on one process: checkpoints then have the configured layout whatever the world size, so a
        # sharded checkpoint written by N processes resumes on 1 and the other way round.
        # Composer builds the (replicate, shard) mesh from the config's degrees when it creates the State.
        parallelism = {'fsdp': build_fsdp2_config(cfg.fsdp_config, plan.world_size, plan.local_world_size,
                                                  'cuda' if plan.device == 'gpu' else 'cpu')}

    trainer = Trainer(
        run_name=plan.run_name,
        seed=cfg.seed,
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=eval_loader,
        eval_interval=cfg.eval_interval,
        eval_subset_num_batches=cfg.eval_subset_num_batches,
        optimizers=optimizer,
        schedulers=scheduler,
        max_duration=cfg.max_duration,
        device=plan.device,
        precision=plan.precision,
        device_train_microbatch_size=plan.device_train_microbatch_size,
        parallelism_config=parallelism,
        algorithms=algorithms,
        callbacks=callbacks,
        loggers=loggers,
        progress_bar=cfg.progress_bar,
        log_to_console=cfg.log_to_console,
        console_log_interval=cfg.console_log_interval,
        save_folder=cfg.save_folder,
        save_interval=cfg.save_interval,
        save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
        save_overwrite=cfg.save_overwrite,
        save_weights_only=cfg.save_weights_only,
        **checkpointing.trainer_kwargs,  # load_path, load_weights_only, autoresume (decided above)
        dist_timeout=cfg.dist_timeout,
        python_log_level=cfg.python_log_level,
    )
    finish_start(checkpointing, trainer)  # checks the resumed batch, restores RNG, loads HF weights
    if parallelism is not None:
        # What FSDP2 actually did with the parameters (one line per rank), and after fit a fingerprint of each
        # rank's local shards: HSDP replicas (same shard coordinate) must end with identical ones.
        log.info('%s', describe_layout(trainer.state.model, trainer.state.device_mesh))
    trainer.fit()
    long_run.finish(trainer)  # after a stop on a signal: RunStopped (message, exit status) for main()
    if parallelism is not None:
        log.info('rank %d: local parameter shards after fit: fingerprint %s', dist.get_global_rank(),
                 local_shard_fingerprint(trainer.state.model))
    return trainer


def _without_name(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != 'name'}


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `launch/train.py`: `YAML [key=value ...]`."""
    import sys

    from foundry.config.load import load_config
    from foundry.config.rules import check_environment
    from foundry.stopping import RunStopped, leave_after_local_rank_zero, restore_signals, stop_on_signals_during_startup
    from foundry.user_errors import report_user_error, runtime_fault, write_traceback

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ('-h', '--help'):
        print('usage: composer launch/train.py YAML [key=value ...]', file=sys.stderr)
        return 2
    previous_handlers = stop_on_signals_during_startup()
    cfg = None
    try:
        cfg = load_config(args[0], args[1:])  # every value checked, before torch or Composer is imported
        check_environment(cfg)  # wandb credentials, a local load_path
        train(cfg)
    except (ConfigError, DataError) as e:
        kind = 'config error' if isinstance(e, ConfigError) else 'data error'
        return report_user_error(f'{kind}: {e}')  # the same on every rank: local rank 0 prints it
    except KeyboardInterrupt:  # preemption.enabled: false (otherwise Ctrl-C ends in RunStopped)
        print('foundry: interrupted (Ctrl-C); run the same command to resume from the last checkpoint', file=sys.stderr)
        return 130
    except RunStopped as e:  # a signal: foundry/stopping.py, foundry/callbacks/preemption.py
        print(f'foundry: {e}', file=sys.stderr, flush=True)
        leave_after_local_rank_zero()
        return e.exit_code
    except Exception as e:  # faults no check before launch can see (foundry/user_errors.py)
        message = runtime_fault(e, cfg)
        if message is None:
            raise
        where = write_traceback(e, _run_folder(cfg))
        return report_user_error(message + (f' (traceback in {where})' if where else ''), every_rank=True)
    finally:
        restore_signals(previous_handlers)
    return 0


def _run_folder(cfg: Optional[TrainConfig]) -> Optional[str]:
    if cfg is None:
        return None
    try:
        return cfg.run_folder.format(run_name=cfg.run_name or os.environ.get('RUN_NAME') or 'foundry-run')
    except (KeyError, IndexError, ValueError):
        return None
