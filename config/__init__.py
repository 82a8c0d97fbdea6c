"""Conveyor's settings: one typed object, read when asked for, never at import."""

from config.settings import Settings, get_settings, mask_url

__all__ = ["Settings", "get_settings", "mask_url"]
