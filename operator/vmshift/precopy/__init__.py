"""Pre-copy live migration as pure decisions: the convergence rule and the model built on it.

Pure: no I/O, no clocks, nothing from the agent (``vmshift.hypervisor``) or the controllers.
``convergence.next_action`` decides after each round (the agents, the model and the drain
simulator all call it); ``model.predict_precopy`` predicts rounds, time, bytes and downtime.
"""
