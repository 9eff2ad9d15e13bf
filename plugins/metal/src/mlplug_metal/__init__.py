"""mlplug's Metal device plugin (MLX).

Importing this package is light: the entry point is :mod:`mlplug_metal.plugin`, and MLX is
imported only when the plugin's ``load()`` imports :mod:`mlplug_metal.device`.
"""
