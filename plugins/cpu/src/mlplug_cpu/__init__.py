"""mlplug's CPU device plugin (numpy).

Importing this package is light: the entry point is :mod:`mlplug_cpu.plugin`, and numpy is
imported only when the plugin's ``load()`` imports :mod:`mlplug_cpu.device`.
"""
