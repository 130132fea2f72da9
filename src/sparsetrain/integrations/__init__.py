"""Callbacks for the trainers people already use; each module imports its trainer lazily.

- :mod:`sparsetrain.integrations.lightning`: ``SparsityCallback`` for PyTorch Lightning
  (``pip install sparsetrain[lightning]``).
- :mod:`sparsetrain.integrations.transformers`: ``SparsityCallback`` for the Hugging Face
  ``Trainer`` (``pip install sparsetrain[transformers]``).

Both build the method when training starts (the trainer knows the number of optimizer steps
then), attach it to the trainer's optimizer, keep its state inside the trainer's checkpoints,
log sparsity and churn with the trainer's logs, and report at the end.
"""
