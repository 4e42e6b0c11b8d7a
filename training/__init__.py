"""The Mask2Former trainer: ``python -m training.train`` (see ``training/train.py``)."""
