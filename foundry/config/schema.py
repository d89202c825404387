"""The typed shape of a training YAML.

Key names and meanings follow llm-foundry's pretrain YAMLs so that those files run
unchanged. Sections whose keys depend on a registered name (`model`, `optimizer`,
`scheduler`, `train_loader`, `callbacks`, `loggers`) stay mappings here and are checked
against their registry in `foundry.config.sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from foundry.config.errors import ConfigError
from foundry.config.long_runs import LossGuardConfig, PreemptionConfig, WatchdogConfig, check_long_run_config

TimeString = Union[str, int]  # '100ba', '1ep', '10000tok', '0.1dur', or a number of batches


@dataclass
class TokenizerConfig:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FSDPConfig:
    """llm-foundry's `fsdp_config` keys. Applied through Composer's FSDP2 path (fully_shard)."""

    sharding_strategy: Literal['FULL_SHARD', 'SHARD_GRAD_OP', 'HYBRID_SHARD', '_HYBRID_SHARD_ZERO2', 'NO_SHARD'] = 'FULL_SHARD'
    mixed_precision: Literal['DEFAULT', 'PURE', 'FULL'] = 'DEFAULT'
    activation_checkpointing: bool = False
    activation_checkpointing_reentrant: bool = False
    activation_cpu_offload: bool = False
    limit_all_gathers: bool = True
    forward_prefetch: bool = False
    backward_prefetch: str = 'BACKWARD_PRE'
    use_orig_params: bool = True
    sync_module_states: bool = False
    state_dict_type: Literal['full', 'sharded'] = 'sharded'
    load_monolith_rank0_only: bool = False
    reshard_after_forward: bool = True
    # HSDP: shard within groups of `data_parallel_shard_degree` ranks, replicate across groups.
    data_parallel_shard_degree: int = -1
    data_parallel_replicate_degree: int = 1
    verbose: bool = False

    UNSUPPORTED_KEYS = {
        'cpu_offload': 'parameter CPU offload is not wired to the FSDP2 path; remove the key',
    }


@dataclass
class GradientClippingConfig:
    clipping_type: Literal['norm', 'value', 'adaptive'] = 'norm'
    clipping_threshold: float = 1.0


@dataclass
class AlgorithmsConfig:
    gradient_clipping: Optional[GradientClippingConfig] = None


@dataclass
class FP8Config:
    """`precision: amp_fp8` settings: torchao float8 training (foundry/fp8.py)."""

    # rowwise: a scale per row (closest to bf16); tensorwise: one per tensor (fastest);
    # rowwise_with_gw_hp: rowwise with the weight gradient in bf16.
    recipe: Literal['rowwise', 'tensorwise', 'rowwise_with_gw_hp'] = 'rowwise'

    # llm-foundry's fp8_config configures TransformerEngine, which foundry does not use.
    UNSUPPORTED_KEYS = {k: 'a TransformerEngine setting; foundry runs amp_fp8 with torchao: set fp8_config.recipe '
                           '(rowwise | tensorwise | rowwise_with_gw_hp)'
                        for k in ('fp8_format', 'amax_history_len', 'amax_compute_algo', 'margin', 'interval',
                                  'override_linear_precision')}


@dataclass
class TrainConfig:
    """Everything a run needs, decided and validated before any process group exists."""

    model: dict[str, Any]
    tokenizer: TokenizerConfig
    train_loader: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    max_duration: TimeString
    global_train_batch_size: int

    variables: dict[str, Any] = field(default_factory=dict)
    max_seq_len: Optional[int] = None
    run_name: Optional[str] = None
    # foundry: where metrics.jsonl and local artifacts of this run go ({run_name} is filled in).
    run_folder: str = 'runs/{run_name}'
    eval_loader: Optional[dict[str, Any]] = None
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)
    eval_interval: TimeString = 1
    eval_first: bool = False
    eval_subset_num_batches: int = -1
    seed: int = 17
    device_eval_batch_size: Optional[int] = None
    device_train_microbatch_size: Union[int, Literal['auto']] = 'auto'
    precision: Literal['fp32', 'amp_bf16', 'amp_fp16', 'amp_fp8'] = 'amp_bf16'
    fp8_config: Optional[FP8Config] = None  # amp_fp8 only
    fsdp_config: Optional[FSDPConfig] = None
    progress_bar: bool = False
    log_to_console: bool = True
    console_log_interval: TimeString = '1ba'
    callbacks: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    loggers: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    save_folder: Optional[str] = None
    save_interval: TimeString = '1000ba'
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    save_weights_only: bool = False
    # Sharded checkpoints written by a background thread while training goes on (foundry/checkpoint/async_save.py).
    save_async: bool = False
    load_path: Optional[str] = None
    load_weights_only: bool = False
    # None means: on whenever run_name and save_folder are both set (llm-foundry leaves it off).
    autoresume: Optional[bool] = None
    dist_timeout: float = 600.0
    python_log_level: Optional[str] = 'info'
    compile_config: Optional[dict[str, Any]] = None
    # In-context-learning evaluation at eval_interval (foundry/eval/): a list of llm-foundry task entries or a
    # YAML path listing them under icl_tasks:; checked by foundry.eval.tasks / gauntlet in sections.py.
    icl_tasks: Optional[Union[str, list[dict[str, Any]]]] = None
    eval_gauntlet: Optional[Union[str, dict[str, Any]]] = None
    icl_subset_num_batches: int = -1
    icl_seq_len: Optional[int] = None
    # Long runs (foundry/config/long_runs.py): signals, loss spikes and non-finite values, hangs.
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    loss_guard: LossGuardConfig = field(default_factory=LossGuardConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)

    UNSUPPORTED_KEYS = {
        'icl_tasks_str': 'give icl_tasks a list, or a path to a YAML that lists them under icl_tasks:',
        'eval_gauntlet_str': 'give eval_gauntlet a mapping, or a path to a YAML holding eval_gauntlet:',
        'tp_config': 'tensor parallelism is not implemented yet; use fsdp_config',
        'profiler': 'the Composer profiler is not wired yet',
        'load_ignore_keys': 'partial checkpoint loading is not implemented yet',
        'save_ignore_keys': 'partial checkpoint saving is not implemented yet',
        'device_train_grad_accum': 'removed in llm-foundry too; set device_train_microbatch_size instead',
        'model_gauntlet': 'renamed eval_gauntlet (as in llm-foundry)',
    }

    def check(self, path: str) -> None:
        if self.global_train_batch_size <= 0:
            raise ConfigError(f'`global_train_batch_size` must be positive, got {self.global_train_batch_size}')
        if isinstance(self.device_train_microbatch_size, int) and self.device_train_microbatch_size <= 0:
            raise ConfigError('`device_train_microbatch_size` must be positive or "auto"')
        if self.fp8_config is not None and self.precision != 'amp_fp8':
            raise ConfigError(f'`fp8_config` applies to `precision: amp_fp8` only; this config has precision '
                              f'{self.precision!r}: remove fp8_config or set precision: amp_fp8')
        if self.compile_config is not None:
            from foundry.distributed.compile import check_compile_config

            try:
                check_compile_config(self.compile_config)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        check_long_run_config(self)
        if self.save_async:
            if self.fsdp_config is None or self.fsdp_config.state_dict_type != 'sharded':
                raise ConfigError('`save_async: true` writes sharded checkpoints in the background: set '
                                  '`fsdp_config.state_dict_type: sharded`, or `save_async: false`')
            if self.save_folder and '://' in self.save_folder:
                raise ConfigError(f'`save_async: true` needs a local `save_folder` for now; {self.save_folder!r} is an '
                                  f'object store: set `save_async: false` there')
