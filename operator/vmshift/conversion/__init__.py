"""vmshift.conversion"""
