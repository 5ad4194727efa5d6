"""Moved to helpers.lessons.l05_distributed_demo; this old path keeps working, with a DeprecationWarning, for one release."""
from helpers._moved import forwarder

__getattr__ = forwarder(__name__)
