"""vmshift.controllers"""
