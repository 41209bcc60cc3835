"""vmshift.api"""
