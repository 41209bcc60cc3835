"""vmshift.hypervisor"""
