"""The built-in planner presets of ``autoseg plan``: one small module per preset, registered by name.

A preset turns a fingerprint into plans: it picks a budget (GPU memory, or CPU time) and a block layout, and
lets :func:`autoseg.planning.make_plans` apply the rules. Everything a preset uses comes from one import,
:mod:`autoseg.planning` (``register``, ``make_plans``, ``Architecture``, ``MemoryBudget``, ...).
To make your own, copy ``planners/default.py`` into your package, change the name in ``@register(...)`` and
what you need, and expose the class through the ``autoseg.planners`` entry-point group of your package
(``[project.entry-points."autoseg.planners"] my-planner = "my_package.my_planner:MyPlanner"``).
The registry (:mod:`autoseg.planning.registry`) imports these modules on its first lookup.
"""
