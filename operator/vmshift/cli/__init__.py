"""vmshift.cli"""
