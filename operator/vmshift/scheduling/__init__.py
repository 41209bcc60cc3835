"""vmshift.scheduling"""
