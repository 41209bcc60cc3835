"""Remediation: health alerts and what RemediationPolicies do about them. Pure, except the HTTP receiver.

Alerts come from Alertmanager's webhook and from agents' sensors. ``alerts.py`` parses and builds
alerts; ``decide.py`` is the policies' state machine; ``signals.py`` keeps every alert with when it
began and resolved (the alert book) and converts specs and status for ``decide``; ``webhook.py`` is
the Alertmanager receiver (HTTP only: authentication, size limit, parsing). The remediation
controller (``vmshift.controllers.remediation``) wires them to the API server.
"""
