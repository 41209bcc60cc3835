"""vmshift.remediation"""
