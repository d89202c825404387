"""Checkpoints: where a run starts (autoresume, load_path, HF weights), crash safety, HF folders while training.

See `resume.py` for the start decision, `layout.py` for what makes a checkpoint whole,
`weights.py` for loading Hugging Face MPT weights, `hf_checkpointer.py` for the callback.
"""
