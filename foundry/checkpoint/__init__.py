"""Checkpoints: where a run starts (autoresume, load_path, HF weights), crash safety, HF folders while training.

This package owns reading and writing checkpoint files; foundry.export reads through it, never the
reverse. See `resume.py` for the start decision, `layout.py` for what makes a checkpoint whole,
`reader.py` for reading model tensors without a process group, `remote.py` for fetching one from an
object store, `store.py` for retried transfers, `meta.py` for the run's `hf_meta/`, `weights.py`
for loading Hugging Face MPT weights, `hf_checkpointer.py` for the callback.
"""
