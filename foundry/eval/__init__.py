"""In-context-learning evaluation in llm-foundry's local JSONL task formats.

    tasks.py     `icl_tasks:` entries (llm-foundry's keys) and their JSONL examples, checked
    prompts.py   few-shot prompts and token requests (deterministic, never the example itself)
    scoring.py   the model passes: log-likelihoods (choices share their context's pass), greedy generation
    metrics.py   per-task-type accuracy from those passes
    runner.py    examples split across ranks, equal forward counts under FSDP, results gathered
    gauntlet.py  llm-foundry's Eval Gauntlet (v0.3): categories, baselines, weights, averages
    callback.py  the Composer callback that evaluates at `eval_interval` during training
    cli.py       `foundry eval SRC TASKS.yaml` on a Composer checkpoint or a Hugging Face folder
    report.py    results as JSON and Markdown
    smoke_tasks.py  small tasks of every type built from the demo corpus (smoke tests, not benchmarks)
"""
