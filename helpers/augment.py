"""Moved to helpers.data.augment (presets, MixUp/CutMix) and helpers.lessons.l04_augmentation (the lesson's tools); this old path keeps working, with a DeprecationWarning, for one release."""
from helpers._moved import forwarder

__getattr__ = forwarder(__name__)
