"""``kubectl vmshift``: the day-2 commands (migrate, cancel, drain, why, top, import) as a kubectl plugin.

Installed as the console script ``kubectl-vmshift``, so kubectl finds it on PATH. The commands are
thin (``commands``): they read objects through ``client``, hand them to pure functions that decide
(``decide``, ``fleetview``) and format (``render``), and print through ``output``.
"""
