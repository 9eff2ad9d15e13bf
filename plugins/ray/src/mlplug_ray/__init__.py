"""mlplug's Ray backend: every Ray node actor is a device of kind ``"gpu"``.

Importing this package is light: the entry point is :mod:`mlplug_ray.plugin`, and Ray is
imported only when the plugin's ``load()`` imports :mod:`mlplug_ray.device`.
"""
