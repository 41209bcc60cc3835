"""Remediation: health alerts and what RemediationPolicies do about them. Pure: no I/O.

Alerts come from Alertmanager's webhook and from agents' sensors. ``alerts.py`` parses and builds
alerts; ``decide.py`` is the policies' state machine.
"""
