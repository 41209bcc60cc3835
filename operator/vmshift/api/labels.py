"""Every label and annotation name vmshift reads or writes, in one place. Pure constants.

They are part of the API as much as the fields are: people select with them (``kubectl get vsmig
-l vmshift.io/evacuation=h1``), GitOps tools diff them, and a rename breaks both. Names under the
API group derive from ``GROUP`` (``vmshift.api.common``); the Kubernetes recommended labels are
spelt out.
"""

from __future__ import annotations

from vmshift.api.common import GROUP

# --- on objects the operator creates -----------------------------------------------------------------

#: The Kubernetes recommended label that marks what the operator made; garbage collection deletes only
#: finished migrations that carry it, never one a person or a GitOps tool applied.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vmshift-operator"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "vmshift"
#: On a VirtualMachineMigration the operator creates: the VirtualMachine it moves.
VM_LABEL = f"{GROUP}/vm"
#: On a drain's (or an evacuation's) migrations: the drained Host, and the drain's id.
EVACUATION_LABEL = f"{GROUP}/evacuation"
EPISODE_LABEL = f"{GROUP}/evacuation-id"
#: On a drain's migrations: which attempt of the VM's move this is, and the VM's place in the plan.
ATTEMPT_ANNOTATION = f"{GROUP}/evacuation-attempt"
ORDER_ANNOTATION = f"{GROUP}/evacuation-order"
#: On a VirtualMachine an import created: the import's uid (also what the index filters on), and the
#: import as namespace/name, for people.
IMPORT_UID_LABEL = f"{GROUP}/import-uid"
IMPORT_ANNOTATION = f"{GROUP}/import"

# --- set by people (or by an import) -----------------------------------------------------------------

#: On a VirtualMachine: the drivers its guest starts with (comma-separated), within vmshift.limits.
DRIVERS_ANNOTATION = f"{GROUP}/initial-drivers"
#: On an agent token Secret: the Hosts that may use it (comma-separated names, or *).
AGENT_HOSTS_ANNOTATION = f"{GROUP}/agent-hosts"
#: On a Host: releases a remediation that needs a person (a RemediationPolicy may name another).
RELEASE_ANNOTATION = f"{GROUP}/release-remediation"
#: On a Host the development stack creates: its CPU model, for selectors.
CPU_LABEL = f"{GROUP}/cpu"

# --- Kopf's own bookkeeping ----------------------------------------------------------------------------

#: The prefix of the annotations and the finalizer Kopf keeps on the objects it handles.
KOPF_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"
