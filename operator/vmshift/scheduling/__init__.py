"""Scheduling: where VMs run and how they move. Pure: no I/O, no Kubernetes, no Kopf.

Placement, compatibility, policies, admission and drains. The operator's handlers fill the plain
views of ``fleet.py`` from their indexes and call ``compatibility.check_target``,
``placement.plan_placement`` / ``pick_target`` / ``migratable``, ``policy.select_policy`` /
``choose_mode``, ``queue.admit`` and ``drain.plan_drain`` / ``next_attempt``;
``simulate.simulate_drain`` predicts how a drain will go.
"""
