"""Moved to helpers.lessons.l01_vit_theory (the ViT from scratch) and helpers.models (ViT arithmetic); this old path keeps working, with a DeprecationWarning, for one release."""
from helpers._moved import forwarder

__getattr__ = forwarder(__name__)
