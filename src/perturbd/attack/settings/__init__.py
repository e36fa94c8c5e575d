"""The paper's attack settings, one file each, registered by name (``attack.setting``):
``before_training`` (:mod:`.before_training`) and ``update`` (:mod:`.update`)."""

from perturbd.attack.settings.base import SETTINGS, Context, Setting, Trained, get_setting, list_settings, register_setting

from perturbd.attack.settings import before_training, update  # noqa: F401  (each registers its setting)  isort: skip

__all__ = ["SETTINGS", "Context", "Setting", "Trained", "get_setting", "list_settings", "register_setting"]
