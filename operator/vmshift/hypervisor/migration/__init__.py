"""Live and quick migration between agents: the TCP stream protocol and both of its sides.

Rooms: ``wire`` (the wire format: frames, typed and versioned control messages, page runs; pure),
``stream`` (framed socket I/O), ``tickets`` (the one-time HMAC tickets), ``record`` (a migration's
progress and outcome, and its failure), ``host`` (what a migration needs from its agent),
``hold`` (a converged switchover held for the caller's go), ``priority`` (a switchover goes first on
its agent: other migrations' bulk work waits, and its answer is read without a sleep), ``source``
(sends a VM) and ``target`` (receives one, and the migration port's listener). The
package imports nothing from the rest of the agent but the guest model and the API's models.

    source                                   target
    HELLO {version, ticket, ...}      ──▶    checks the version, then the one-time HMAC ticket
                                      ◀──    WELCOME {resolvePort, prepare}
    PAGES … ROUND_END (round 0: all pages; round i: pages dirtied during round i-1)
    [converged: rounds go on, the guest running, until the caller's go or the end of the wait]
    PREPARE                           ──▶    (only if WELCOME offered it) holds its other bulk work
                                      ◀──    READY
    -- pause the guest --
    PAGES (flag FINAL) … SWITCHOVER {digest, heartbeat, drivers}     (one write)
                                             verifies the digest, resumes the guest: the commit point
                                      ◀──    RESUMED
    -- the source releases its paused copy --
    FINISHED {downtimeMs, durationMs} ──▶

From PREPARE to RESUMED both agents hold their other migrations' page frames (``priority``), so the
paused guest's final write and its answer do not queue behind other copies on either event loop; the
guest still runs while PREPARE and READY cross.

Two-phase, so that the VM never runs on two hosts and is never lost: the target resumes only
after it holds verified memory, and the source releases its (paused) copy only after it knows the
target resumed. Any failure before SWITCHOVER resumes the guest on the source and makes the target
discard its partial copy. If the stream breaks after SWITCHOVER, the source keeps its guest paused
and re-dials the target's migration port with RESOLVE: the target answers whether it resumed (and,
if it had not, never will). Until the target answers (refused connections and silence prove
nothing: a partition looks like a dead host) the source keeps its copy paused and reports the
migration in doubt; the operator may pass on the target's answer when it can reach the target.
"""
